//! Synthetic live traffic over real QUIC connections: the engine of
//! `edgeflow simulate` (demos, soak) and `edgeflow bench-ingest`.
//!
//! Each connection is one device or fleet gateway with its own sender id; it
//! sends batches of `batch_records` vehicle (and, every tenth batch, charger)
//! reports stamped with the wall clock, at most `window` batches in flight,
//! optionally one batch per `interval`. Acknowledgement latency is measured
//! per batch from the moment its stream is opened.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use super::measure::SplitMix;
use crate::ingest::client::{connect, SendOptions};
use crate::ingest::frame::Frame;
use crate::ingest::frame::ALPN;
use crate::log::Encoding;
use crate::model::{ChargerReport, ConnectorStatus, EvState, Record, VehicleReport};
use crate::reference::Reference;
use crate::wire::tls::client_config;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Load {
    /// Connection settings (address, CA, token; `sender` is the prefix of
    /// each connection's sender id).
    pub target: SendOptions,
    /// Concurrent connections.
    pub connections: usize,
    /// Records per batch.
    pub batch_records: usize,
    /// Batches per connection (`None`: until `duration`).
    pub batches: Option<u64>,
    /// Stop after this long.
    pub duration: Duration,
    /// One batch per connection per `interval` (`None`: as fast as acked).
    pub interval: Option<Duration>,
    /// Batches in flight per connection.
    pub window: usize,
}

impl Load {
    /// A benchmark's load: `connections` connections to `addr` (CA `ca`,
    /// the benchmark fleet's `token`) sending batches of `batch_records`,
    /// 4 in flight, paced to `rate` records/s for `duration`.
    pub fn paced(
        addr: std::net::SocketAddr,
        ca: std::path::PathBuf,
        token: &str,
        connections: usize,
        batch_records: usize,
        rate: u64,
        duration: Duration,
    ) -> Load {
        let interval =
            Duration::from_secs_f64((connections * batch_records) as f64 / rate.max(1) as f64);
        Load {
            target: SendOptions {
                sender: "bench".into(),
                batch_lines: batch_records,
                window: 4,
                ..SendOptions::new(addr, "localhost", ca, token)
            },
            connections,
            batch_records,
            batches: None,
            duration,
            interval: Some(interval),
            window: 4,
        }
    }
}

/// What the load did.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Records acknowledged as accepted.
    pub accepted: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Acknowledgement latencies, microseconds, one per batch.
    pub latencies_us: Vec<u64>,
    /// Wall-clock time from the first batch to the last acknowledgement.
    pub elapsed: Duration,
    /// Connections that failed.
    pub failed_connections: u64,
    /// Why they failed: each distinct reason once, with how many.
    pub failures: std::collections::BTreeMap<String, u64>,
}

impl LoadReport {
    /// The `q` quantile of acknowledgement latency, milliseconds.
    pub fn latency_ms(&mut self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One batch of synthetic reports for the reference's segments and chargers.
pub fn synthetic_batch(
    rng: &mut SplitMix,
    reference: &Reference,
    device: usize,
    records: usize,
    encoding: Encoding,
    with_chargers: bool,
) -> Bytes {
    let mut out = BytesMut::new();
    let ts = now_ms();
    let roads = reference.roads.len().max(1) as u64;
    for i in 0..records {
        let road = &reference.roads[rng.below(roads) as usize % reference.roads.len().max(1)];
        let vehicle = format!("sim-{device}-{}", i % 50);
        let record = if with_chargers && i == 0 && !reference.chargers.is_empty() {
            let c = &reference.chargers[rng.below(reference.chargers.len() as u64) as usize];
            Record::Charger(ChargerReport {
                charger_id: c.id.as_str().into(),
                connector: 1,
                ts_ms: ts,
                status: if rng.below(2) == 0 {
                    ConnectorStatus::Occupied
                } else {
                    ConnectorStatus::Available
                },
                power_kw: rng.unit() * c.max_kw,
                energy_wh: 1_000_000 + ts / 1000,
                vehicle_id: None,
            })
        } else {
            Record::Vehicle(VehicleReport {
                vehicle_id: vehicle.into(),
                ts_ms: ts,
                lat: road.line[0][1],
                lon: road.line[0][0],
                speed_mps: road.free_flow_mps * (0.2 + rng.unit() * 0.9),
                heading_deg: Some(rng.unit() * 360.0),
                segment_id: Some(road.id.as_str().into()),
                ev: (rng.below(5) == 0).then(|| EvState {
                    soc_pct: 10.0 + rng.unit() * 80.0,
                    charging: Some(false),
                }),
            })
        };
        match encoding {
            Encoding::Cbor | Encoding::Partials | Encoding::Clock => {
                out.extend_from_slice(&crate::codec::encode_cbor(&record))
            }
            Encoding::JsonLines => {
                out.extend_from_slice(&crate::codec::encode_json(&record));
                out.extend_from_slice(b"\n");
            }
        }
    }
    out.freeze()
}

/// Runs the load; returns when every connection is done.
pub async fn run(load: &Load, reference: Arc<Reference>) -> anyhow::Result<LoadReport> {
    let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
    endpoint.set_default_client_config(client_config(&load.target.ca, None, ALPN)?);
    // At full speed, batches are made before the clock starts: the
    // generator shares the machine with the node and is not what is measured.
    let prepared: Vec<Vec<Bytes>> = match (load.interval, load.batches) {
        (None, Some(n)) => (0..load.connections)
            .map(|device| {
                let mut rng = SplitMix(0x5EED ^ device as u64);
                (0..n)
                    .map(|i| {
                        synthetic_batch(
                            &mut rng,
                            &reference,
                            device,
                            load.batch_records,
                            load.target.encoding,
                            i % 10 == 0,
                        )
                    })
                    .collect()
            })
            .collect(),
        _ => Vec::new(),
    };
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (device, batches) in (0..load.connections).zip(
        prepared
            .into_iter()
            .map(Some)
            .chain(std::iter::repeat_with(|| None)),
    ) {
        let (endpoint, load, reference) = (endpoint.clone(), load.clone(), reference.clone());
        tasks.spawn(async move {
            let mut r = LoadReport::default();
            let outcome = device_loop(&endpoint, &load, &reference, device, start, batches, &mut r);
            let outcome = outcome.await;
            (r, outcome)
        });
    }
    let mut report = LoadReport::default();
    while let Some(done) = tasks.join_next().await {
        let failure = match done {
            // What the node acknowledged counts, whatever came after.
            Ok((r, outcome)) => {
                report.accepted += r.accepted;
                report.rejected += r.rejected;
                report.latencies_us.extend(r.latencies_us);
                outcome.err().map(|e| format!("{e:#}"))
            }
            Err(e) => Some(format!("the connection's task failed: {e}")),
        };
        if let Some(why) = failure {
            report.failed_connections += 1;
            *report.failures.entry(why).or_default() += 1;
        }
    }
    report.elapsed = start.elapsed();
    endpoint.close(0u32.into(), b"done");
    Ok(report)
}

async fn device_loop(
    endpoint: &quinn::Endpoint,
    load: &Load,
    reference: &Reference,
    device: usize,
    start: Instant,
    prepared: Option<Vec<Bytes>>,
    report: &mut LoadReport,
) -> anyhow::Result<()> {
    let mut prepared = prepared.map(Vec::into_iter);
    // Paced devices start spread over one interval, as real devices do
    // (and a thousand simultaneous handshakes measure the handshake, not
    // the steady state).
    if let Some(interval) = load.interval {
        tokio::time::sleep(interval.mul_f64(device as f64 / load.connections.max(1) as f64)).await;
    }
    let mut opts = load.target.clone();
    opts.sender = format!("{}-{device}", load.target.sender);
    let (conn, _control, mut seq) = connect(endpoint, &opts).await?;
    let mut rng = SplitMix(0x5EED ^ device as u64);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    let mut next_at = Instant::now();
    loop {
        let more = load.batches.is_none_or(|b| sent < b) && start.elapsed() < load.duration;
        if more && in_flight.len() < load.window.max(1) {
            if let Some(interval) = load.interval {
                tokio::time::sleep_until(next_at.into()).await;
                next_at += interval;
            }
            let records = match prepared.as_mut().and_then(Iterator::next) {
                Some(b) => b,
                None => synthetic_batch(
                    &mut rng,
                    reference,
                    device,
                    load.batch_records,
                    opts.encoding,
                    sent.is_multiple_of(10),
                ),
            };
            let stream = conn.open_bi().await?;
            let t0 = Instant::now();
            // The first batch of a connection overlaps the others'
            // handshakes: it is warm-up, not steady-state latency.
            let measured = sent > 0;
            let this = seq;
            seq += 1;
            sent += 1;
            in_flight.spawn(async move {
                let (mut send, mut recv) = stream;
                send.write_all(
                    &Frame::Batch {
                        sender_seq: this,
                        encoding: opts_encoding(&records),
                        records,
                    }
                    .to_bytes(),
                )
                .await?;
                send.finish()?;
                let bytes = recv.read_to_end(16 << 20).await?;
                let frame = Frame::decode(&mut BytesMut::from(&bytes[..]), 16 << 20)?;
                anyhow::Ok((frame, measured.then(|| t0.elapsed())))
            });
            continue;
        }
        match in_flight.join_next().await {
            Some(Ok(Ok((
                Some(Frame::Ack {
                    accepted,
                    rejections,
                    ..
                }),
                took,
            )))) => {
                report.accepted += u64::from(accepted);
                report.rejected += rejections.len() as u64;
                report
                    .latencies_us
                    .extend(took.map(|t| t.as_micros() as u64));
            }
            Some(Ok(Ok((other, _)))) => anyhow::bail!("unexpected answer {other:?}"),
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    conn.close(0u32.into(), b"done");
    Ok(())
}

/// The encoding of a synthetic batch (CBOR maps start with major type 5).
fn opts_encoding(records: &Bytes) -> Encoding {
    if records.first().is_some_and(|b| b >> 5 == 5) {
        Encoding::Cbor
    } else {
        Encoding::JsonLines
    }
}

/// Opens `n` authenticated connections and keeps them idle for `hold`.
pub async fn idle(target: &SendOptions, n: usize, hold: Duration) -> anyhow::Result<usize> {
    let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
    endpoint.set_default_client_config(client_config(&target.ca, None, ALPN)?);
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let mut opts = target.clone();
        opts.sender = format!("{}-idle-{i}", target.sender);
        match connect(&endpoint, &opts).await {
            Ok(c) => held.push(c),
            Err(e) => {
                eprintln!("idle connection {i}: {e:#}");
                break;
            }
        }
    }
    let count = held.len();
    tokio::time::sleep(hold).await;
    drop(held);
    endpoint.close(0u32.into(), b"done");
    Ok(count)
}
