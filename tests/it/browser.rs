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
use std::time::Duration;

use edgeflow::tools::browser::Browser;
use serde_json::{json, Value};

use crate::ingest::{send_recording, Node};
use crate::subscribe::{assert_json_rows, csv_rows, node, sink_file, CITY, CPO};

/// A headless Chromium session, or the test skipped (said so) when the
/// browser is not installed.
fn browser(test: &str) -> Option<Browser> {
    if edgeflow::tools::browser::tools().is_none() {
        assert!(
            std::env::var_os("EDGEFLOW_REQUIRE_BROWSER").is_none(),
            "EDGEFLOW_REQUIRE_BROWSER is set but chromium or chromedriver is not installed"
        );
        crate::support::skip(
            test,
            "no chromium/chromedriver (apt install chromium chromium-driver; scripts/test does)",
        );
        return None;
    }
    Some(Browser::start(1280, 800).expect("a headless Chromium session"))
}

fn web(node: &Node) -> SocketAddr {
    (node.handle.as_ref().expect("running").web_addr).expect("[web] serves")
}

/// The page's rows of `kind` by (key, window start) → value.
fn page_rows(b: &Browser, kind: &str) -> std::collections::BTreeMap<(String, u64), Value> {
    let v = b
        .eval(&format!("return window.edgeflow.rowsOf('{kind}');"))
        .expect("rows");
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
    ))
    .expect("the page answers");
    serde_json::from_value(v).expect("a rectangle")
}

#[test]
fn the_page_shows_every_row_its_token_may_see_and_none_it_may_not() {
    let Some(city) = browser("browser::the_page_shows_every_row") else {
        return;
    };
    let Some(cpo) = browser("browser::the_page_shows_every_row") else {
        return;
    };
    let mut node = node("[privacy]\nmin_vehicles = 1\n[web]\nlisten = \"127.0.0.1:0\"\n");
    let addr = web(&node);
    city.goto(&format!("http://{addr}/#token={CITY}"))
        .expect("the page opens");
    cpo.goto(&format!("http://{addr}/#token={CPO}"))
        .expect("the page opens");
    for b in [&city, &cpo] {
        b.wait_for(
            "signed in and following the feed",
            "return document.getElementById('status').textContent === 'live';",
            Duration::from_secs(30),
        )
        .expect("in time");
    }
    send_recording(&node);
    // The live path: rows reach the page while the node runs.
    city.wait_for(
        "congestion rows on the page",
        "return window.edgeflow.rowsOf('congestion').length > 100;",
        Duration::from_secs(30),
    )
    .expect("in time");
    node.stop();
    for b in [&city, &cpo] {
        b.wait_for(
            "the feed's end",
            "return window.edgeflow.ended !== null;",
            Duration::from_secs(30),
        )
        .expect("in time");
    }
    // The city's page holds every row of the sink still in retention at
    // the last watermark.
    let progress = city
        .eval("return window.edgeflow.progress.congestion;")
        .expect("the page answers");
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
    let latencies: Vec<f64> = serde_json::from_value(
        city.eval("return window.edgeflow.latencies;")
            .expect("the page answers"),
    )
    .expect("latencies");
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
    let segments = cpo
        .eval("return window.edgeflow.geometry.segments.length;")
        .expect("the page answers");
    assert_eq!(
        segments,
        json!(0),
        "no segment geometry without the congestion scope"
    );
    let cells = cpo
        .eval("return window.edgeflow.geometry.cells.length;")
        .expect("the page answers");
    assert_eq!(cells, json!(0), "no H3 cells without the zone scope");

    // The screenshot shows the level colours of the newest window.
    // Only the map counts: the legend's swatches (and the "live" button)
    // carry the same colours.
    let shot = city.screenshot().expect("a screenshot");
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

    // The city's page can draw every H3 cell the node rolled up into, and
    // shades either zone layer by either measure.
    let drawn: std::collections::BTreeSet<String> = serde_json::from_value(
        city.eval("return window.edgeflow.geometry.cells.map((c) => c.id);")
            .expect("the page answers"),
    )
    .expect("cell ids");
    let rolled: std::collections::BTreeSet<String> = csv_rows(&node.sink(sink_file("zone")))
        .into_values()
        .filter(|r| r["zone_type"] == "h3")
        .map(|r| r["zone_id"].clone())
        .collect();
    assert!(!rolled.is_empty(), "H3 roll-ups in the sink");
    assert!(
        rolled.is_subset(&drawn),
        "cells without geometry: {:?}",
        rolled.difference(&drawn).collect::<Vec<_>>()
    );
    let frames = |b: &Browser| {
        b.eval("return window.edgeflow.frameTimes.length;")
            .expect("the page answers")
            .as_u64()
            .expect("a count")
    };
    let before = frames(&city);
    let chosen = city
        .eval(
            "document.querySelector('input[name=\"zone-layer\"][value=\"cells\"]').click();\n\
             document.querySelector('input[name=\"zone-measure\"][value=\"low_soc_evs\"]').click();\n\
             return [window.edgeflow.zoneLayer, window.edgeflow.zoneMeasure];",
        )
        .expect("the legend offers both layers and both measures");
    assert_eq!(chosen, json!(["cells", "low_soc_evs"]));
    city.wait_for(
        "a frame drawn with the H3 cells",
        &format!("return window.edgeflow.frameTimes.length > {before};"),
        Duration::from_secs(10),
    )
    .expect("in time");

    // Fitted, every segment is in view and drawn; zoomed in, only those
    // in view are.
    assert_eq!(
        city.eval("return window.edgeflow.segmentsDrawn;")
            .expect("the page answers"),
        json!(517)
    );
    city.eval(
        "const c = document.getElementById('map'); const r = c.getBoundingClientRect();\n\
         c.dispatchEvent(new WheelEvent('wheel', {deltaY: -2000, clientX: r.left + r.width / 2, clientY: r.top + r.height / 2, bubbles: true, cancelable: true}));\n\
         return true;",
    )
    .expect("the page answers");
    city.wait_for(
        "a zoomed-in frame drawing only the segments in view",
        "const n = window.edgeflow.segmentsDrawn; return n > 0 && n < 517;",
        Duration::from_secs(10),
    )
    .expect("in time");
}

/// A tile server on loopback: every request gets one 256 x 256 magenta
/// PNG; the paths it was asked for are kept.
fn tile_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, Write};
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, 256, 256);
        enc.set_color(png::ColorType::Rgb);
        let mut w = enc.write_header().expect("png");
        let data: Vec<u8> = (0..256 * 256).flat_map(|_| [0xff, 0x00, 0xff]).collect();
        w.write_image_data(&data).expect("png data");
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(&stream);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            if let Some(path) = line.split_whitespace().nth(1) {
                seen.lock().expect("lock").push(path.to_owned());
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) <= 2 {
                    break;
                }
            }
            let mut s = &stream;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                png_bytes.len()
            );
            let _ = s.write_all(&png_bytes);
        }
    });
    (port, asked)
}

/// `[web] basemap`: the page draws the tiles under the map, fetched by
/// the browser from the template's server at the view's zoom.
#[test]
fn the_page_draws_the_basemap_the_topology_names() {
    let Some(page) = browser("browser::the_page_draws_the_basemap") else {
        return;
    };
    let (port, asked) = tile_server();
    let mut node = node(&format!(
        "[web]\nlisten = \"127.0.0.1:0\"\nbasemap = \"http://127.0.0.1:{port}/{{z}}/{{x}}/{{y}}.png\"\n"
    ));
    let addr = web(&node);
    page.goto(&format!("http://{addr}/#token={CITY}"))
        .expect("the page opens");
    page.wait_for(
        "signed in",
        "return document.getElementById('status').textContent === 'live';",
        Duration::from_secs(30),
    )
    .expect("in time");
    let start = std::time::Instant::now();
    let magenta = loop {
        let shot = page.screenshot().expect("a screenshot");
        let map = rect(&page, "map");
        let n = pixels(&shot)
            .into_iter()
            .filter(|(x, y, rgb)| {
                let (x, y) = (f64::from(*x), f64::from(*y));
                x >= map[0] && x < map[2] && y >= map[1] && y < map[3] && *rgb == [0xff, 0x00, 0xff]
            })
            .count();
        if n > 10_000 || start.elapsed() > Duration::from_secs(20) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(magenta > 10_000, "tile pixels on the map: {magenta}");
    let paths = asked.lock().expect("lock").clone();
    assert!(!paths.is_empty());
    for p in &paths {
        let parts: Vec<u32> = p
            .trim_start_matches('/')
            .trim_end_matches(".png")
            .split('/')
            .map(|n| n.parse().expect("a number"))
            .collect();
        assert_eq!(parts.len(), 3, "{p}");
        // Karhula (26.9 E, 60.5 N) at a city's zoom.
        let (z, x) = (parts[0], parts[1]);
        assert!((10..=17).contains(&z), "{p}");
        let lon = f64::from(x) / f64::from(1u32 << z) * 360.0 - 180.0;
        assert!((26.0..28.0).contains(&lon), "{p}: {lon}");
    }
    node.stop();
}

/// A zone file reloaded while a page is open: the page loads the named
/// zones in force again (the feed's `geometry` event) and keeps following.
#[test]
fn an_open_page_follows_a_reloaded_zone_file() {
    let Some(page) = browser("browser::an_open_page_follows_a_reloaded_zone_file") else {
        return;
    };
    let mut node = node("[web]\nlisten = \"127.0.0.1:0\"\n");
    let addr = web(&node);
    page.goto(&format!("http://{addr}/#token={CITY}"))
        .expect("the page opens");
    page.wait_for(
        "signed in and following the feed",
        "return document.getElementById('status').textContent === 'live';",
        Duration::from_secs(30),
    )
    .expect("in time");
    let zones = || -> (Value, Value) {
        let v = page
            .eval(
                "const g = window.edgeflow.geometry; \
                 return [g.zones_generation, g.zones.map((z) => z.id).sort()];",
            )
            .expect("the page answers");
        (v[0].clone(), v[1].clone())
    };
    let (generation, before) = zones();
    assert_eq!(generation, json!(0));
    assert!(before
        .as_array()
        .expect("ids")
        .contains(&json!("karhula-centre")));

    // Replaced as an operator should: written beside, renamed over.
    let dir = node.dir.path();
    let v1 = std::fs::read_to_string(dir.join("zones.geojson")).expect("zones");
    std::fs::write(dir.join("zones.new"), crate::ingest::zones_v2(&v1)).expect("write");
    std::fs::rename(dir.join("zones.new"), dir.join("zones.geojson")).expect("rename");
    let reloads = node.handle.as_ref().expect("running").zone_reloads.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while reloads.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(std::time::Instant::now() < deadline, "no zone reload");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The geometry a page loads now is the new zones'.
    let cookie = crate::web::login(addr, CITY);
    let (status, answer) = crate::web::get_signed(addr, "/api/geometry", &cookie);
    assert_eq!(status, 200);
    let served: Value = serde_json::from_str(crate::web::body(&answer)).expect("json");
    assert_eq!(served["zones_generation"], json!(1));
    // The open page learns it with the zone feed's next update.
    send_recording(&node);
    page.wait_for(
        "the new zones on the open page",
        "const g = window.edgeflow.geometry; return g.zones_generation === 1 && \
         g.zones.some((z) => z.id === 'karhula-east-half') && \
         !g.zones.some((z) => z.id === 'karhula-centre');",
        Duration::from_secs(30),
    )
    .expect("in time");
    let (_, after) = zones();
    let mut want: Vec<String> = (served["zones"].as_array().expect("zones").iter())
        .filter_map(|z| z["id"].as_str().map(str::to_owned))
        .collect();
    want.sort();
    assert_eq!(after, json!(want), "the page's zones are the node's");
    page.wait_for(
        "the new zone's demand on the page",
        "return window.edgeflow.rowsOf('zone').some((r) => r.key === 'karhula-east-half');",
        Duration::from_secs(30),
    )
    .expect("in time");
    assert_eq!(
        page.eval("return document.getElementById('status').textContent;")
            .expect("the page answers"),
        json!("live")
    );
    node.stop();
}
