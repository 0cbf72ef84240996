//! The node's observability listener (issue 15): `/metrics` scraped
//! during a real send over QUIC parses as Prometheus text and counts what
//! was sent, by reason; `/ready` is 503 until the log is recovered;
//! `/health`; what else the listener answers; `docs/METRICS.md` is the
//! catalog.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use edgeflow::log::Encoding;

use crate::ingest::{send_file, start_with, topology_text};
use crate::support::{data, root};

/// One HTTP/1.0 request over a plain TCP connection: (status, body).
fn http(addr: SocketAddr, request: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |b| b.1).to_owned();
    Ok((status, body))
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, &format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")).expect("HTTP answer")
}

/// A scrape parsed by a Prometheus text-format parser: sample name with
/// its labels (sorted, `k=v,...`) -> value.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
    let mut out = BTreeMap::new();
    for s in parsed.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        };
        out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    out
}

fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in {:#?}", m.keys().collect::<Vec<_>>()))
}

fn observed_topology(dir: &Path, listen: &str) -> String {
    format!(
        "{}\n[observability]\nlisten = \"{listen}\"\n",
        topology_text(dir, "")
    )
}

#[test]
fn metrics_scraped_during_a_send_count_what_was_sent_by_reason() {
    let mut node = start_with(|dir| observed_topology(dir, "127.0.0.1:0"));
    let addr = node
        .handle
        .as_ref()
        .and_then(|h| h.observe_addr)
        .expect("observability listener");
    // The recording with bad records among its lines.
    let good = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("recording");
    let bad: [(&str, &str); 4] = [
        ("syntax", "this is not json"),
        (
            "unknown_type",
            r#"{"type":"spaceship","ts_ms":1767258000000}"#,
        ),
        (
            "unknown_charger",
            r#"{"type":"charger","charger_id":"no-such-charger","connector":1,"ts_ms":1767258000000,"status":"Available","power_kw":0.0,"energy_wh":1}"#,
        ),
        (
            "missing_field",
            r#"{"type":"charger","charger_id":"cs-hiidenkirnuntie-1","connector":1,"status":"Available","power_kw":0.0,"energy_wh":1}"#,
        ),
    ];
    let mut text = String::new();
    let mut sent_bad: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, line) in good.lines().enumerate() {
        text.push_str(line);
        text.push('\n');
        if i % 1000 == 7 {
            let (reason, bad_line) = bad[(i / 1000) % bad.len()];
            text.push_str(bad_line);
            text.push('\n');
            *sent_bad.entry(reason).or_default() += 1;
        }
    }
    let lines = text.lines().count() as u64;
    let file = node.dir.path().join("mixed.jsonl");
    std::fs::write(&file, &text).expect("write");

    // Scrape all along the send: every exposition parses, and the counts
    // never go down.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut scrapes, mut last) = (0, 0.0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let m = scrape(addr);
                let received = m
                    .get("edgeflow_ingest_records_received_total{}")
                    .copied()
                    .unwrap_or(0.0);
                assert!(received >= last, "received went from {last} to {received}");
                last = received;
                scrapes += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            scrapes
        })
    };
    let mut opts = node.options(Encoding::JsonLines);
    opts.batch_lines = 300;
    let report = send_file(&opts, &file);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraper.join().expect("scraper");
    assert!(scrapes >= 1);

    let bad_total: u64 = sent_bad.values().sum();
    assert_eq!(report.accepted + report.rejected, lines, "{report:?}");
    assert_eq!(report.rejected, bad_total, "{:?}", report.rejections);
    let m = scrape(addr);
    let received = value(&m, "edgeflow_ingest_records_received_total{}");
    let accepted = value(&m, "edgeflow_ingest_records_accepted_total{}");
    assert_eq!(received, lines as f64, "received = what was sent");
    assert_eq!(accepted, report.accepted as f64);
    let mut rejected_sum = 0.0;
    for (reason, n) in &sent_bad {
        let got = value(
            &m,
            &format!("edgeflow_ingest_records_rejected_total{{reason={reason}}}"),
        );
        assert_eq!(got, *n as f64, "reason {reason}");
        rejected_sum += got;
    }
    assert_eq!(
        received,
        accepted + rejected_sum,
        "received = accepted + rejected"
    );
    let batches = value(&m, "edgeflow_ingest_batches_total{}");
    assert!(batches >= (lines / 300) as f64, "{batches} batches");
    assert!(value(&m, "edgeflow_ingest_bytes_total{}") >= text.len() as f64 * 0.99);
    // The log: every batch appended and fsynced, bytes on disk.
    assert_eq!(value(&m, "edgeflow_log_appends_total{}"), batches);
    assert!(value(&m, "edgeflow_log_fsync_seconds_count{}") >= 1.0);
    assert!(value(&m, "edgeflow_log_bytes{}") > 0.0);
    assert!(value(&m, "edgeflow_log_segments{}") >= 1.0);
    // Connections, the watermark, the process, readiness.
    assert!(value(&m, "edgeflow_connections_total{outcome=accepted}") >= 1.0);
    assert!(value(&m, "edgeflow_watermark_ms{}") >= 1_767_258_000_000.0);
    assert!(value(&m, "edgeflow_process_resident_memory_bytes{}") > 1e6);
    assert!(value(&m, "edgeflow_process_open_fds{}") > 3.0);
    assert_eq!(value(&m, "edgeflow_ready{}"), 1.0);

    // The dataflow's own counts are live: it reads every record the log
    // took (soon after the acknowledgements).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = scrape(addr);
        let read = m
            .get("edgeflow_records_read_total{}")
            .copied()
            .unwrap_or(0.0);
        if read == accepted {
            assert!(value(&m, "edgeflow_rows_emitted_total{status=final}") > 0.0);
            break;
        }
        assert!(read < accepted, "the dataflow read {read} of {accepted}");
        assert!(
            Instant::now() < deadline,
            "the dataflow read {read} of {accepted}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // At the stop the dataflow drains: the final rows were emitted, and
    // the files sink holds them.
    let (status, _) = get(addr, "/metrics");
    assert_eq!(status, 200);
    let report = node.stop();
    assert!(report.summary.emitted.finals > 0);
}

#[test]
fn ready_is_503_until_the_log_is_recovered_then_200() {
    // A node with a log to replay at its next start.
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut node = start_with(|dir| observed_topology(dir, &listen.to_string()));
    // About 140,000 records: their replay takes long enough to be seen.
    for sender in 0..12 {
        let mut opts = node.options(Encoding::Cbor);
        opts.sender = format!("recorder-{sender}");
        opts.batch_lines = 2000;
        let r = send_file(&opts, &data("sumo-public/telemetry.jsonl"));
        assert_eq!(r.rejected, 0);
    }
    node.stop();
    // Restart in a thread; poll /ready from before it binds.
    let dir = node.dir.path().to_owned();
    let starting = std::thread::spawn(move || crate::ingest::restart_in(&dir));
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut seen, mut first_503) = (Vec::new(), None);
    while Instant::now() < deadline {
        match http(listen, "GET /ready HTTP/1.0\r\n\r\n") {
            Ok((status, body)) => {
                if seen.last() != Some(&status) {
                    seen.push(status);
                }
                if status == 503 && first_503.is_none() {
                    first_503 = Some(body);
                }
                if status == 200 {
                    break;
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    let handle = starting.join().expect("node thread");
    assert_eq!(seen, vec![503, 200], "503 while recovering, then 200");
    let first = first_503.unwrap_or_default();
    assert!(first.contains("log recovery"), "first 503: {first}");
    node.handle = Some(handle);
    assert_eq!(get(listen, "/health"), (200, "ok\n".into()));
    assert_eq!(get(listen, "/ready").0, 200);
    assert_eq!(get(listen, "/nothing-here").0, 404);
    assert_eq!(get(listen, "/../etc/passwd").0, 404);
    let (status, _) = http(
        listen,
        "POST /metrics HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}",
    )
    .expect("answer");
    assert_eq!(status, 405);
    node.stop();
}

#[test]
fn a_bad_observability_address_is_reported_with_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("t.toml"),
        observed_topology(dir.path(), "localhost"),
    )
    .expect("write");
    let Err(problems) = edgeflow::topology::Topology::load(&dir.path().join("t.toml")) else {
        panic!("an address without a port is refused");
    };
    assert!(
        problems
            .iter()
            .any(|p| p.to_string().contains("observability.listen")),
        "{problems:?}"
    );
}

#[test]
fn docs_metrics_md_is_the_catalog() {
    let table = edgeflow::metrics::markdown_table();
    let path = root("docs/METRICS.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    if std::env::var_os("EDGEFLOW_BLESS").is_some() {
        let start = doc.find("| name | type |").unwrap_or(doc.len());
        let end = doc[start..]
            .find("\n\n")
            .map_or(doc.len(), |e| start + e + 1);
        let mut new = doc[..start].to_owned();
        new.push_str(&table);
        new.push_str(&doc[end.min(doc.len())..]);
        std::fs::write(&path, new).expect("write docs/METRICS.md");
        return;
    }
    assert!(
        doc.contains(&table),
        "docs/METRICS.md does not hold the catalog of src/metrics.rs; regenerate its table with \
         EDGEFLOW_BLESS=1 cargo test --test it docs_metrics_md_is_the_catalog. Expected:\n{table}"
    );
}
