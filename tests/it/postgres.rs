//! The PostgreSQL sink against a real PostgreSQL with PostGIS (issue 13):
//! after a run the tables hold what the files sink wrote, row for row and
//! number for number, through a database restart and SIGKILLs of the
//! node; the Grafana dashboard's queries read them; migrations apply once.
//!
//! The server: `EDGEFLOW_PG_URL` (`postgres://edgeflow@127.0.0.1:PORT/db`,
//! a user that may create schemas, PostGIS installed or installable), and
//! `EDGEFLOW_PG_RESTART`, a shell command restarting it. `scripts/test`
//! starts a throwaway cluster and sets both, with `EDGEFLOW_REQUIRE_PG=1`,
//! which turns a missing server into a failure; without them the tests
//! print that they are skipped. Each test works in a schema of its own.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgeflow::aggregate::{CHARGING_HEADER, CONGESTION_HEADER, ZONES_HEADER};
use edgeflow::node::make_certs;
use edgeflow::topology::Topology;
use sha2::{Digest, Sha256};

use crate::support::{data, free_port, root, send, skip, Proc, FLEET_TOKEN};

/// The server, shared by the tests: the restart test has it alone (its
/// restart would break the others' own connections), the others together.
static SERVER: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// What a test holds of the server while it runs.
#[allow(dead_code)] // held for its drop
enum Hold {
    Shared(std::sync::RwLockReadGuard<'static, ()>),
    Alone(std::sync::RwLockWriteGuard<'static, ()>),
}

/// The server's URL and restart command, held (alone for a test that
/// restarts it), or `None` (said) when there is none and none is required.
fn server(test: &str, restart: bool) -> Option<(String, String, Hold)> {
    let url = std::env::var("EDGEFLOW_PG_URL").ok();
    let cmd = std::env::var("EDGEFLOW_PG_RESTART").ok();
    let required = std::env::var_os("EDGEFLOW_REQUIRE_PG").is_some();
    match (url, cmd) {
        (Some(url), cmd) if !restart || cmd.is_some() => {
            let hold = if restart {
                Hold::Alone(SERVER.write().unwrap_or_else(|p| p.into_inner()))
            } else {
                Hold::Shared(SERVER.read().unwrap_or_else(|p| p.into_inner()))
            };
            Some((url, cmd.unwrap_or_default(), hold))
        }
        (url, _) => {
            let missing = if url.is_none() {
                "EDGEFLOW_PG_URL"
            } else {
                "EDGEFLOW_PG_RESTART"
            };
            assert!(
                !required,
                "PostgreSQL is required here ({missing} unset; scripts/test starts one)"
            );
            skip(
                test,
                &format!("no PostgreSQL ({missing} unset; scripts/test starts one)"),
            );
            None
        }
    }
}

/// A schema of its own for a test.
fn schema_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!("t_{}_{nanos:x}", std::process::id())
}

/// A connection of the test's own.
struct Db {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Db {
    fn connect(url: &str) -> Db {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
            tokio::spawn(conn);
            client
        });
        Db { rt, client }
    }

    fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        (self.rt.block_on(self.client.query(sql, &[]))).unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    }

    /// The first column of each row, as text.
    fn texts(&self, sql: &str) -> Vec<String> {
        (self.query(sql).iter())
            .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
            .collect()
    }

    fn count(&self, sql: &str) -> i64 {
        self.query(sql)[0].get(0)
    }

    fn batch(&self, sql: &str) {
        (self.rt.block_on(self.client.batch_execute(sql)))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// Polls until `sql` counts something (at most 30 s).
    /// Waits until `sql` counts a row. The sink makes its tables once it
    /// has connected: until then a missing schema or table counts none.
    fn wait_for(&self, sql: &str) {
        use tokio_postgres::error::SqlState;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let count = || match self.rt.block_on(self.client.query(sql, &[])) {
            Ok(rows) => rows[0].get::<_, i64>(0),
            Err(e)
                if e.code() == Some(&SqlState::UNDEFINED_TABLE)
                    || e.code() == Some(&SqlState::INVALID_SCHEMA_NAME) =>
            {
                0
            }
            Err(e) => panic!("{sql}: {e:?}"),
        };
        while count() == 0 {
            assert!(std::time::Instant::now() < deadline, "never: {sql}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn drop_schema(&self, schema: &str) {
        let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
        self.rt
            .block_on(self.client.batch_execute(&sql))
            .expect("drop schema");
    }
}

/// A table's rows printed as the CSV files sink prints them, sorted.
fn table_lines(db: &Db, schema: &str, table: &str, header: &str) -> Vec<String> {
    let cols: Vec<String> = (header.split(','))
        .map(|f| match f.strip_suffix("_ms") {
            Some(c) => format!("(extract(epoch FROM {c}) * 1000)::bigint::text"),
            None => format!("coalesce({f}::text, '')"),
        })
        .collect();
    let mut lines = db.texts(&format!(
        "SELECT {} FROM {schema}.{table}",
        cols.join(" || ',' || ")
    ));
    lines.sort();
    lines
}

/// A CSV text's rows (the header checked), sorted.
fn csv_lines(csv: &str, header: &str) -> Vec<String> {
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(header));
    let mut rows: Vec<String> = lines.filter(|l| !l.is_empty()).map(str::to_owned).collect();
    rows.sort();
    rows
}

/// Asserts a table equals a CSV text row for row, the first differences said.
fn assert_table_is(db: &Db, schema: &str, table: &str, header: &str, csv: &str, what: &str) {
    let got = table_lines(db, schema, table, header);
    let want = csv_lines(csv, header);
    let missing: Vec<_> = want
        .iter()
        .filter(|l| got.binary_search(l).is_err())
        .take(3)
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|l| want.binary_search(l).is_err())
        .take(3)
        .collect();
    assert!(
        got == want,
        "{table}: {} rows, {what} has {}; missing {missing:?}, extra {extra:?}",
        got.len(),
        want.len()
    );
}

/// The three tables equal the files sink's CSV files in `out`.
fn assert_tables_are_the_files(db: &Db, schema: &str, out: &Path) -> usize {
    let mut rows = 0;
    for (table, header, file) in [
        ("congestion", CONGESTION_HEADER, "congestion.csv"),
        ("charging", CHARGING_HEADER, "charging.csv"),
        ("zone_stats", ZONES_HEADER, "zones.csv"),
    ] {
        let csv = std::fs::read_to_string(out.join(file)).expect("the files sink wrote");
        assert_table_is(db, schema, table, header, &csv, file);
        rows += csv.lines().count() - 1;
    }
    rows
}

/// A node topology: Karhula with its zones and H3 cells, a files sink and
/// a postgres sink (`sink_extra` lines in its table).
fn topology_text(port: u16, url: &str, schema: &str, sink_extra: &str) -> String {
    format!(
        "[node]\nid = \"karhula-edge\"\n[reference]\nroads = \"{roads}\"\nchargers = \"{chargers}\"\n\
         zones = \"{zones}\"\n[zones]\nh3_resolution = 8\n\
         [windows]\nsize = \"60s\"\nallowed_lateness = \"5s\"\nretention = \"15m\"\n\
         [privacy]\nmin_vehicles = 1\n\
         [ingest]\nlisten = \"127.0.0.1:{port}\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         [log]\ndir = \"log\"\nsegment_bytes = 262144\n\
         [[fleet]]\nname = \"cars\"\ntoken_sha256 = \"{token}\"\n\
         [[sink]]\ntype = \"files\"\ndir = \"out\"\n\
         [[sink]]\ntype = \"postgres\"\nname = \"city-db\"\nurl = \"{url}\"\nschema = \"{schema}\"\n{sink_extra}",
        roads = root("topologies/karhula/roads.geojson").display(),
        chargers = root("topologies/karhula/chargers.geojson").display(),
        zones = root("topologies/karhula/zones.geojson").display(),
        token = hex::encode(Sha256::digest(FLEET_TOKEN.as_bytes())),
    )
}

/// The records of the recording from `from` to `to` minutes into it, in
/// a file.
fn minutes(dir: &Path, from: u64, to: u64) -> std::path::PathBuf {
    let all = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("read");
    let ts = |l: &str| {
        serde_json::from_str::<serde_json::Value>(l).expect("json")["ts_ms"]
            .as_u64()
            .expect("ts")
    };
    let t0 = all.lines().map(ts).min().expect("records");
    let part: String = (all.lines())
        .filter(|l| (t0 + from * 60_000..t0 + to * 60_000).contains(&ts(l)))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = dir.join(format!("minutes-{from}-{to}.jsonl"));
    std::fs::write(&path, part).expect("write");
    path
}

/// The dashboard's panels: (title, SQL) from queries.sql, checked equal
/// to the dashboard's own.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root("deploy/grafana/queries.sql")).expect("queries.sql");
    let mut panels: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("-- panel: ") {
            panels.push((title.to_owned(), String::new()));
        } else if let Some((_, sql)) = panels.last_mut() {
            sql.push_str(line);
            sql.push('\n');
        }
    }
    for (_, sql) in &mut panels {
        *sql = sql.trim().to_owned();
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root("deploy/grafana/edgeflow-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let in_json: Vec<(String, String)> = (json["panels"].as_array().expect("panels").iter())
        .map(|p| {
            assert_eq!(p["datasource"]["uid"], "edgeflow-postgres");
            let sql = p["targets"][0]["rawSql"].as_str().expect("rawSql");
            (
                p["title"].as_str().expect("title").to_owned(),
                sql.to_owned(),
            )
        })
        .collect();
    assert_eq!(in_json, panels, "the dashboard's SQL is queries.sql's");
    panels
}

/// `sql` with Grafana's `${schema}` and `$__timeFilter(col)` in SQL.
fn as_grafana_sends(sql: &str, schema: &str) -> String {
    let mut out = sql.replace("${schema}", schema);
    while let Some(at) = out.find("$__timeFilter(") {
        let open = at + "$__timeFilter(".len();
        let close = open + out[open..].find(')').expect("closed");
        let col = out[open..close].to_owned();
        out.replace_range(
            at..=close,
            &format!("{col} BETWEEN '2026-01-01T00:00:00Z' AND '2026-01-02T00:00:00Z'"),
        );
    }
    out
}

#[test]
fn the_tables_equal_the_files_sink_and_the_dashboard_reads_them() {
    let Some((url, _, _hold)) = server("postgres::tables", false) else {
        return;
    };
    let _deadline = crate::support::deadline();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let certs = make_certs(dir, &["localhost".into()]).expect("certs");
    let schema = schema_name();
    let text = topology_text(free_port(), &url, &schema, "max_rows = 700\n");
    let node = start_node(dir, text);
    send(
        node.addr,
        &certs.ca,
        &data("sumo-public/telemetry.jsonl"),
        None,
    );
    let status = node.sinks[0].1.clone();
    node.shutdown().expect("stop");
    let s = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!((s(&status.dead_lettered), s(&status.backlog)), (0, 0));
    let db = Db::connect(&url);
    let rows = assert_tables_are_the_files(&db, &schema, &dir.join("out"));
    assert!(rows > 1_300, "{rows} rows");
    assert!(s(&status.acknowledged) >= rows as u64);
    // The reference tables, geometries included; every zone row has its
    // zone (named zones at start, H3 cells as rows named them).
    let count = |sql: &str| db.count(&sql.replace("@", &schema));
    assert_eq!(
        count("SELECT count(*) FROM @.segments WHERE ST_NPoints(geom) >= 2"),
        517
    );
    assert_eq!(
        count("SELECT count(*) FROM @.chargers WHERE ST_SRID(geom) = 4326"),
        4
    );
    assert_eq!(
        count("SELECT count(*) FROM @.zones WHERE zone_type = 'zone' AND ST_Area(geom) > 0"),
        5
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM @.zone_stats s LEFT JOIN @.zones z \
             ON z.zone_type = s.zone_type AND z.id = s.zone_id WHERE z.geom IS NULL"
        ),
        0
    );
    // A cell's outline holds the segment midpoints and chargers that
    // made it a zone.
    assert_eq!(
        count(
            "SELECT count(*) FROM @.zones z WHERE zone_type = 'h3' AND NOT EXISTS \
             (SELECT 1 FROM @.segments s WHERE ST_Contains(z.geom, ST_LineInterpolatePoint(s.geom, 0.5))) \
             AND NOT EXISTS (SELECT 1 FROM @.chargers c WHERE ST_Contains(z.geom, c.geom))"
        ),
        0
    );
    // Every panel's query runs and returns rows.
    for (title, sql) in dashboard_queries() {
        let n = db.query(&as_grafana_sends(&sql, &schema)).len();
        assert!(n > 0, "panel {title:?}: no rows");
    }
    db.drop_schema(&schema);
}

/// `text` as `dir/edge.toml`, started in this process (one worker).
fn start_node(dir: &Path, text: String) -> edgeflow::node::EdgeHandle {
    std::fs::write(dir.join("edge.toml"), text).expect("write");
    let topo = Topology::load(&dir.join("edge.toml")).expect("valid");
    edgeflow::node::start(topo, 1).expect("start")
}

/// `edgeflow edge` as a child process, listening.
fn spawn(dir: &Path) -> Proc {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edgeflow"));
    cmd.arg("edge")
        .arg("--topology")
        .arg(dir.join("edge.toml"))
        .args(["--workers", "1"]);
    let mut p = Proc::spawn("edge", cmd);
    p.wait_until(Duration::from_secs(30), "listening", |_, err| {
        err.contains("listening on")
    });
    p
}

fn restart_database(cmd: &str) {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("the restart command runs");
    assert!(
        out.status.success(),
        "{cmd}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_database_restart_and_sigkills_of_the_node_lose_nothing() {
    let Some((url, restart, _hold)) = server("postgres::restarts", true) else {
        return;
    };
    let _deadline = crate::support::deadline();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let certs = make_certs(dir, &["localhost".into(), "127.0.0.1".into()]).expect("certs");
    let schema = schema_name();
    let port = free_port();
    // Small batches, two in flight: some are in flight at each fault.
    let extra = "max_rows = 50\nmax_in_flight = 2\ntimeout = \"5s\"\n";
    std::fs::write(
        dir.join("edge.toml"),
        topology_text(port, &url, &schema, extra),
    )
    .expect("write");
    let topo = Topology::load(&dir.join("edge.toml")).expect("valid");
    let input = data("sumo-public/telemetry.jsonl");
    let mut node = spawn(dir);
    let sender = {
        let (ca, input) = (certs.ca.clone(), input.clone());
        let addr = format!("127.0.0.1:{port}").parse().expect("addr");
        std::thread::spawn(move || send(addr, &ca, &input, Some(40.0)))
    };
    let mut said = String::new();
    // The first restart meets a batch in its transaction: the test holds
    // a lock on the congestion table until the sink waits for it.
    std::thread::sleep(Duration::from_secs(3));
    let locker = Db::connect(&url);
    locker.wait_for(&format!(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = '{schema}' AND c.relname = 'congestion'"
    ));
    locker.batch(&format!(
        "BEGIN; LOCK TABLE {schema}.congestion IN EXCLUSIVE MODE"
    ));
    locker.wait_for(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'edgeflow-karhula-edge-city-db' \
         AND wait_event_type = 'Lock'",
    );
    restart_database(&restart);
    drop(locker);
    std::thread::sleep(Duration::from_secs(3));
    said += &node.stderr();
    node.kill();
    node = spawn(dir);
    std::thread::sleep(Duration::from_secs(2));
    restart_database(&restart);
    said += &node.stderr();
    node.kill();
    node = spawn(dir);
    sender.join().expect("sender");
    node.terminate();
    let (status, _, stderr) = node.finish(Duration::from_secs(60));
    assert!(status.success(), "{status}: {stderr}");
    said += &stderr;
    let db = Db::connect(&url);
    assert_tables_are_the_files(&db, &schema, &dir.join("out"));
    // And as a replay of the recording computes.
    let reference = std::sync::Arc::new(topo.reference.clone());
    let bytes = std::fs::read(&input).expect("read");
    let options = edgeflow::runtime::RunOptions::new(1);
    let (congestion, charging, _) = crate::support::replay(bytes, &reference, topo.time, options);
    assert_table_is(
        &db,
        &schema,
        "congestion",
        CONGESTION_HEADER,
        &congestion,
        "the replay",
    );
    assert_table_is(
        &db,
        &schema,
        "charging",
        CHARGING_HEADER,
        &charging,
        "the replay",
    );
    eprintln!(
        "postgres restart test: the nodes said: {}",
        (said.lines())
            .filter(|l| l.contains("postgres sink"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert!(
        said.contains("holding rows and retrying with backoff"),
        "the restart failed a batch: {said}"
    );
    db.drop_schema(&schema);
}

#[test]
fn migrations_apply_once_even_for_nodes_starting_together() {
    let Some((url, _, _hold)) = server("postgres::migrations", false) else {
        return;
    };
    let _deadline = crate::support::deadline();
    let tmp = tempfile::tempdir().expect("tempdir");
    let schema = schema_name();
    let input = minutes(tmp.path(), 0, 3);
    // Two nodes on one new schema, started together: one migrates, the
    // other waits for it (advisory lock) and finds the schema done.
    let nodes: Vec<_> = (0..2)
        .map(|i| {
            let dir = tmp.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            let certs = make_certs(&dir, &["localhost".into()]).expect("certs");
            let text = topology_text(free_port(), &url, &schema, "");
            std::fs::write(dir.join("edge.toml"), text).expect("write");
            (dir, certs)
        })
        .collect();
    let runs: Vec<_> = (nodes.iter())
        .map(|(dir, certs)| {
            let topo = Topology::load(&dir.join("edge.toml")).expect("valid");
            let (ca, input) = (certs.ca.clone(), input.clone());
            std::thread::spawn(move || {
                let node = edgeflow::node::start(topo, 1).expect("start");
                send(node.addr, &ca, &input, None);
                node.shutdown().expect("stop");
            })
        })
        .collect();
    for r in runs {
        r.join().expect("a node ran");
    }
    let db = Db::connect(&url);
    let applied = |db: &Db| {
        db.texts(&format!(
            "SELECT version || ' ' || applied_at FROM {schema}.schema_migrations ORDER BY version"
        ))
    };
    let first = applied(&db);
    assert_eq!(
        first.len(),
        edgeflow::sink::postgres::MIGRATIONS.len(),
        "{first:?}"
    );
    // Both wrote the same rows: the tables equal either node's files.
    assert_tables_are_the_files(&db, &schema, &nodes[0].0.join("out"));
    // The first node again, with more of the recording: nothing applied,
    // its new windows written.
    let (dir, certs) = &nodes[0];
    let topo = Topology::load(&dir.join("edge.toml")).expect("valid");
    let node = edgeflow::node::start(topo, 1).expect("start");
    send(node.addr, &certs.ca, &minutes(tmp.path(), 3, 6), None);
    node.shutdown().expect("stop");
    assert_eq!(applied(&db), first, "no migration applied again");
    let rows = assert_tables_are_the_files(&db, &schema, &dir.join("out"));
    assert!(rows > 500, "{rows} rows");
    db.drop_schema(&schema);
}

#[test]
fn a_schema_an_administrator_applied_is_used_and_a_refused_row_is_dead_lettered_alone() {
    let Some((url, _, _hold)) = server("postgres::refused", false) else {
        return;
    };
    let _deadline = crate::support::deadline();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let certs = make_certs(dir, &["localhost".into()]).expect("certs");
    let schema = schema_name();
    let input = minutes(dir, 0, 3);
    // deploy/postgres/schema.sql's text, in the test's schema; and a
    // constraint refusing one segment's rows (SQLSTATE 23514).
    let db = Db::connect(&url);
    db.batch(&edgeflow::sink::postgres::schema_sql(&schema));
    let migrated = db.texts(&format!(
        "SELECT version || ' ' || applied_at FROM {schema}.schema_migrations"
    ));
    let text = std::fs::read_to_string(&input).expect("read");
    let refused = (text.lines())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["segment_id"].as_str().map(str::to_owned))
        .expect("a segment");
    db.batch(&format!(
        "ALTER TABLE {schema}.congestion ADD CONSTRAINT not_this_one CHECK (segment_id <> '{refused}')"
    ));
    let text = topology_text(free_port(), &url, &schema, "max_rows = 100\n");
    let node = start_node(dir, text);
    send(node.addr, &certs.ca, &input, None);
    let status = node.sinks[0].1.clone();
    node.shutdown().expect("stop");
    let files = std::fs::read_to_string(dir.join("out/congestion.csv")).expect("files");
    let (kept, theirs): (Vec<&str>, Vec<&str>) =
        (files.lines()).partition(|l| !l.starts_with(&format!("{refused},")));
    assert!(!theirs.is_empty(), "{refused} has rows");
    assert_eq!(
        status.dead_lettered.load(Ordering::Relaxed),
        theirs.len() as u64,
        "only the refused segment's rows are dead-lettered"
    );
    assert_table_is(
        &db,
        &schema,
        "congestion",
        CONGESTION_HEADER,
        &kept.join("\n"),
        "the files but one segment",
    );
    let out = dir.join("out");
    let charging = std::fs::read_to_string(out.join("charging.csv")).expect("files");
    assert_table_is(
        &db,
        &schema,
        "charging",
        CHARGING_HEADER,
        &charging,
        "charging.csv",
    );
    let applied = db.texts(&format!(
        "SELECT version || ' ' || applied_at FROM {schema}.schema_migrations"
    ));
    assert_eq!(applied, migrated, "the node applied nothing");
    db.drop_schema(&schema);
}

#[test]
fn a_zone_removed_while_running_takes_its_rows_from_the_table() {
    let Some((url, _, _hold)) = server("postgres::retraction", false) else {
        return;
    };
    let _deadline = crate::support::deadline();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let certs = make_certs(dir, &["localhost".into()]).expect("certs");
    let schema = schema_name();
    let zones_v1 =
        std::fs::read_to_string(root("topologies/karhula/zones.geojson")).expect("zones");
    std::fs::write(dir.join("zones.geojson"), &zones_v1).expect("write zones");
    let text = topology_text(free_port(), &url, &schema, "").replace(
        &format!("\"{}\"", root("topologies/karhula/zones.geojson").display()),
        "\"zones.geojson\"",
    );
    let node = start_node(dir, text);
    let db = Db::connect(&url);
    // The first 5 minutes: the centre's rows reach the table.
    send(node.addr, &certs.ca, &minutes(dir, 0, 5), None);
    db.wait_for(&format!(
        "SELECT count(*) FROM {schema}.zone_stats WHERE zone_id = 'karhula-centre'"
    ));
    // The centre goes (the file replaced as an operator would).
    let mut doc: serde_json::Value = serde_json::from_str(&zones_v1).expect("json");
    (doc["features"].as_array_mut().expect("features"))
        .retain(|f| f["properties"]["id"] != "karhula-centre");
    std::fs::write(dir.join("zones.new"), doc.to_string()).expect("write");
    std::fs::rename(dir.join("zones.new"), dir.join("zones.geojson")).expect("rename");
    let reloads = node.zone_reloads.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while reloads.load(Ordering::Relaxed) == 0 {
        assert!(std::time::Instant::now() < deadline, "no zone reload");
        std::thread::sleep(Duration::from_millis(20));
    }
    send(node.addr, &certs.ca, &minutes(dir, 5, 1_000), None);
    let status = node.sinks[0].1.clone();
    node.shutdown().expect("stop");
    let s = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!((s(&status.dead_lettered), s(&status.backlog)), (0, 0));
    let out = std::fs::read_to_string(dir.join("out/zones.csv")).expect("zones.csv");
    assert!(!out.contains("karhula-centre") && out.contains("\nkarhula-nw,"));
    // The centre's rows were retracted, and deleted: the tables are the
    // files sink's.
    assert_tables_are_the_files(&db, &schema, &dir.join("out"));
    db.drop_schema(&schema);
}

#[test]
fn the_sink_speaks_tls_when_the_url_requires_it_and_checks_the_server() {
    let Some((url, _, _hold)) = server("postgres::tls", false) else {
        return;
    };
    let Some(pg_ca) = std::env::var_os("EDGEFLOW_PG_CA") else {
        let why =
            "no CA of the server's TLS certificate (EDGEFLOW_PG_CA unset; scripts/test sets it)";
        assert!(std::env::var_os("EDGEFLOW_REQUIRE_PG").is_none(), "{why}");
        skip("postgres::tls", why);
        return;
    };
    let _deadline = crate::support::deadline();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let certs = make_certs(dir, &["localhost".into()]).expect("certs");
    let (schema, other) = (schema_name(), schema_name());
    let tls_url = format!("{url}?sslmode=require");
    // A second sink trusting the wrong CA (the node's own): refused.
    let text = topology_text(
        free_port(),
        &tls_url,
        &schema,
        &format!(
            "ca = \"{}\"\n[[sink]]\ntype = \"postgres\"\nname = \"wrong-ca\"\nurl = \"{tls_url}\"\n\
             schema = \"{other}\"\nca = \"{}\"\n",
            Path::new(&pg_ca).display(),
            certs.ca.display()
        ),
    );
    let node = start_node(dir, text);
    let db = Db::connect(&url);
    send(node.addr, &certs.ca, &minutes(dir, 0, 3), None);
    db.wait_for(&format!("SELECT count(*) FROM {schema}.congestion"));
    // The sink's connections are TLS (kept between batches).
    let app = "edgeflow-karhula-edge-city-db";
    assert!(
        db.count(&format!(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = '{app}' AND s.ssl"
        )) > 0,
        "no TLS connection of {app}"
    );
    let (good, wrong) = (node.sinks[0].1.clone(), node.sinks[1].1.clone());
    node.shutdown().expect("stop");
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert!(
        n(&good.acknowledged) > 0 && n(&good.backlog) == 0,
        "{good:?}"
    );
    assert_eq!(n(&wrong.acknowledged), 0, "{wrong:?}");
    assert!(!wrong.connected.load(Ordering::Relaxed));
    assert_tables_are_the_files(&db, &schema, &dir.join("out"));
    db.drop_schema(&schema);
}
