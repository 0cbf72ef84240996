//! The postgres sink's pure parts: the schema file, the tables against the
//! CSV headers, rows typed for their columns, geometries, settings.
//! tests/it/postgres.rs runs the sink against a real PostgreSQL.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::sql::{line_wkt, multipolygon_wkt};
use super::*;
use crate::aggregate::{AggValue, Charging, Congestion, ZoneAgg};
use crate::output::header;
use crate::reference::{Charger, Road};

/// Set to rewrite deploy/postgres/schema.sql from [`schema_sql`].
const BLESS: &str = "EDGEFLOW_BLESS_SCHEMA";

#[test]
fn the_schema_file_is_the_generated_schema() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/postgres/schema.sql");
    let want = schema_sql("edgeflow");
    if std::env::var_os(BLESS).is_some() {
        std::fs::write(&path, &want).expect("write the schema file");
    }
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "{} differs from schema_sql(\"edgeflow\"): run `{BLESS}=1 cargo test --lib sink::postgres`",
        path.display()
    );
}

#[test]
fn every_table_holds_its_csv_fields_in_order() {
    for t in &TABLES {
        let csv: Vec<String> = (header(t.kind).split(','))
            .map(|f| f.strip_suffix("_ms").unwrap_or(f).to_owned())
            .collect();
        let cols: Vec<&str> = t.cols.iter().map(|c| c.0).collect();
        assert_eq!(csv, cols, "{}", t.name);
        let sql = schema_sql("x");
        let at = sql
            .find(&format!("CREATE TABLE IF NOT EXISTS \"x\".{} (", t.name))
            .expect("created");
        let body = &sql[at..at + sql[at..].find(");").expect("closed")];
        for c in cols.iter().chain(&["status", "ordering"]) {
            assert!(body.contains(&format!("\n    {c} ")), "{}.{c}", t.name);
        }
        let pk = &body[body.find("PRIMARY KEY (").expect("a key") + 13..];
        let mut pk: Vec<&str> = pk[..pk.find(')').expect("closed")].split(", ").collect();
        let mut key: Vec<&str> = t.key.split(", ").collect();
        assert_eq!(
            pk[0], "window_start",
            "{}: keys lead with the window",
            t.name
        );
        pk.sort_unstable();
        key.sort_unstable();
        assert_eq!(pk, key, "{}", t.name);
        let upsert = upsert_sql("x", t);
        assert!(upsert.contains(&format!("ON CONFLICT ({}) DO UPDATE", t.key)));
        assert!(upsert.ends_with("WHERE t.ordering < EXCLUDED.ordering"));
        let delete = delete_sql("x", t);
        for k in &key {
            assert!(delete.contains(&format!("t.{k} = d.{k}")), "{delete}");
        }
        assert!(delete.ends_with("AND t.ordering < d.ordering"), "{delete}");
    }
}

#[test]
fn the_schema_is_versioned_and_in_its_schema() {
    let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(versions, sorted, "versions ascend, each once");
    let sql = schema_sql("other");
    assert!(!sql.contains("@s."));
    assert!(
        !sql.contains("edgeflow\"."),
        "every table in the schema given"
    );
    assert!(sql.contains("CREATE EXTENSION IF NOT EXISTS postgis"));
    assert!(sql.contains("INSERT INTO \"other\".schema_migrations (version) VALUES (1)"));
}

fn reference() -> Reference {
    let road = Road {
        id: "r,1".into(),
        free_flow_mps: 13.89,
        lanes: 2,
        name: Some("Main".into()),
        length_m: None,
        line: vec![[26.9, 60.5], [26.91, 60.51]],
    };
    let charger = Charger {
        id: "c1".into(),
        connectors: 2,
        max_kw: 50.0,
        position: [26.9, 60.5],
        ..Default::default()
    };
    Reference::new(vec![road], vec![charger])
}

fn row(kind: Kind, key: u32, value: AggValue, watermark: u64) -> Row {
    Row {
        key: AggKey {
            kind,
            key,
            window: 120_000,
        },
        value,
        status: Status::Final,
        watermark,
        digest: 0,
    }
}

#[test]
fn rows_are_typed_for_their_columns_as_the_csv_prints_them() {
    let r = reference();
    let c = Congestion {
        samples: 3,
        vehicles: 2,
        speed_sum: 30_000_000,
    };
    let ready = prepare_row(
        &r,
        60_000,
        4,
        &row(Kind::Congestion, 0, AggValue::Congestion(c), 190_000),
    )
    .expect("a row");
    assert_eq!(
        (ready.place, ready.status, ready.ordering),
        (4, "final", 190_000)
    );
    let t = |s: &str| Cell::Text(Some(s.into()));
    let at = |ms: u64| Cell::Time(UNIX_EPOCH + Duration::from_millis(ms));
    assert_eq!(
        ready.cells,
        [
            t("r,1"),
            at(120_000),
            at(180_000),
            Cell::Int(3),
            Cell::Int(2),
            t("10.0000"),
            t("13.89"),
            t("0.7199"),
            t("slow"),
        ]
    );
    let charging = AggValue::Charging(Charging {
        energy_wh: 1500,
        mean_power_mw: 22_500_000,
        occupied: 1,
        faulted: 0,
    });
    let ready =
        prepare_row(&r, 60_000, 0, &row(Kind::Charging, 0, charging.clone(), 1)).expect("a row");
    assert_eq!(ready.cells[4], t("22.500"));
    assert_eq!(ready.cells[7], t("0.5000"));
    // Keys outside the reference data, provisional rows: never written;
    // a retraction is a row to delete.
    let err = prepare_row(&r, 60_000, 0, &row(Kind::Charging, 7, charging.clone(), 1))
        .expect_err("unknown");
    assert!(err.contains("not in the reference data"), "{err}");
    let mut early = row(Kind::Charging, 0, charging.clone(), 1);
    early.status = Status::Provisional;
    assert!(prepare_row(&r, 60_000, 0, &early).is_err());
    let mut gone = row(Kind::Charging, 0, charging, 1);
    gone.status = Status::Retraction;
    let gone = prepare_row(&r, 60_000, 0, &gone).expect("a row to delete");
    assert_eq!(gone.status, RETRACTION);
    let keys = key_columns(table(Kind::Charging), std::slice::from_ref(&gone));
    assert_eq!(keys.len(), 3, "charger_id, window_start, ordering");
    // A zone without samples: its mean_speed_ratio is NULL.
    let zone = r.registry.intern("north", ZoneKind::Named);
    let z = AggValue::Zone(Box::new(ZoneAgg {
        chargers: 1,
        ..Default::default()
    }));
    let ready = prepare_row(&r, 60_000, 0, &row(Kind::Zone, zone, z, 1)).expect("a row");
    assert_eq!(ready.cells[..2], [t("north"), t("zone")]);
    assert_eq!(ready.cells[7], Cell::Text(None));
}

#[test]
fn a_batch_is_sorted_by_key_and_keeps_the_newest_of_a_key() {
    let r = reference();
    let c = |samples| {
        AggValue::Congestion(Congestion {
            samples,
            vehicles: 1,
            speed_sum: 1,
        })
    };
    let z = AggValue::Zone(Box::default());
    let zone = r.registry.intern("8a1f", ZoneKind::H3);
    let rows = [
        prepare_row(&r, 60_000, 0, &row(Kind::Zone, zone, z, 5)),
        prepare_row(&r, 60_000, 1, &row(Kind::Congestion, 0, c(1), 5)),
        prepare_row(&r, 60_000, 2, &row(Kind::Congestion, 0, c(2), 9)),
    ];
    let rows = ordered(rows.into_iter().map(|r| r.expect("a row")).collect());
    let places: Vec<usize> = rows.iter().map(|r| r.place).collect();
    assert_eq!(places, [2, 0]);
    let cols = columns(table(Kind::Congestion), &rows[..1]);
    assert_eq!(cols.len(), table(Kind::Congestion).cols.len() + 2);
    assert!(matches!(&cols[3], Column::Int(v) if v == &[2]));
    assert!(matches!(cols.last(), Some(Column::Int(v)) if v == &[9]));
}

#[test]
fn geometries_are_well_known_text() {
    assert_eq!(line_wkt(&[[1.0, 2.0]]), None);
    assert_eq!(
        line_wkt(&[[26.5, 60.25], [26.75, 60.5]]).as_deref(),
        Some("LINESTRING(26.5 60.25,26.75 60.5)")
    );
    // An open ring is closed; a ring of two corners is left out.
    let square = vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]];
    let sliver = vec![[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]];
    assert_eq!(
        multipolygon_wkt(&[vec![square.clone(), sliver.clone()], vec![sliver.clone()]]).as_deref(),
        Some("MULTIPOLYGON(((0 0,1 0,1 1,0 1,0 0)))")
    );
    assert_eq!(multipolygon_wkt(&[vec![sliver]]), None);
    let cell = crate::geo::zones::h3_cell([26.9, 60.5], 8).expect("a cell");
    let wkt = cell_wkt(&cell).expect("its outline");
    assert!(wkt.starts_with("MULTIPOLYGON(((26.8"), "{wkt}");
    assert_eq!(
        wkt.matches(',').count(),
        6,
        "six corners and the first again: {wkt}"
    );
    assert_eq!(cell_wkt("not a cell"), None);
}

fn sink(url: &str) -> PostgresSink {
    PostgresSink {
        name: "pg".into(),
        url: url.into(),
        password: Some("secret".into()),
        ca: None,
        schema: "edgeflow".into(),
        kinds: Kind::ALL.to_vec(),
        max_rows: 100,
        max_in_flight: 3,
        timeout: Duration::from_secs(5),
        max_hold: Duration::from_secs(60),
        max_backlog: crate::topology::DEFAULT_SINK_MAX_BACKLOG,
    }
}

fn ctx() -> SinkContext {
    SinkContext {
        node: "n".into(),
        reference: Arc::new(reference()),
        window_ms: 60_000,
        hold_until: Arc::new(AtomicU64::new(0)),
        input_watermark: Arc::new(AtomicU64::new(0)),
        min_vehicles: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1)),
        log_dir: std::env::temp_dir(),
    }
}

#[test]
fn settings_follow_the_section_and_bad_urls_are_refused() {
    let p =
        Postgres::new(sink("postgres://edgeflow@127.0.0.1:5432/edgeflow"), ctx()).expect("valid");
    let s = p.settings();
    assert_eq!((s.max_rows, s.max_in_flight), (100, 3));
    assert!(!s.latest_only && s.exclusive && !s.provisional && s.ledger.is_none() && s.retractions);
    assert_eq!(p.what(), "postgres sink pg");
    // TLS: the web's roots, and a CA file that must be readable.
    assert!(Postgres::new(sink("postgres://h/db?sslmode=require"), ctx()).is_ok());
    let mut tls = sink("postgres://h/db?sslmode=require");
    tls.ca = Some("/nonexistent/ca.pem".into());
    let err = Postgres::new(tls, ctx()).err().expect("refused");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    let err = Postgres::new(sink("postgres://h:notaport/db"), ctx())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not a PostgreSQL URL"), "{err}");
    assert!(
        err.to_string().contains("option `port`"),
        "the cause said: {err}"
    );
}
