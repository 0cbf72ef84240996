//! The live map in a real browser (issue 17): headless Chromium, driven
//! over WebDriver by chromedriver (Debian's `chromium` and
//! `chromium-driver`; `scripts/test` installs them and sets
//! `EDGEFLOW_REQUIRE_BROWSER`, without which a machine lacking them skips
//! these tests and says so).
//!
//! The page's own data model (`window.edgeflow`) is read back and checked
//! against the files sink; a screenshot is checked for the level colours.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::ingest::{send_recording, Node};
use crate::subscribe::{assert_json_rows, csv_rows, node, sink_file, CITY, CPO};
use crate::support::{free_port, Proc};

/// A headless Chromium session over WebDriver.
pub(crate) struct Browser {
    _driver: Proc,
    base: String,
    session: String,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; `None` (the
    /// test skipped, said so) when they are not installed.
    pub(crate) fn start(test: &str) -> Option<Browser> {
        let (Some(chromium), Some(driver)) = (tool("chromium"), tool("chromedriver")) else {
            assert!(
                std::env::var_os("EDGEFLOW_REQUIRE_BROWSER").is_none(),
                "EDGEFLOW_REQUIRE_BROWSER is set but chromium or chromedriver is not installed"
            );
            crate::support::skip(
                test,
                "no chromium/chromedriver (apt install chromium chromium-driver; scripts/test does)",
            );
            return None;
        };
        let port = free_port();
        let mut cmd = Command::new(driver);
        cmd.arg(format!("--port={port}"));
        let mut proc = Proc::spawn("chromedriver", cmd);
        proc.wait_until(Duration::from_secs(30), "chromedriver ready", |out, err| {
            out.contains("started successfully") || err.contains("started successfully")
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            _driver: proc,
            base,
            session: String::new(),
            client,
            rt,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800",
                         "--force-device-scale-factor=1"]
            }
        }}});
        let v = browser.call("POST", "/session", Some(caps));
        browser.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a WebDriver session: {v}"))
            .to_owned();
        Some(browser)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "POST" => self
                .client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.unwrap_or(json!({})).to_string()),
            "DELETE" => self.client.delete(&url),
            _ => self.client.get(&url),
        };
        let text = self.rt.block_on(async {
            let r = req
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .expect("chromedriver answers");
            r.text().await.expect("body")
        });
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON: {text}"));
        let v = v["value"].clone();
        assert!(v.get("error").is_none(), "WebDriver {method} {path}: {v}");
        v
    }

    /// Opens `url`.
    pub(crate) fn goto(&self, url: &str) {
        self.call(
            "POST",
            &format!("/session/{}/url", self.session),
            Some(json!({ "url": url })),
        );
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub(crate) fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            &format!("/session/{}/execute/sync", self.session),
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Waits until `script` returns true.
    pub(crate) fn wait_for(&self, what: &str, script: &str, limit: Duration) {
        let start = Instant::now();
        while self.eval(script) != json!(true) {
            assert!(start.elapsed() < limit, "the page: {what} within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the window.
    pub(crate) fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = self.call(
            "GET",
            &format!("/session/{}/screenshot", self.session),
            None,
        );
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64"))
            .expect("PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let client = self.client.clone();
            let _ = self.rt.block_on(async move {
                client
                    .delete(url)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
            });
        }
    }
}

fn web(node: &Node) -> SocketAddr {
    (node.handle.as_ref().expect("running").web_addr).expect("[web] serves")
}

/// The page's rows of `kind` by (key, window start) → value.
fn page_rows(b: &Browser, kind: &str) -> std::collections::BTreeMap<(String, u64), Value> {
    let v = b.eval(&format!("return window.edgeflow.rowsOf('{kind}');"));
    (v.as_array().expect("rows").iter())
        .map(|r| {
            (
                (
                    r["key"].as_str().expect("key").to_owned(),
                    r["window_start_ms"].as_u64().expect("window"),
                ),
                r["value"].clone(),
            )
        })
        .collect()
}

/// RGB pixels of a PNG with their (x, y).
fn pixels(png_bytes: &[u8]) -> Vec<(u32, u32, [u8; 3])> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    let step = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(step)
        .enumerate()
        .map(|(i, p)| {
            let i = i as u32;
            (i % info.width, i / info.width, [p[0], p[1], p[2]])
        })
        .collect()
}

/// An element's rectangle on the page: (left, top, right, bottom).
fn rect(b: &Browser, id: &str) -> [f64; 4] {
    let v = b.eval(&format!(
        "const r = document.getElementById('{id}').getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom];"
    ));
    serde_json::from_value(v).expect("a rectangle")
}

#[test]
fn the_page_shows_every_row_its_token_may_see_and_none_it_may_not() {
    let Some(city) = Browser::start("browser::the_page_shows_every_row") else {
        return;
    };
    let Some(cpo) = Browser::start("browser::the_page_shows_every_row") else {
        return;
    };
    let mut node = node("[privacy]\nmin_vehicles = 1\n[web]\nlisten = \"127.0.0.1:0\"\n");
    let addr = web(&node);
    city.goto(&format!("http://{addr}/#token={CITY}"));
    cpo.goto(&format!("http://{addr}/#token={CPO}"));
    for b in [&city, &cpo] {
        b.wait_for(
            "signed in and following the feed",
            "return document.getElementById('status').textContent === 'live';",
            Duration::from_secs(30),
        );
    }
    send_recording(&node);
    // The live path: rows reach the page while the node runs.
    city.wait_for(
        "congestion rows on the page",
        "return window.edgeflow.rowsOf('congestion').length > 100;",
        Duration::from_secs(30),
    );
    node.stop();
    for b in [&city, &cpo] {
        b.wait_for(
            "the feed's end",
            "return window.edgeflow.ended !== null;",
            Duration::from_secs(30),
        );
    }
    // The city's page holds every row of the sink still in retention at
    // the last watermark.
    let progress = city.eval("return window.edgeflow.progress.congestion;");
    let watermark = progress["watermark_ms"].as_u64().expect("watermark");
    let keep = |w: u64| {
        w + progress["window_ms"].as_u64().expect("window")
            + progress["retention_ms"].as_u64().expect("retention")
            > watermark
    };
    for kind in ["congestion", "charging", "zone"] {
        let want: std::collections::BTreeMap<_, _> = csv_rows(&node.sink(sink_file(kind)))
            .into_iter()
            .filter(|((_, w), _)| keep(*w))
            .collect();
        assert!(want.len() > 3, "{kind}");
        assert_json_rows(
            &page_rows(&city, kind),
            &want,
            &format!("the city's page, {kind}"),
        );
    }
    // Live changes reached the page within a second of leaving the
    // dataflow.
    let latencies: Vec<f64> =
        serde_json::from_value(city.eval("return window.edgeflow.latencies;")).expect("latencies");
    assert!(!latencies.is_empty(), "live updates measured");
    let worst = latencies.iter().cloned().fold(0.0, f64::max);
    assert!(
        worst <= 1000.0,
        "a change took {worst} ms to reach the page"
    );
    // The charge point operator's page: no segment values, no zones.
    assert!(page_rows(&cpo, "congestion").is_empty());
    assert!(page_rows(&cpo, "zone").is_empty());
    assert!(!page_rows(&cpo, "charging").is_empty());
    let segments = cpo.eval("return window.edgeflow.geometry.segments.length;");
    assert_eq!(
        segments,
        json!(0),
        "no segment geometry without the congestion scope"
    );

    // The screenshot shows the level colours of the newest window.
    // Only the map counts: the legend's swatches (and the "live" button)
    // carry the same colours.
    let shot = city.screenshot();
    let (map, legend) = (rect(&city, "map"), rect(&city, "legend"));
    let within = |r: [f64; 4], x: u32, y: u32| {
        let (x, y) = (f64::from(x), f64::from(y));
        x >= r[0] && x < r[2] && y >= r[1] && y < r[3]
    };
    let px: Vec<[u8; 3]> = pixels(&shot)
        .into_iter()
        .filter(|(x, y, _)| within(map, *x, *y) && !within(legend, *x, *y))
        .map(|(_, _, rgb)| rgb)
        .collect();
    let count = |rgb: [u8; 3]| px.iter().filter(|p| **p == rgb).count();
    let free = count([0x2e, 0x7d, 0x32]);
    let other: usize = [[0xf9, 0xa8, 0x25], [0xef, 0x6c, 0x00], [0xc6, 0x28, 0x28]]
        .into_iter()
        .map(count)
        .sum();
    assert!(free > 200, "free-flow green on the map: {free} pixels");
    assert!(other > 20, "slower levels on the map: {other} pixels");
    let out = std::env::var_os("EDGEFLOW_SCREENSHOT").map(PathBuf::from);
    if let Some(path) = out {
        std::fs::write(path, &shot).expect("screenshot");
    }
}
