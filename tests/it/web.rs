//! The live map's HTTP listener (issue 17): it serves its page and assets
//! and nothing else, refuses bad tokens, oversized requests and path
//! traversal; a signed-in page's feed ends holding exactly the files
//! sink's rows its operator may see, and its geometry is the operator's
//! scope.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use crate::ingest::{send_recording, Node};
use crate::subscribe::{assert_json_rows, csv_rows, node, sink_file, CITY, CPO, CPO_CHARGER};

const WEB: &str = "[web]\nlisten = \"127.0.0.1:0\"\n";

fn web(node: &Node) -> SocketAddr {
    node.handle
        .as_ref()
        .expect("running")
        .web_addr
        .expect("[web] serves")
}

/// One raw HTTP/1.1 request (no client-side normalisation of the path):
/// the status and the whole answer.
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The server may answer before it has read everything (a refused
    // body): a failed write is fine, the answer is what counts.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = (text.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

pub(crate) fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub(crate) fn post(
    addr: SocketAddr,
    path: &str,
    body: &str,
    cookie: Option<&str>,
) -> (u16, String) {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    raw(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n{cookie}\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// Signs in: the session cookie (`name=value`).
pub(crate) fn login(addr: SocketAddr, token: &str) -> String {
    let (status, answer) = post(addr, "/api/login", token, None);
    assert_eq!(status, 200, "{answer}");
    let set = (answer.lines())
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("a cookie: {answer}"));
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    set.split_once(':')
        .expect("header")
        .1
        .split(';')
        .next()
        .expect("cookie")
        .trim()
        .to_owned()
}

pub(crate) fn get_signed(addr: SocketAddr, path: &str, cookie: &str) -> (u16, String) {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n")
            .as_bytes(),
    )
}

pub(crate) fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |b| b.1)
}

#[test]
fn the_map_serves_its_page_and_assets_and_refuses_everything_else() {
    let mut node = node(WEB);
    let addr = web(&node);

    let (status, page) = get(addr, "/");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("/assets/map.js") && page.contains("text/html"));
    let csp = (page.lines())
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("content-security-policy:")
        })
        .expect("a CSP");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    for (asset, kind) in [("map.js", "text/javascript"), ("map.css", "text/css")] {
        let (status, answer) = get(addr, &format!("/assets/{asset}"));
        assert_eq!(status, 200, "{asset}");
        assert!(answer.contains(kind), "{asset}: {answer:.200}");
    }

    // Path traversal finds nothing: there is no file system behind the
    // paths.
    for path in [
        "/assets/../Cargo.toml",
        "/assets/..%2f..%2fCargo.toml",
        "/assets/%2e%2e/%2e%2e/Cargo.toml",
        "/../../../../etc/passwd",
        "/assets/",
        "/assets/map.js/..",
        "/src/web/page/map.js",
        "/assets//etc/passwd",
        "/index.html/../Cargo.toml",
    ] {
        let (status, answer) = get(addr, path);
        assert_eq!(status, 404, "{path}: {answer}");
        assert!(
            !answer.contains("[package]") && !answer.contains("root:"),
            "{path}"
        );
    }
    // Methods.
    assert_eq!(post(addr, "/", "x", None).0, 405);
    assert_eq!(get(addr, "/api/login").0, 405);
    // Bad tokens, no session, a forged session.
    let (status, answer) = post(addr, "/api/login", "not-a-token", None);
    assert_eq!(status, 401, "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("set-cookie"));
    assert_eq!(post(addr, "/api/login", "", None).0, 401);
    for path in ["/api/config", "/api/geometry", "/api/feed"] {
        assert_eq!(get(addr, path).0, 401, "{path}");
        let forged = format!("edgeflow_session={}", "ab".repeat(32));
        assert_eq!(get_signed(addr, path, &forged).0, 401, "{path}");
    }
    // Oversized: a body past max_request_bytes (16 KiB), a head past it.
    let big = "x".repeat(64 * 1024);
    let (status, answer) = post(addr, "/api/login", &big, None);
    assert_eq!(status, 413, "{answer:.300}");
    let (status, answer) = raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 431, "{answer:.300}");
    // A signed-out session is gone.
    let cookie = login(addr, CITY);
    assert_eq!(get_signed(addr, "/api/config", &cookie).0, 200);
    assert_eq!(post(addr, "/api/logout", "", Some(&cookie)).0, 200);
    assert_eq!(get_signed(addr, "/api/config", &cookie).0, 401);
    // The node still serves ingest after all that.
    send_recording(&node);
    node.stop();
}

/// What a page's feed delivered, applied as the page applies it.
#[derive(Default)]
struct Page {
    rows: BTreeMap<String, BTreeMap<(String, u64), serde_json::Value>>,
    ended: Vec<String>,
    kinds: Vec<String>,
    /// The zones' generations the feed told.
    geometry: Vec<u64>,
}

impl Page {
    fn apply(&mut self, event: &str, data: &str) {
        let v: serde_json::Value = serde_json::from_str(data).expect("event JSON");
        match event {
            "kinds" => {
                self.kinds = serde_json::from_value(v).expect("kinds");
            }
            "update" => {
                let kind = v["kind"].as_str().expect("kind").to_owned();
                let rows = self.rows.entry(kind).or_default();
                for r in v["rows"].as_array().expect("rows") {
                    let key = (
                        r["key"].as_str().expect("key").to_owned(),
                        r["window_start_ms"].as_u64().expect("window"),
                    );
                    if r["op"] == "retract" {
                        rows.remove(&key);
                    } else {
                        rows.insert(key, r["value"].clone());
                    }
                }
            }
            "geometry" => self
                .geometry
                .push(v["zones_generation"].as_u64().expect("generation")),
            "end" => self
                .ended
                .push(v["kind"].as_str().expect("kind").to_owned()),
            other => panic!("event {other:?}"),
        }
    }
}

/// Reads a feed to its end (the node stopping ends it).
fn read_feed(addr: SocketAddr, cookie: &str) -> std::thread::JoinHandle<Page> {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(
        format!("GET /api/feed HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n").as_bytes(),
    )
    .expect("request");
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut reader, &mut line).expect("head");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/event-stream"), "{head}");
        // Chunked: the events are the body's text once the chunk sizes
        // are taken out.
        let mut body = Vec::new();
        let _ = reader.read_to_end(&mut body);
        let text = dechunk(&body);
        let mut page = Page::default();
        for block in text.split("\n\n") {
            let mut event = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e);
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(d);
                }
            }
            if let (Some(e), Some(d)) = (event, data) {
                page.apply(e, d);
            }
        }
        page
    })
}

fn dechunk(body: &[u8]) -> String {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&rest[..at]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = at + 2;
        out.extend_from_slice(&rest[start..(start + size).min(rest.len())]);
        rest = &rest[(start + size + 2).min(rest.len())..];
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_signed_in_page_sees_exactly_what_its_operator_may_see() {
    let mut node = node(&format!("[privacy]\nmin_vehicles = 1\n{WEB}"));
    let addr = web(&node);
    let city = login(addr, CITY);
    let cpo = login(addr, CPO);

    // Geometry: the city sees every segment, charger and named zone; the
    // charge point operator its charger and nothing else.
    let (status, answer) = get_signed(addr, "/api/geometry", &city);
    assert_eq!(status, 200);
    let g: serde_json::Value = serde_json::from_str(body(&answer)).expect("geometry");
    assert_eq!(g["segments"].as_array().expect("segments").len(), 517);
    assert_eq!(g["chargers"].as_array().expect("chargers").len(), 4);
    assert!(!g["zones"].as_array().expect("zones").is_empty());
    assert_eq!(g["zones_generation"], 0);
    let (_, answer) = get_signed(addr, "/api/geometry", &cpo);
    let g: serde_json::Value = serde_json::from_str(body(&answer)).expect("geometry");
    assert_eq!(g["segments"].as_array().expect("segments").len(), 0);
    assert_eq!(g["zones"].as_array().expect("zones").len(), 0);
    let chargers = g["chargers"].as_array().expect("chargers");
    assert_eq!(chargers.len(), 1);
    assert_eq!(chargers[0]["id"], CPO_CHARGER);
    let (_, answer) = get_signed(addr, "/api/config", &cpo);
    let config: serde_json::Value = serde_json::from_str(body(&answer)).expect("config");
    assert_eq!(config["kinds"], serde_json::json!(["charging"]));
    assert_eq!(config["window_ms"], 60_000);

    let city_feed = read_feed(addr, &city);
    let cpo_feed = read_feed(addr, &cpo);
    // Both feeds hold their snapshots before anything is sent.
    std::thread::sleep(Duration::from_millis(300));
    send_recording(&node);
    node.stop();

    let page = city_feed.join().expect("city feed");
    assert_eq!(page.kinds, ["congestion", "charging", "zone"]);
    assert_eq!(page.geometry, [0], "the zones' generation, once");
    assert_eq!(page.ended.len(), 3, "every kind's feed ended");
    for kind in ["congestion", "charging", "zone"] {
        let want = csv_rows(&node.sink(sink_file(kind)));
        assert!(want.len() > 3, "{kind}");
        let got = page.rows.get(kind).cloned().unwrap_or_default();
        assert_json_rows(&got, &want, &format!("the city's page, {kind}"));
    }
    let page = cpo_feed.join().expect("cpo feed");
    assert_eq!(page.kinds, ["charging"]);
    assert!(page.geometry.is_empty(), "no zones, no zone generation");
    let want: BTreeMap<_, _> = csv_rows(&node.sink("charging.csv"))
        .into_iter()
        .filter(|((id, _), _)| id == CPO_CHARGER)
        .collect();
    assert!(!want.is_empty());
    let got = page.rows.get("charging").cloned().unwrap_or_default();
    assert_json_rows(&got, &want, "the charge point operator's page");
    assert!(!page.rows.contains_key("congestion") && !page.rows.contains_key("zone"));
}

/// Under the default privacy threshold, a page's feed holds exactly what
/// a QUIC subscription of the same token holds (provisional mode): rows
/// over too few vehicles withheld alike.
#[test]
fn a_page_under_the_privacy_threshold_sees_what_a_subscription_sees() {
    use crate::subscribe::{await_snapshots, follow, options};
    use edgeflow::subscribe::client::SubscribeOptions;
    let mut node = node(WEB);
    let addr = web(&node);
    let cookie = login(addr, CITY);
    let page = read_feed(addr, &cookie);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let subs: Vec<_> = ["congestion", "zone"]
        .into_iter()
        .map(|kind| {
            let mut req = SubscribeOptions::request(CITY, kind);
            req.mode = "provisional".into();
            (kind, follow(options(&node, req), ready_tx.clone()))
        })
        .collect();
    await_snapshots(&ready, subs.len());
    send_recording(&node);
    node.stop();
    let page = page.join().expect("page");
    for (kind, sub) in subs {
        let (state, error) = sub.join().expect("subscriber");
        assert_eq!(error, None);
        let want: BTreeMap<(String, u64), serde_json::Value> = (state.rows.into_iter())
            .map(|(k, r)| (k, serde_json::Value::Object(r.value.expect("upsert"))))
            .collect();
        let all = csv_rows(&node.sink(sink_file(kind)));
        assert!(
            want.len() < all.len(),
            "{kind}: the threshold withholds some rows ({} of {})",
            want.len(),
            all.len()
        );
        let got = page.rows.get(kind).cloned().unwrap_or_default();
        assert_eq!(got, want, "{kind}: the page against the subscription");
    }
}

/// `[web] tls = true`: the page over HTTPS with the node's certificate;
/// plain HTTP on that port gets no page; the session cookie is `Secure`.
#[test]
fn the_map_serves_https_with_the_nodes_certificate() {
    let mut node = node("[web]\nlisten = \"127.0.0.1:0\"\ntls = true\n");
    let addr = web(&node);
    let ca = std::fs::read(&node.ca).expect("ca");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
        .resolve("localhost", addr)
        .build()
        .expect("client");
    let rt = crate::ingest::runtime();
    let url = format!("https://localhost:{}/", addr.port());
    let (status, page) = rt.block_on(async {
        let r = client.get(&url).send().await.expect("https");
        (r.status().as_u16(), r.text().await.expect("page"))
    });
    assert_eq!(status, 200);
    assert!(page.contains("/assets/map.js"));
    let cookie = rt.block_on(async {
        let r = client
            .post(format!("https://localhost:{}/api/login", addr.port()))
            .body(CITY)
            .send()
            .await
            .expect("login");
        assert_eq!(r.status().as_u16(), 200);
        r.headers()["set-cookie"]
            .to_str()
            .expect("cookie")
            .to_owned()
    });
    assert!(cookie.contains("; Secure"), "{cookie}");
    let (status, answer) = get(addr, "/");
    assert_ne!(status, 200, "plain HTTP gets no page: {answer:.200}");
    node.stop();
}
