//! `[[sink]] type = "postgres"`: a node's final rows and corrections
//! upserted into PostgreSQL/PostGIS tables (docs/POSTGRES.md), for
//! dashboards (Grafana) and GIS (QGIS).
//!
//! Tables, in the sink's `schema`: `congestion`, `charging` and
//! `zone_stats`, one row per (id, window) holding the fields of the CSV
//! files sink ([`crate::aggregate::fields`], TELEMETRY.md §4: the same
//! numbers as printed), the row's `status` (`final` or `correction`) and
//! its `ordering` (the emission watermark); and the reference tables
//! `segments`, `chargers` and `zones` with their PostGIS geometries
//! (EPSG:4326), written at start (H3 cells as rows name them).
//!
//! A request is a batch of rows (at most `max_rows`), upserted in one
//! transaction with one multi-row statement per kind (`INSERT ... SELECT
//! ... FROM (SELECT unnest($1::text[]) ...) ON CONFLICT (id, window_start)
//! DO UPDATE ... WHERE t.ordering < EXCLUDED.ordering`, one array per
//! column): a row never replaces a newer one, and a row recomputed after a
//! restart (same ordering) changes nothing, so the sink needs no ledger.
//! The statements are prepared once per connection and a batch's
//! statements go in one round trip (pipelined, `BEGIN` to `COMMIT`). Rows
//! A retraction (a zone removed from the reference data: its rows go)
//! deletes the row unless a newer one is there (`ordering`); one entity
//! is in one batch at a time, so an older row never comes back after its
//! retraction. Rows are sorted by window and key in a batch: two batches in flight lock
//! rows in the same order and never deadlock. Connections: at most one
//! per batch in flight, kept between batches, dropped after a failure (the
//! next batch connects anew).
//!
//! The schema is versioned ([`MIGRATIONS`]): the first request of a sink
//! applies what `schema_migrations` lacks, in one transaction under an
//! advisory lock (two nodes starting at once take turns). Migration 1
//! creates the `postgis` extension unless it exists (see docs/POSTGRES.md
//! for the rights this takes); [`schema_sql`] is the whole schema as one
//! script for an administrator (deploy/postgres/schema.sql).
//!
//! Outcomes: a refused or lost connection, a timeout (`timeout`), a server
//! shutting down or out of resources, a deadlock: retried after a backoff
//! (the rows wait). A data error (SQLSTATE class 22 or 23): the batch is
//! split until the rows at fault are found; those are dead-lettered with
//! the server's message, the rest written.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashSet;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use super::driver::{Add, Outcome, Row, Settings, Target};
use super::SinkContext;
use crate::aggregate::{fields, AggKey, Field, Kind};
use crate::dataflow::emit::Status;
use crate::geo::zones::ZoneKind;
use crate::reference::Reference;
use crate::topology::PostgresSink;

mod sql;
#[cfg(test)]
mod tests;

use sql::{cell_wkt, delete_sql, migrate, table, upsert_sql, write_reference, Table, Ty, TABLES};
pub use sql::{schema_sql, MIGRATIONS};

/// One value of a row, typed for its column.
#[derive(Clone, Debug, PartialEq)]
enum Cell {
    Text(Option<String>),
    Int(i64),
    Time(SystemTime),
}

/// A row ready for its table.
#[derive(Clone, Debug)]
struct Ready {
    /// Its place in the request (the driver's index).
    place: usize,
    key: AggKey,
    /// `final` or `correction`; `retraction` for a row to delete.
    status: &'static str,
    ordering: i64,
    cells: Vec<Cell>,
}

/// A batch of rows, upserted in one transaction.
#[derive(Default)]
pub struct Batch {
    rows: Vec<Ready>,
}

/// `row` typed for its table: an error says why it can never be written.
fn prepare_row(
    reference: &Reference,
    window_ms: u64,
    place: usize,
    row: &Row,
) -> Result<Ready, String> {
    let k = row.key;
    let what = || {
        format!(
            "{} row of key {} window {}",
            k.kind.as_str(),
            k.key,
            k.window
        )
    };
    let status = match row.status {
        Status::Final => "final",
        Status::Correction => "correction",
        Status::Retraction => RETRACTION,
        Status::Provisional => return Err(format!("{}: provisional rows are not written", what())),
    };
    let t = table(k.kind);
    let fields = fields(reference, window_ms, &k, &row.value)
        .ok_or_else(|| format!("{}: not in the reference data", what()))?;
    if fields.len() != t.cols.len() {
        return Err(format!(
            "{}: {} fields for {} columns",
            what(),
            fields.len(),
            t.cols.len()
        ));
    }
    let mut cells = Vec::with_capacity(fields.len());
    for ((name, field), (_, ty)) in fields.into_iter().zip(t.cols) {
        let int = || -> Result<i64, String> {
            (field.text().parse::<i64>())
                .map_err(|_| format!("{}: {name} = {:?} is no integer", what(), field.text()))
        };
        cells.push(match ty {
            Ty::Text | Ty::Dec => Cell::Text(match field {
                Field::Empty => None,
                Field::Text(s) | Field::Number(s) => Some(s),
            }),
            Ty::Int => Cell::Int(int()?),
            Ty::Time => Cell::Time(UNIX_EPOCH + Duration::from_millis(int()?.max(0) as u64)),
        });
    }
    Ok(Ready {
        place,
        key: k,
        status,
        ordering: i64::try_from(row.watermark).unwrap_or(i64::MAX),
        cells,
    })
}

/// The status of a row to delete.
const RETRACTION: &str = "retraction";

/// `rows` sorted by kind, window and key (one lock order for every batch:
/// two in flight never deadlock; the order of the tables' keys), the
/// newest of a key kept.
fn ordered(mut rows: Vec<Ready>) -> Vec<Ready> {
    rows.sort_unstable_by_key(|r| {
        let k = r.key;
        (k.kind, k.window, k.key, std::cmp::Reverse(r.ordering))
    });
    rows.dedup_by_key(|r| r.key);
    rows
}

/// A column of a batch, one array parameter (borrowing the rows).
enum Column<'a> {
    Text(Vec<Option<&'a str>>),
    Int(Vec<i64>),
    Time(Vec<SystemTime>),
}

impl Column<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Column::Text(v) => v.is_empty(),
            Column::Int(v) => v.is_empty(),
            Column::Time(v) => v.is_empty(),
        }
    }

    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Text(v) => v,
            Column::Int(v) => v,
            Column::Time(v) => v,
        }
    }
}

/// The columns of `rows` (all of `t`'s kind), with status and ordering.
fn columns<'a>(t: &Table, rows: &'a [Ready]) -> Vec<Column<'a>> {
    let mut out: Vec<Column> = (t.cols.iter())
        .map(|(_, ty)| match ty {
            Ty::Text | Ty::Dec => Column::Text(Vec::with_capacity(rows.len())),
            Ty::Int => Column::Int(Vec::with_capacity(rows.len())),
            Ty::Time => Column::Time(Vec::with_capacity(rows.len())),
        })
        .collect();
    for r in rows {
        for (col, cell) in out.iter_mut().zip(&r.cells) {
            match (col, cell) {
                (Column::Text(v), Cell::Text(x)) => v.push(x.as_deref()),
                (Column::Int(v), Cell::Int(x)) => v.push(*x),
                (Column::Time(v), Cell::Time(x)) => v.push(*x),
                _ => {} // `prepare_row` typed every cell for its column
            }
        }
    }
    out.push(Column::Text(rows.iter().map(|r| Some(r.status)).collect()));
    out.push(Column::Int(rows.iter().map(|r| r.ordering).collect()));
    out
}

/// The key columns of `rows` (all of `t`'s kind, to delete), with their
/// orderings.
fn key_columns<'a>(t: &Table, rows: &'a [Ready]) -> Vec<Column<'a>> {
    let mut out = Vec::new();
    for key in t.key.split(", ") {
        let Some(i) = t.cols.iter().position(|c| c.0 == key) else {
            continue;
        };
        out.push(match t.cols[i].1 {
            Ty::Text | Ty::Dec => Column::Text(
                (rows.iter())
                    .map(|r| match r.cells.get(i) {
                        Some(Cell::Text(x)) => x.as_deref(),
                        _ => None,
                    })
                    .collect(),
            ),
            Ty::Int => Column::Int(
                (rows.iter())
                    .map(|r| match r.cells.get(i) {
                        Some(Cell::Int(x)) => *x,
                        _ => 0,
                    })
                    .collect(),
            ),
            Ty::Time => Column::Time(
                (rows.iter())
                    .map(|r| match r.cells.get(i) {
                        Some(Cell::Time(x)) => *x,
                        _ => UNIX_EPOCH,
                    })
                    .collect(),
            ),
        });
    }
    out.push(Column::Int(rows.iter().map(|r| r.ordering).collect()));
    out
}

/// A connection, its task ended when dropped unless it was put back clean.
struct Conn {
    client: Client,
    task: tokio::task::JoinHandle<()>,
    clean: bool,
    /// The H3 cells' insert, the upserts and the deletes (by table),
    /// prepared once.
    statements: Option<[Statement; 7]>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.clean {
            self.task.abort();
        }
    }
}

/// Why a request failed.
enum Failure {
    /// Connecting, migrating or writing the reference tables.
    Setup(String),
    /// The batch.
    Batch(tokio_postgres::Error),
}

/// The server's words for `e`, with its SQLSTATE.
fn said(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let detail = db.detail().map(|d| format!(" ({d})")).unwrap_or_default();
            format!(
                "{}: {}{detail} [SQLSTATE {}]",
                db.severity(),
                db.message(),
                db.code().code()
            )
        }
        None => {
            // Its Display leaves out the cause ("error connecting to server").
            let mut said = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                said = format!("{said}: {c}");
                cause = c.source();
            }
            said
        }
    }
}

/// Whether `e` is the batch's data at fault (SQLSTATE class 22 or 23).
fn data_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

/// Whether `e` says the tables are gone (dropped under the sink): the
/// migrations run again.
fn tables_gone(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| ["42P01", "3F000", "42703"].contains(&c.code()))
}

/// What every request of a sink shares: the pool and what was set up.
struct Shared {
    what: String,
    config: tokio_postgres::Config,
    /// TLS (`sslmode=require`), the server's certificate verified.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    schema: String,
    reference: Arc<Reference>,
    /// The upserts, by table.
    upserts: [String; 3],
    /// The deletes of retracted rows, by table.
    deletes: [String; 3],
    cells_sql: String,
    idle: std::sync::Mutex<Vec<Conn>>,
    /// Whether the migrations ran and the reference tables were written.
    ready: tokio::sync::Mutex<bool>,
    /// H3 cells written to `zones`.
    cells: std::sync::Mutex<FxHashSet<String>>,
}

impl Shared {
    fn say(&self, what: &str) {
        tracing::warn!("{}: {what}", self.what);
    }

    /// An idle connection, or a new one.
    async fn checkout(&self) -> Result<Conn, Failure> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(mut c) = idle.filter(|c| !c.client.is_closed()) {
            c.clean = false;
            return Ok(c);
        }
        let failed =
            |e: tokio_postgres::Error| Failure::Setup(format!("cannot connect: {}", said(&e)));
        let (client, task) = match &self.tls {
            Some(tls) => {
                let (client, connection) =
                    (self.config.connect(tls.clone()).await).map_err(failed)?;
                (
                    client,
                    tokio::spawn(async move {
                        let _ = connection.await;
                    }),
                )
            }
            None => {
                let (client, connection) = (self.config.connect(NoTls).await).map_err(failed)?;
                (
                    client,
                    tokio::spawn(async move {
                        let _ = connection.await;
                    }),
                )
            }
        };
        Ok(Conn {
            client,
            task,
            clean: false,
            statements: None,
        })
    }

    fn checkin(&self, mut c: Conn) {
        if !c.client.is_closed() {
            c.clean = true;
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
    }

    /// Migrates and writes the reference tables, once per sink (again
    /// after the tables went away).
    async fn setup(&self, client: &mut Client) -> Result<(), Failure> {
        let mut ready = self.ready.lock().await;
        if *ready {
            return Ok(());
        }
        let s = &self.schema;
        let applied = migrate(client, s).await.map_err(|e| {
            Failure::Setup(format!("migrating schema {s} failed: {} (docs/POSTGRES.md lists the rights the sink needs)", said(&e)))
        })?;
        if !applied.is_empty() {
            self.say(&format!("schema {s}: applied migrations {applied:?}"));
        }
        match write_reference(client, s, &self.reference).await {
            Ok(n) => self.say(&format!(
                "schema {s}: reference tables written ({} segments, {} chargers, {} zones)",
                n[0], n[1], n[2]
            )),
            Err(e)
                if e.code().is_some_and(|c| {
                    ["22", "23", "XX"].contains(&c.code().get(..2).unwrap_or_default())
                }) =>
            {
                self.say(&format!(
                    "the reference tables are not written: {}; the aggregates are",
                    said(&e)
                ));
            }
            Err(e) => {
                return Err(Failure::Setup(format!(
                    "writing the reference tables: {}",
                    said(&e)
                )))
            }
        }
        *ready = true;
        Ok(())
    }

    /// The connection's statements, prepared at its first batch.
    async fn statements(&self, conn: &mut Conn) -> Result<[Statement; 7], tokio_postgres::Error> {
        if let Some(st) = &conn.statements {
            return Ok(st.clone());
        }
        let c = &conn.client;
        let (cells, a, b, z, da, db, dz) = tokio::join!(
            c.prepare(&self.cells_sql),
            c.prepare(&self.upserts[0]),
            c.prepare(&self.upserts[1]),
            c.prepare(&self.upserts[2]),
            c.prepare(&self.deletes[0]),
            c.prepare(&self.deletes[1]),
            c.prepare(&self.deletes[2]),
        );
        let st = [cells?, a?, b?, z?, da?, db?, dz?];
        conn.statements = Some(st.clone());
        Ok(st)
    }

    /// Upserts `rows` (sorted by key) in one transaction, its statements
    /// pipelined: one round trip.
    async fn upsert(&self, conn: &mut Conn, rows: &[Ready]) -> Result<(), tokio_postgres::Error> {
        let new_cells: Vec<(String, String)> = {
            let known = self.cells.lock().unwrap_or_else(|p| p.into_inner());
            let mut ids: Vec<&str> = (rows.iter())
                .filter(|r| r.key.kind == Kind::Zone)
                .filter_map(|r| match (r.cells.first(), r.cells.get(1)) {
                    (Some(Cell::Text(Some(id))), Some(Cell::Text(Some(ty))))
                        if ty == ZoneKind::H3.as_str() && !known.contains(id) =>
                    {
                        Some(id.as_str())
                    }
                    _ => None,
                })
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids.into_iter()
                .filter_map(|id| Some((id.to_owned(), cell_wkt(id)?)))
                .collect()
        };
        let st = self.statements(conn).await?;
        let (ids, wkts): (Vec<&str>, Vec<&str>) = (new_cells.iter())
            .map(|(i, w)| (i.as_str(), w.as_str()))
            .unzip();
        let (upserts, deletes): (Vec<Ready>, Vec<Ready>) =
            (rows.iter().cloned()).partition(|r| r.status != RETRACTION);
        let of_table = |rows: &[Ready], t: &Table| {
            let start = rows.partition_point(|r| r.key.kind < t.kind);
            let end = rows.partition_point(|r| r.key.kind <= t.kind);
            (start, end)
        };
        let cols = TABLES.each_ref().map(|t| {
            let (start, end) = of_table(&upserts, t);
            columns(t, &upserts[start..end])
        });
        let gone = TABLES.each_ref().map(|t| {
            let (start, end) = of_table(&deletes, t);
            key_columns(t, &deletes[start..end])
        });
        let params = (cols.iter().chain(&gone))
            .map(|c| c.iter().map(Column::param).collect::<Vec<_>>())
            .collect::<Vec<_>>();
        let c = &conn.client;
        // Sent in this order at the first poll; a failed statement fails
        // the rest, and COMMIT then rolls back.
        let run = |i: usize| {
            let empty = cols
                .iter()
                .chain(&gone)
                .nth(i)
                .is_none_or(|c| c[0].is_empty());
            let (st, params) = (&st[i + 1], &params[i]);
            async move {
                if empty {
                    return Ok(0);
                }
                c.execute(st, params).await
            }
        };
        let (begin, cells, a, b, z, da, db, dz, commit) = tokio::join!(
            c.batch_execute("BEGIN"),
            async {
                if ids.is_empty() {
                    return Ok(0);
                }
                c.execute(&st[0], &[&ids, &wkts]).await
            },
            run(0),
            run(1),
            run(2),
            run(3),
            run(4),
            run(5),
            c.batch_execute("COMMIT"),
        );
        begin?;
        for n in [cells, a, b, z, da, db, dz] {
            n?;
        }
        commit?;
        let mut known = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        known.extend(new_cells.into_iter().map(|(id, _)| id));
        Ok(())
    }

    /// Delivers a batch: see the module documentation for the outcomes.
    async fn deliver(&self, batch: Batch) -> Outcome {
        let rows = ordered(batch.rows);
        let mut conn = match self.checkout().await {
            Ok(c) => c,
            Err(f) => return self.failed(f),
        };
        if let Err(f) = self.setup(&mut conn.client).await {
            return self.failed(f);
        }
        match self.upsert(&mut conn, &rows).await {
            Ok(()) => {
                self.checkin(conn);
                Outcome::Done
            }
            Err(e) if data_error(&e) => {
                let outcome = self.isolate(&mut conn, &rows).await;
                if matches!(outcome, Outcome::Partly { .. }) {
                    self.checkin(conn);
                }
                outcome
            }
            // The connection is not used again (its statements may name
            // tables that went away).
            Err(e) => self.failed(Failure::Batch(e)),
        }
    }

    /// A data error in `rows`: halves are tried until the rows at fault are
    /// alone; they are refused, the others written.
    async fn isolate(&self, conn: &mut Conn, rows: &[Ready]) -> Outcome {
        let mut refused = Vec::new();
        let mut todo = vec![(0, rows.len() / 2), (rows.len() / 2, rows.len())];
        while let Some((a, b)) = todo.pop() {
            if a == b {
                continue;
            }
            match self.upsert(conn, &rows[a..b]).await {
                Ok(()) => {}
                Err(e) if data_error(&e) && b - a == 1 => refused.push((rows[a].place, said(&e))),
                Err(e) if data_error(&e) => {
                    let m = (a + b) / 2;
                    todo.extend([(a, m), (m, b)]);
                }
                Err(e) => return self.failed(Failure::Batch(e)),
            }
        }
        Outcome::Partly {
            retry: Vec::new(),
            refused,
        }
    }

    fn failed(&self, f: Failure) -> Outcome {
        let why = match f {
            Failure::Setup(why) => why,
            Failure::Batch(e) => {
                if tables_gone(&e) {
                    if let Ok(mut ready) = self.ready.try_lock() {
                        *ready = false;
                    }
                    self.cells.lock().unwrap_or_else(|p| p.into_inner()).clear();
                }
                said(&e)
            }
        };
        Outcome::Retry {
            why,
            after: Duration::ZERO,
        }
    }
}

/// The PostgreSQL transport of a sink.
pub struct Postgres {
    cfg: PostgresSink,
    shared: Arc<Shared>,
    window_ms: u64,
}

impl Postgres {
    /// The transport of sink `cfg`: an error if its URL is not a
    /// PostgreSQL connection URL, or its TLS cannot be set up (the URL's
    /// `sslmode=require`: TLS with the server's certificate verified
    /// against the web's roots and `ca`; otherwise plain). Nothing
    /// connects before the first batch.
    pub fn new(cfg: PostgresSink, ctx: SinkContext) -> anyhow::Result<Self> {
        let mut config: tokio_postgres::Config = (cfg.url.parse()).map_err(|e| {
            anyhow::anyhow!("url {:?} is not a PostgreSQL URL: {}", cfg.url, said(&e))
        })?;
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => {
                let tls = crate::wire::tls::tcp_client_config(cfg.ca.as_deref())?;
                Some(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            }
            _ => {
                // Plain: sslmode=prefer would otherwise fall back silently.
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
        };
        if let Some(p) = &cfg.password {
            config.password(p);
        }
        config
            .application_name(format!("edgeflow-{}-{}", ctx.node, cfg.name))
            .connect_timeout(cfg.timeout);
        let s = &cfg.schema;
        let shared = Shared {
            what: format!("postgres sink {}", cfg.name),
            config,
            tls,
            schema: s.clone(),
            reference: ctx.reference.clone(),
            upserts: TABLES.each_ref().map(|t| upsert_sql(s, t)),
            deletes: TABLES.each_ref().map(|t| delete_sql(s, t)),
            cells_sql: format!(
                "INSERT INTO \"{s}\".zones (zone_type, id, geom) \
                 SELECT '{h3}', id, ST_GeomFromText(wkt, 4326) FROM UNNEST($1::text[], $2::text[]) \
                 AS u(id, wkt) ON CONFLICT (zone_type, id) DO NOTHING",
                h3 = ZoneKind::H3.as_str()
            ),
            idle: std::sync::Mutex::new(Vec::new()),
            ready: tokio::sync::Mutex::new(false),
            cells: std::sync::Mutex::new(FxHashSet::default()),
        };
        Ok(Postgres {
            window_ms: ctx.window_ms,
            cfg,
            shared: Arc::new(shared),
        })
    }
}

impl Target for Postgres {
    type Request = Batch;

    fn what(&self) -> String {
        self.shared.what.clone()
    }

    fn settings(&self) -> Settings {
        Settings {
            max_rows: self.cfg.max_rows,
            max_in_flight: self.cfg.max_in_flight,
            max_hold: self.cfg.max_hold,
            max_backlog: self.cfg.max_backlog,
            latest_only: false,
            // A retraction never overtakes the row it deletes.
            exclusive: true,
            ledger: None,
            provisional: false,
            retractions: true,
        }
    }

    fn ledger_id(&self, _key: &AggKey) -> Option<String> {
        None
    }

    fn request(&mut self) -> Batch {
        Batch::default()
    }

    fn add(&mut self, batch: &mut Batch, rows: usize, row: &Row) -> Add {
        if rows >= self.cfg.max_rows {
            return Add::Full;
        }
        match prepare_row(&self.shared.reference, self.window_ms, rows, row) {
            Ok(r) => {
                batch.rows.push(r);
                Add::Taken
            }
            Err(why) => Add::Never(why),
        }
    }

    fn send(&mut self, batch: Batch) -> impl Future<Output = Outcome> + Send + 'static {
        let shared = self.shared.clone();
        let timeout = self.cfg.timeout;
        async move {
            match tokio::time::timeout(timeout, shared.deliver(batch)).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::Retry {
                    why: format!("no answer within the timeout ({timeout:?})"),
                    after: Duration::ZERO,
                },
            }
        }
    }
}
