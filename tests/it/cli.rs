//! The `edgeflow` binary: exit codes, messages, and replay of gzip input.

use std::io::Write;
use std::process::Command;

use crate::support::{data, number_before, root, Proc};

fn edgeflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgeflow"))
}

#[test]
fn validate_exits_zero_only_when_valid() {
    let ok = edgeflow()
        .arg("validate")
        .arg(root("topologies/karhula.toml"))
        .output()
        .expect("runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("517 road segments"));

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[node]\nid = \"x\"\n[reference]\nroads = \"no.geojson\"\nchargers = \"no.geojson\"\n[windows]\n").expect("write");
    let out = edgeflow().arg("validate").arg(&bad).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("cannot read").count(), 2, "{text}");
}

#[test]
fn replay_of_gzip_input_writes_both_csv_files_and_a_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gz = dir.path().join("telemetry.jsonl.gz");
    let raw = std::fs::read(data("sumo-public/telemetry.jsonl")).expect("fixture");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).expect("create"),
        flate2::Compression::fast(),
    );
    enc.write_all(&raw).expect("compress");
    enc.finish().expect("finish");
    let out_dir = dir.path().join("out");
    let out = edgeflow()
        .args(["replay", "--topology"])
        .arg(root("topologies/karhula.toml"))
        .args(["--workers", "2"])
        .arg(&gz)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("replayed 11486 records"), "{stderr}");
    assert!(
        stderr.contains("unmatched 2417 (junction 1077, wrong_heading 3, charging 1337)"),
        "{stderr}"
    );
    let congestion = std::fs::read_to_string(out_dir.join("congestion.csv")).expect("written");
    let expected =
        std::fs::read_to_string(data("sumo-public/expected-congestion.csv")).expect("fixture");
    crate::support::assert_same_rows(&congestion, &expected, "congestion");
    assert!(out_dir.join("charging.csv").exists());
}

#[test]
fn replay_reports_a_missing_input_clearly() {
    let out = edgeflow()
        .args(["replay", "--topology"])
        .arg(root("topologies/karhula.toml"))
        .args(["/nonexistent/telemetry.jsonl", "--out", "/tmp/never"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/telemetry.jsonl"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// The commands run as commands: `certs`, a node process (`edge`) fed by
// `send` and `simulate` and followed by `subscribe` (`demo`: demo.rs).
// ---------------------------------------------------------------------------

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

/// Runs `edgeflow ARGS` to its end within `within` (killed and failed
/// after): status, stdout, stderr.
fn run(within: Duration, args: &[&std::ffi::OsStr]) -> (ExitStatus, String, String) {
    let mut cmd = edgeflow();
    cmd.args(args);
    let what = format!(
        "edgeflow {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Proc::spawn(&what, cmd).finish(within)
}

/// `&str`s and paths as one argument list.
macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new(&$a)),*] };
}

/// The six files `certs` writes.
const CERT_FILES: [&str; 6] = [
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
];

mod pki {
    //! Checks with rustls' own WebPKI verifiers (the node and clients use
    //! the same library, but not this code): a certificate chains to a CA
    //! by signature, names and validity, and a key matches its certificate.
    use std::path::Path;
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

    fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(path)
            .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
            .map(|c| c.expect("a PEM certificate"))
            .collect()
    }

    fn roots(ca: &Path) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(ca) {
            roots.add(c).expect("a CA certificate");
        }
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Whether `cert` verifies as a TLS client certificate issued by `ca`.
    pub fn client_cert_verifies(ca: &Path, cert: &Path) -> Result<(), rustls::Error> {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
                .build()
                .expect("verifier");
        let chain = certs(cert);
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map(|_| ())
    }

    /// Whether `cert` verifies as a server certificate for `name` issued
    /// by `ca`.
    pub fn server_cert_verifies(ca: &Path, cert: &Path, name: &str) -> Result<(), rustls::Error> {
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
                .build()
                .expect("verifier");
        let chain = certs(cert);
        let name = ServerName::try_from(name.to_owned()).expect("a server name");
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    /// Whether the private key in `key` belongs to the certificate in
    /// `cert`.
    pub fn key_matches(cert: &Path, key: &Path) -> Result<(), rustls::Error> {
        let key = PrivateKeyDer::from_pem_file(key)
            .unwrap_or_else(|e| panic!("{}: {e:?}", key.display()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
        rustls::sign::CertifiedKey::new(certs(cert), signer).keys_match()
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn contents(dir: &Path, names: &[&str]) -> Vec<Vec<u8>> {
    names
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap_or_else(|e| panic!("{n}: {e}")))
        .collect()
}

#[test]
fn certs_makes_a_ca_that_signs_server_and_clients_and_never_replaces_files_without_force() {
    const T: Duration = Duration::from_secs(20);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("certs");
    let (status, stdout, stderr) = run(T, args!["certs", "--out", dir]);
    assert!(status.success(), "{stderr}");
    for name in CERT_FILES {
        let path = dir.join(name);
        assert!(
            stdout.contains(&path.display().to_string()),
            "the output names {name}: {stdout}"
        );
        let text = std::fs::read_to_string(&path).expect("written");
        let kind = if name.ends_with(".key") {
            "PRIVATE KEY-----"
        } else {
            "-----BEGIN CERTIFICATE-----"
        };
        assert!(text.contains(kind), "{name}: {text}");
        if name.ends_with(".key") {
            assert_eq!(mode(&path), 0o600, "{name} is readable by its owner only");
        }
    }
    let ca = dir.join("ca.pem");
    // Each key is its certificate's; both certificates chain to the CA, the
    // server's for the default names, the client's for client auth.
    for (cert, key) in [
        ("ca.pem", "ca.key"),
        ("server.pem", "server.key"),
        ("client.pem", "client.key"),
    ] {
        pki::key_matches(&dir.join(cert), &dir.join(key))
            .unwrap_or_else(|e| panic!("{key} belongs to {cert}: {e}"));
    }
    for name in ["localhost", "127.0.0.1"] {
        pki::server_cert_verifies(&ca, &dir.join("server.pem"), name)
            .unwrap_or_else(|e| panic!("server certificate for {name}: {e}"));
    }
    assert!(pki::server_cert_verifies(&ca, &dir.join("server.pem"), "example.org").is_err());
    pki::client_cert_verifies(&ca, &dir.join("client.pem")).expect("client certificate");

    // A second CA: what it issued does not verify against the first (the
    // check above can fail).
    let other = tmp.path().join("other");
    let (status, _, stderr) = run(T, args!["certs", "--out", other, "--names", "localhost"]);
    assert!(status.success(), "{stderr}");
    assert!(pki::client_cert_verifies(&ca, &other.join("client.pem")).is_err());
    assert!(pki::server_cert_verifies(&ca, &other.join("server.pem"), "localhost").is_err());
    pki::server_cert_verifies(
        &other.join("ca.pem"),
        &other.join("server.pem"),
        "localhost",
    )
    .expect("--names");
    assert!(
        pki::server_cert_verifies(
            &other.join("ca.pem"),
            &other.join("server.pem"),
            "127.0.0.1"
        )
        .is_err(),
        "--names replaces the default names"
    );

    // Existing files are never replaced without --force: non-zero exit, a
    // message naming the file and the way out, every file unchanged.
    let before = contents(&dir, &CERT_FILES);
    let (status, _, stderr) = run(T, args!["certs", "--out", dir]);
    assert!(!status.success(), "a second `certs` must refuse");
    assert!(
        stderr.contains(" exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(
        CERT_FILES
            .iter()
            .any(|n| stderr.contains(&dir.join(n).display().to_string())),
        "the message names the file: {stderr}"
    );
    assert_eq!(contents(&dir, &CERT_FILES), before, "nothing was replaced");
    // One file in the way is enough, and nothing is written beside it.
    let partial = tmp.path().join("partial");
    std::fs::create_dir(&partial).expect("mkdir");
    std::fs::write(partial.join("server.key"), "mine").expect("write");
    let (status, _, stderr) = run(T, args!["certs", "--out", partial]);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("server.key exists"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(partial.join("server.key")).expect("kept"),
        "mine"
    );
    assert_eq!(
        std::fs::read_dir(&partial).expect("dir").count(),
        1,
        "nothing else written"
    );

    // --client NAME: another client certificate from the same CA.
    let (status, stdout, stderr) = run(T, args!["certs", "--out", dir, "--client", "bus-7"]);
    assert!(status.success(), "{stderr}");
    let (alice, alice_key) = (dir.join("client-bus-7.pem"), dir.join("client-bus-7.key"));
    assert!(stdout.contains(&alice.display().to_string()), "{stdout}");
    assert_eq!(mode(&alice_key), 0o600);
    pki::key_matches(&alice, &alice_key).expect("its key");
    pki::client_cert_verifies(&ca, &alice).expect("issued by the CA in --out");
    assert!(pki::client_cert_verifies(&other.join("ca.pem"), &alice).is_err());
    assert_eq!(
        contents(&dir, &CERT_FILES),
        before,
        "the CA is kept as it was"
    );
    // Not again without --force; with it, a new one, still from the CA.
    let first = std::fs::read(&alice).expect("cert");
    let (status, _, stderr) = run(T, args!["certs", "--out", dir, "--client", "bus-7"]);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("client-bus-7.pem exists"), "{stderr}");
    assert_eq!(std::fs::read(&alice).expect("cert"), first);
    let (status, _, stderr) = run(
        T,
        args!["certs", "--out", dir, "--client", "bus-7", "--force"],
    );
    assert!(status.success(), "{stderr}");
    assert_ne!(std::fs::read(&alice).expect("cert"), first, "replaced");
    pki::client_cert_verifies(&ca, &alice).expect("still from the CA");
    pki::key_matches(&alice, &alice_key).expect("its new key");
    // A name that is not an id (it would name a file elsewhere) is refused.
    let (status, _, stderr) = run(T, args!["certs", "--out", dir, "--client", "../evil"]);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("client name"), "{stderr}");
    assert!(!tmp.path().join("evil.pem").exists() && !dir.join("client-../evil.pem").exists());
    // Without a CA key there is nothing to issue from.
    let (status, _, stderr) = run(
        T,
        args!["certs", "--out", other.join("none"), "--client", "x"],
    );
    assert!(!status.success());
    assert!(stderr.contains("ca.key"), "{stderr}");

    // --force replaces the CA: what the old one issued no longer verifies.
    let (status, _, stderr) = run(T, args!["certs", "--out", dir, "--force"]);
    assert!(status.success(), "{stderr}");
    assert_ne!(contents(&dir, &CERT_FILES), before);
    pki::client_cert_verifies(&ca, &dir.join("client.pem")).expect("the new client");
    assert!(
        pki::client_cert_verifies(&ca, &alice).is_err(),
        "issued by the old CA"
    );
}

const FLEET_TOKEN: &str = "cli-fleet-token";
const OPERATOR_TOKEN: &str = "cli-operator-token";

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// A topology for a node process in `dir`, in the shape of
/// `ingest::topology_text`: the Karhula roads and chargers, an ephemeral
/// loopback port, a fleet, a files sink in `dir/out`, and an operator that
/// may subscribe to everything (k = 1, so every row can be seen).
/// Certificates in `dir/certs`, the node topology, and an `edge` process
/// on it (`global` flags before the subcommand) once it listens: the
/// process, its address, the certificates' directory.
fn node_process(dir: &Path, global: &[&str]) -> (Proc, String, std::path::PathBuf) {
    node_process_with(dir, global, |_| {})
}

/// [`node_process`], with `more` changing the command (its environment).
fn node_process_with(
    dir: &Path,
    global: &[&str],
    more: impl FnOnce(&mut Command),
) -> (Proc, String, std::path::PathBuf) {
    const T: Duration = Duration::from_secs(60);
    let certs = dir.join("certs");
    let (status, _, stderr) = run(T, args!["certs", "--out", certs]);
    assert!(status.success(), "{stderr}");
    let topology = dir.join("edge.toml");
    std::fs::write(&topology, node_topology(dir, &certs)).expect("topology");
    let mut cmd = edgeflow();
    cmd.args(global)
        .args(["edge", "--topology"])
        .arg(&topology)
        .current_dir(dir);
    more(&mut cmd);
    let mut node = Proc::spawn("edgeflow edge", cmd);
    node.wait_until(T, "\"listening on\"", |_, err| err.contains("listening on"));
    let to = node
        .stderr()
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the address")
        .to_owned();
    (node, to, certs)
}

fn node_topology(dir: &Path, certs: &Path) -> String {
    format!(
        "[node]\nid = \"cli-edge\"\n[reference]\nroads = \"{roads}\"\nchargers = \"{chargers}\"\n[windows]\n\
         [ingest]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         [log]\ndir = \"{log}\"\n[[fleet]]\nname = \"cli\"\ntoken_sha256 = \"{fleet}\"\n\
         [[sink]]\ntype = \"files\"\ndir = \"{out}\"\n\
         [[operator]]\nname = \"city\"\ntoken_sha256 = \"{operator}\"\n\
         [privacy]\nmin_vehicles = 1\n",
        roads = root("topologies/karhula/roads.geojson").display(),
        chargers = root("topologies/karhula/chargers.geojson").display(),
        cert = certs.join("server.pem").display(),
        key = certs.join("server.key").display(),
        log = dir.join("log").display(),
        out = dir.join("out").display(),
        fleet = sha256_hex(FLEET_TOKEN),
        operator = sha256_hex(OPERATOR_TOKEN),
    )
}

/// The rows a subscriber rebuilds from `subscribe --format jsonl` output:
/// every frame applied in order (upsert sets, retract deletes), retired
/// rows kept as history.
struct Subscription {
    rows: std::collections::BTreeMap<(String, u64), serde_json::Map<String, serde_json::Value>>,
    /// Snapshot markers seen.
    snapshots: usize,
    /// `window_ms` and `retention_ms` of the last progress marker.
    window_ms: u64,
    retention_ms: u64,
}

fn subscription_state(jsonl: &str) -> Subscription {
    let mut rows = std::collections::BTreeMap::new();
    let (mut snapshots, mut window_ms, mut retention_ms) = (0, 0, 0);
    for line in jsonl.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        match v["frame"].as_str() {
            Some("row") => {
                let key = (
                    v["key"].as_str().expect("key").to_owned(),
                    v["window_start_ms"].as_u64().expect("window"),
                );
                match v["op"].as_str() {
                    Some("upsert") => {
                        assert!(
                            matches!(v["status"].as_str(), Some("final" | "correction")),
                            "a final-mode subscription sees final values only: {line}"
                        );
                        rows.insert(key, v["value"].as_object().expect("value").clone());
                    }
                    Some("retract") => {
                        rows.remove(&key);
                    }
                    other => panic!("op {other:?}: {line}"),
                }
            }
            Some("progress") => {
                snapshots += usize::from(v["snapshot"] == true);
                window_ms = v["window_ms"].as_u64().expect("window_ms");
                retention_ms = v["retention_ms"].as_u64().expect("retention_ms");
            }
            Some("error") => panic!("the subscription ended with an error: {line}"),
            _ => {}
        }
    }
    Subscription {
        rows,
        snapshots,
        window_ms,
        retention_ms,
    }
}

/// One node process, the whole client side as commands: subscribers (JSON
/// Lines and table) started first, `send --format binary` of the recording,
/// `simulate`, then SIGTERM; each command exits 0 and says what it did, and
/// the JSON subscriber's final state is the node's congestion.csv.
#[test]
fn a_node_process_serves_send_simulate_and_subscribe_commands_and_stops_on_sigterm() {
    const T: Duration = Duration::from_secs(60);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let (mut node, to, certs) = node_process(dir, &[]);
    let ca = certs.join("ca.pem");
    assert!(to.starts_with("127.0.0.1:") && !to.ends_with(":0"), "{to}");

    let subscriber = |format: &str| {
        let mut cmd = edgeflow();
        cmd.args(["subscribe", "--to", &to, "--token", OPERATOR_TOKEN, "--ca"])
            .arg(&ca)
            .args(["--kind", "congestion", "--format", format]);
        Proc::spawn(&format!("edgeflow subscribe --format {format}"), cmd)
    };
    let mut jsonl = subscriber("jsonl");
    let mut table = subscriber("table");
    // Both hold their (empty) snapshot before anything is sent.
    jsonl.wait_until(T, "snapshot marker", |out, _| {
        out.contains("\"snapshot\":true")
    });
    table.wait_until(T, "table", |out, _| {
        out.contains("edgeflow subscribe congestion: no rows yet; 0 rows")
    });

    let recording = data("sumo-public/telemetry.jsonl");
    let records = std::fs::read_to_string(&recording)
        .expect("fixture")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64;
    let (status, _, sent) = run(
        T,
        args![
            "send",
            "--to",
            to,
            "--token",
            FLEET_TOKEN,
            "--ca",
            ca,
            "--format",
            "binary",
            recording
        ],
    );
    assert!(status.success(), "{sent}");
    assert!(sent.starts_with("sent "), "{sent}");
    assert_eq!(number_before(&sent, "records accepted"), records, "{sent}");
    assert_eq!(number_before(&sent, "rejected"), 0, "{sent}");
    assert_eq!(number_before(&sent, "not convertible"), 0, "{sent}");

    // Live synthetic traffic: 12 vehicles on 3 connections, a batch per
    // connection every 2 s for 3 s.
    let (status, _, simulated) = run(
        T,
        args![
            "simulate",
            "--to",
            to,
            "--token",
            FLEET_TOKEN,
            "--ca",
            ca,
            // No --topology: the network built into the binary.
            "--vehicles",
            "12",
            "--connections",
            "3",
            "--seconds",
            "3"
        ],
    );
    assert!(status.success(), "{simulated}");
    assert!(
        simulated.contains("simulated 12 vehicles over 3 connections for 3 s"),
        "{simulated}"
    );
    let live = number_before(&simulated, "records accepted");
    assert!(
        live >= 12,
        "at least one round of every vehicle: {simulated}"
    );
    assert_eq!(number_before(&simulated, "rejected"), 0, "{simulated}");
    assert!(!simulated.contains("failed"), "{simulated}");
    // Nobody on the port: an error (exit 2) with the reason, said once.
    let nobody = format!("127.0.0.1:{}", crate::support::free_port());
    let (status, _, failed) = run(
        T,
        args![
            "simulate",
            "--to",
            nobody,
            "--token",
            FLEET_TOKEN,
            "--ca",
            ca,
            "--seconds",
            "2"
        ],
    );
    assert_eq!(status.code(), Some(2), "{failed}");
    assert!(
        failed.contains("no connection got through: 4 connection(s): no answer from"),
        "{failed}"
    );

    node.terminate();
    let (status, _, report) = node.finish(T);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM stops the node with exit 0: {report}"
    );
    assert!(report.contains("edgeflow edge: stopping"), "{report}");
    // The node counted every record both commands had acknowledged.
    assert_eq!(
        number_before(&report, "records accepted"),
        records + live,
        "{report}"
    );
    assert_eq!(number_before(&report, "rejected ("), 0, "{report}");
    assert_eq!(
        number_before(&report, "records, "),
        records + live,
        "the dataflow's count: {report}"
    );

    // The subscribers end with the node's stream.
    let (status, out, err) = jsonl.finish(T);
    assert!(status.success(), "{err}");
    let subscription = subscription_state(&out);
    assert_eq!(subscription.snapshots, 1, "one snapshot, then changes");
    let state = &subscription.rows;
    let want = crate::subscribe::csv_rows(
        &std::fs::read_to_string(dir.join("out/congestion.csv")).expect("the files sink"),
    );
    assert!(want.len() > 1_000, "the recording's rows: {}", want.len());
    let got = state
        .iter()
        .map(|(key, value)| (key.clone(), serde_json::Value::Object(value.clone())))
        .collect();
    crate::subscribe::assert_json_rows(&got, &want, "subscriber against congestion.csv");

    let (status, out, err) = table.finish(T);
    assert!(status.success(), "{err}");
    check_last_table(
        &out,
        &want,
        subscription.window_ms,
        subscription.retention_ms,
    );
    eprintln!(
        "{}{}{report}subscriber rows: {} (congestion.csv {})",
        sent,
        simulated,
        state.len(),
        want.len()
    );
}

/// `subscribe --format table` redraws a table at every progress marker: a
/// header line (the newest window, its row count, watermark, revision),
/// then that window's rows, one per key. The last one drawn is checked against the sink: the
/// rows not yet retired at its watermark (with the window and retention of
/// the progress markers), the newest window's listed.
fn check_last_table(
    out: &str,
    sink: &std::collections::BTreeMap<(String, u64), std::collections::BTreeMap<String, String>>,
    window: u64,
    retention: u64,
) {
    // Redirected: plain tables one after the other, no screen codes.
    assert!(!out.contains('\x1b'), "no screen codes in a file: {out:?}");
    let last = out
        .rsplit("edgeflow subscribe congestion: ")
        .next()
        .unwrap_or_else(|| panic!("no table drawn: {out:?}"));
    let mut lines = last.lines();
    let header = lines.next().expect("header");
    let held = number_before(header, "rows");
    // A time a person reads: RFC 3339 with the offset.
    let watermark = header
        .split("watermark ")
        .nth(1)
        .and_then(|w| w.split(';').next())
        .and_then(|w| chrono::DateTime::parse_from_rfc3339(w).ok())
        .unwrap_or_else(|| panic!("an RFC 3339 watermark in {header:?}"))
        .timestamp_millis() as u64;
    // Rows retire when window_start + window + retention <= watermark
    // (the header shows whole seconds; the bounds are whole seconds too).
    assert!(window > 0 && retention > 0, "progress markers seen");
    let live: Vec<&(String, u64)> = sink
        .keys()
        .filter(|(_, w)| w + window + retention > watermark)
        .collect();
    let newest = live.iter().map(|(_, w)| *w).max().expect("rows");
    // The header counts the newest window's rows, the ones listed (live
    // traffic that straddles a minute leaves two windows held).
    let in_newest = live.iter().filter(|(_, w)| *w == newest).count();
    assert_eq!(
        held, in_newest as u64,
        "rows in the newest window: {header}"
    );
    eprintln!("last table: {header}");
    // Columns start where their names do.
    let columns = lines
        .by_ref()
        .find(|l| l.starts_with("id "))
        .expect("the column names");
    let mut starts: Vec<(usize, &str)> = Vec::new();
    let mut at = 0;
    for name in columns.split_whitespace() {
        let i = columns[at..].find(name).expect("column") + at;
        starts.push((i, name));
        at = i + name.len();
    }
    let cell = |line: &str, n: usize| -> String {
        let chars: Vec<char> = line.chars().collect();
        let from = starts[n].0.min(chars.len());
        let to = starts
            .get(n + 1)
            .map_or(chars.len(), |s| s.0.min(chars.len()));
        chars[from..to].iter().collect::<String>().trim().to_owned()
    };
    let column = |name: &str| starts.iter().position(|(_, n)| *n == name).expect(name);
    let listed: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
    let expected: Vec<&str> = live
        .iter()
        .filter(|(_, w)| *w == newest)
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        listed.iter().map(|l| cell(l, 0)).collect::<Vec<_>>(),
        expected,
        "the newest window's keys: {last}"
    );
    assert!(columns.contains(" name "), "street names shown: {columns}");
    for line in listed {
        let key = cell(line, 0);
        let row = &sink[&(key.clone(), newest)];
        for name in ["samples", "vehicles", "level"] {
            assert_eq!(
                cell(line, column(name)),
                row[name],
                "{key}: {name} in {line:?}"
            );
        }
    }
}

/// `--log-format json`: every line the node writes is a JSON object with a
/// level and a message, one per notable event: the start (version and
/// settings), recovery, the listener, a refused client (a wrong token),
/// the stop with its figures.
#[test]
fn node_logs_are_json_lines_one_per_notable_event() {
    const T: Duration = Duration::from_secs(60);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let (mut node, to, certs) = node_process(dir, &["--log-format", "json"]);
    let (status, _, sent) = run(
        T,
        args![
            "send",
            "--to",
            to,
            "--token",
            "not-the-fleet-token",
            "--ca",
            certs.join("ca.pem"),
            data("sumo-public/telemetry.jsonl")
        ],
    );
    assert!(!status.success(), "a wrong token is refused: {sent}");
    node.wait_until(T, "the refusal logged", |_, err| {
        err.contains("client refused")
    });
    node.terminate();
    let (status, _, stderr) = node.finish(T);
    assert!(status.success(), "{stderr}");
    let mut messages = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        messages.push(
            v["fields"]["message"]
                .as_str()
                .expect("a message")
                .to_owned(),
        );
    }
    for (what, needle) in [
        ("start", "starting as edge: node cli-edge"),
        ("recovery", "log recovered in"),
        ("listener", "listening on"),
        ("refusal", "client refused"),
        ("stop", "stopping"),
        ("figures", "edge stopped: "),
    ] {
        assert_eq!(
            messages.iter().filter(|m| m.contains(needle)).count(),
            1,
            "one {what} line: {messages:#?}"
        );
    }
}

/// systemd's `Type=notify`: with `NOTIFY_SOCKET` set, the node says
/// `READY=1` once it listens and `STOPPING=1` when SIGTERM drains it.
#[test]
fn a_node_tells_the_service_manager_when_it_is_ready_and_when_it_stops() {
    const T: Duration = Duration::from_secs(60);
    let tmp = tempfile::tempdir().expect("tempdir");
    let socket_path = tmp.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let (mut node, to, _) = node_process_with(tmp.path(), &[], |cmd| {
        cmd.env("NOTIFY_SOCKET", &socket_path);
    });
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification ({e}): {}", node.stderr()));
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains(&to), "the status names the address: {ready}");
    node.terminate();
    let n = socket.recv(&mut buf).expect("a notification");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    let (status, _, stderr) = node.finish(T);
    assert!(status.success(), "{stderr}");
}

/// `edgeflow token --out FILE` writes a token only its owner reads and
/// prints the topology's `token_sha256` line for it; clients take a token
/// from a file or from EDGEFLOW_TOKEN (never needing it on the command
/// line), and say how when none is given.
#[test]
fn tokens_are_made_by_edgeflow_token_and_read_from_files_or_the_environment() {
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;
    const T: Duration = Duration::from_secs(60);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let made = dir.join("made.token");
    let (status, stdout, stderr) = run(T, args!["token", "--out", made]);
    assert!(status.success(), "{stderr}");
    let token = std::fs::read_to_string(&made).expect("token file");
    let token = token.trim();
    assert_eq!(token.len(), 64, "32 random bytes in hex");
    let mode = std::fs::metadata(&made).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        stdout.trim(),
        format!(
            "token_sha256 = \"{}\"",
            hex::encode(sha2::Sha256::digest(token.as_bytes()))
        )
    );
    let (status, _, stderr) = run(T, args!["token", "--out", made]);
    assert!(
        !status.success() && stderr.contains("never replaced"),
        "{stderr}"
    );

    // The fleet token from a file, then from the environment.
    let (mut node, to, certs) = node_process(dir, &[]);
    let fleet = dir.join("fleet.token");
    std::fs::write(&fleet, format!("{FLEET_TOKEN}\n")).expect("write");
    let few = dir.join("few.jsonl");
    let recording = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("fixture");
    std::fs::write(
        &few,
        recording.lines().take(50).collect::<Vec<_>>().join("\n"),
    )
    .expect("write");
    let ca = certs.join("ca.pem");
    let (status, _, sent) = run(
        T,
        args![
            "send",
            "--to",
            to,
            "--token-file",
            fleet,
            "--ca",
            ca,
            "--sender",
            "from-file",
            few
        ],
    );
    assert!(status.success(), "{sent}");
    assert_eq!(number_before(&sent, "records accepted"), 50, "{sent}");
    let mut cmd = edgeflow();
    cmd.args(["send", "--to", &to, "--ca"])
        .arg(&ca)
        .args(["--sender", "from-env"])
        .arg(&few)
        .env("EDGEFLOW_TOKEN", FLEET_TOKEN);
    let (status, _, sent) = Proc::spawn("edgeflow send", cmd).finish(T);
    assert!(status.success(), "{sent}");
    assert_eq!(number_before(&sent, "records accepted"), 50, "{sent}");
    // No token at all: refused before connecting, saying how to give one.
    let (status, _, said) = run(T, args!["send", "--to", to, "--ca", ca, few]);
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("--token-file") && said.contains("EDGEFLOW_TOKEN"),
        "{said}"
    );
    node.terminate();
    let (status, _, stderr) = node.finish(T);
    assert!(status.success(), "{stderr}");
}

/// `edgeflow edge` reloads its topology when the file changes and on
/// SIGHUP (which used to kill it with exit 129); a file with problems is
/// refused with the reason and the node serves on.
#[test]
fn a_node_reloads_its_topology_on_a_change_and_on_sighup() {
    const T: Duration = Duration::from_secs(60);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut node, _, _) = node_process(tmp.path(), &[]);
    let topology = tmp.path().join("edge.toml");
    let text = std::fs::read_to_string(&topology).expect("topology");
    // An edit: the node applies it by itself.
    let edited = text.replace("min_vehicles = 1", "min_vehicles = 2");
    assert_ne!(edited, text);
    std::fs::write(&topology, &edited).expect("edit");
    node.wait_until(T, "the reload of the edited file", |_, err| {
        err.contains("reloaded") && err.contains("[privacy] min_vehicles")
    });
    // A file with problems, then SIGHUP: refused, and the node serves on.
    std::fs::write(
        &topology,
        edited.replace("[windows]\n", "[windows]\nsize = \"x\"\n"),
    )
    .expect("break");
    let hup = Command::new("kill")
        .args(["-HUP", &node.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(hup.success());
    node.wait_until(T, "the refused reload", |_, err| {
        err.contains("SIGHUP: reloading")
            && err.contains("reload refused")
            && err.contains("windows.size")
    });
    node.terminate();
    let (status, _, stderr) = node.finish(T);
    assert!(status.success(), "SIGHUP did not stop the node: {stderr}");
}

/// Clients fail fast and say how to fix it: a CA that did not sign the
/// node's certificate, a name the certificate does not hold, a key passed
/// as the CA, and a port nobody answers on each end the command within
/// seconds (not after a minute of retries), exit 2, with the fix.
#[test]
fn clients_fail_fast_with_the_fix_for_tls_and_unreachable_nodes() {
    const T: Duration = Duration::from_secs(30);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut node, to, certs) = node_process(tmp.path(), &[]);
    let other = tmp.path().join("other-certs");
    let (status, _, stderr) = run(T, args!["certs", "--out", other]);
    assert!(status.success(), "{stderr}");
    let file = tmp.path().join("few.jsonl");
    std::fs::write(&file, "").expect("file");
    let unanswered = format!("127.0.0.1:{}", crate::support::free_port());
    let token = "x".to_owned();
    let cases: [(&str, Vec<std::ffi::OsString>, &str); 5] = [
        (
            "another CA",
            vec!["--ca".into(), other.join("ca.pem").into()],
            "not signed by the CA in --ca",
        ),
        (
            "a name mismatch",
            vec![
                "--ca".into(),
                certs.join("ca.pem").into(),
                "--server-name".into(),
                "elsewhere.example".into(),
            ],
            "does not hold the name \"elsewhere.example\"",
        ),
        (
            "a key as the CA",
            vec!["--ca".into(), certs.join("server.key").into()],
            "holds a private key, not a certificate",
        ),
        (
            "a certificate as the key",
            vec![
                "--ca".into(),
                certs.join("ca.pem").into(),
                "--cert".into(),
                certs.join("client.pem").into(),
                "--key".into(),
                certs.join("client.pem").into(),
            ],
            "holds a certificate, not a private key",
        ),
        (
            "nobody on the port",
            vec!["--ca".into(), certs.join("ca.pem").into()],
            "no answer from",
        ),
    ];
    for (what, extra, hint) in cases {
        let target = if what == "nobody on the port" {
            &unanswered
        } else {
            &to
        };
        let mut cmd: Vec<std::ffi::OsString> = vec![
            "send".into(),
            "--to".into(),
            target.into(),
            "--token".into(),
            token.clone().into(),
        ];
        cmd.extend(extra);
        cmd.push(file.clone().into());
        let started = std::time::Instant::now();
        let args: Vec<&std::ffi::OsStr> = cmd.iter().map(|a| a.as_os_str()).collect();
        let (status, _, stderr) = run(T, &args);
        let took = started.elapsed();
        assert_eq!(status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains(hint), "{what}: {hint:?} in {stderr}");
        assert!(took < Duration::from_secs(12), "{what} took {took:?}");
        assert_eq!(
            stderr.matches("error").count(),
            1,
            "{what}: said once: {stderr}"
        );
    }
    // An address without a port.
    let (status, _, stderr) = run(
        T,
        args![
            "send",
            "--to",
            "127.0.0.1",
            "--token",
            "x",
            "--ca",
            certs.join("ca.pem"),
            file
        ],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("give the node as HOST:PORT"), "{stderr}");
    // A second node on the first one's port: said once, with the fix.
    let topology = std::fs::read_to_string(tmp.path().join("edge.toml")).expect("topology");
    let log = tmp.path().join("log");
    let second = topology.replace("127.0.0.1:0", &to).replace(
        &log.display().to_string(),
        &tmp.path().join("log-2").display().to_string(),
    );
    assert_ne!(second, topology);
    std::fs::write(tmp.path().join("second.toml"), second).expect("topology");
    let (status, _, stderr) = run(
        T,
        args!["edge", "--topology", tmp.path().join("second.toml")],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("another process listens there"), "{stderr}");
    assert_eq!(
        stderr.matches("already in use").count(),
        1,
        "said once: {stderr}"
    );
    node.terminate();
    let (status, _, stderr) = node.finish(T);
    assert!(status.success(), "{stderr}");
}

/// `--help` lists the operational commands, each with an example in its
/// own help, and the benchmarks apart (every benchmark command is listed
/// there and exists); the exit codes are documented; completions are
/// generated for the shells.
#[test]
fn help_groups_benchmarks_apart_gives_examples_and_exit_codes_and_completions_work() {
    const T: Duration = Duration::from_secs(30);
    let (status, help, stderr) = run(T, args!["--help"]);
    assert!(status.success(), "{stderr}");
    let (commands, rest) = help
        .split_once("Options:")
        .expect("a command list, then options");
    let benchmarks = rest
        .split_once("Benchmarks")
        .and_then(|(_, b)| b.split_once("Exit codes:"))
        .map(|(b, _)| b)
        .expect("a benchmarks section before the exit codes");
    assert!(rest.contains("  2  could not do it"), "{help}");
    let listed: Vec<&str> = commands
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(listed.len() >= 10, "{listed:?}");
    assert!(listed.iter().all(|c| !c.starts_with("bench")), "{listed:?}");
    for command in &listed {
        let (status, text, stderr) = run(T, args![command, "--help"]);
        assert!(status.success(), "{command}: {stderr}");
        assert!(
            text.contains("Example"),
            "`{command} --help` has an example:\n{text}"
        );
    }
    let benches: Vec<&str> = benchmarks
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("bench"))
        .collect();
    assert_eq!(benches.len(), 10, "{benchmarks}");
    for bench in benches {
        let (status, _, stderr) = run(T, args!["help", bench]);
        assert!(status.success(), "{bench} exists: {stderr}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let (status, script, stderr) = run(T, args!["completions", shell]);
        assert!(status.success(), "{stderr}");
        assert!(
            script.contains("subscribe") && script.contains("--token-file"),
            "{shell}"
        );
    }
}

/// `edgeflow probe`: 0 with the answer on a 200 from a node's `/ready`;
/// 1 when nothing answers; 2 for a URL without a port.
#[test]
fn probe_answers_a_health_check_by_its_exit_code() {
    const T: Duration = Duration::from_secs(30);
    let node = crate::ingest::start_with(|dir| {
        crate::ingest::topology_text(dir, "") + "\n[observability]\nlisten = \"127.0.0.1:0\"\n"
    });
    let addr = node
        .handle
        .as_ref()
        .and_then(|h| h.observe_addr)
        .expect("listener");
    let (status, out, err) = run(T, args!["probe", format!("http://{addr}/ready")]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains(" 200 "), "{out}");
    let nobody = format!("http://127.0.0.1:{}/ready", crate::support::free_port());
    let (status, out, _) = run(T, args!["probe", nobody]);
    assert_eq!(status.code(), Some(1), "{out}");
    let (status, _, err) = run(T, args!["probe", "http://127.0.0.1/ready"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("needs a port"), "{err}");
}
