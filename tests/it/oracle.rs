//! The incremental dataflow against a batch recomputation.
//!
//! Seeded random telemetry: vehicles on a few segments (some reports without
//! or with an unknown segment), charger connectors with rising registers and
//! every OCPP status, arrival order shuffled within and beyond the allowed
//! lateness, and some records delayed past retention. The oracle below
//! recomputes, from TELEMETRY.md alone and the documented watermark rule
//! (per chunk: the largest event time of all earlier chunks minus the allowed
//! lateness), which records are accepted and every final aggregate. The
//! dataflow must agree for 1 to 4 workers, byte for byte among themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use edgeflow::aggregate::{CHARGING_HEADER, CONGESTION_HEADER};
use edgeflow::reference::{Charger, Reference, Road};
use edgeflow::runtime::RunOptions;
use edgeflow::time::TimeSpec;
use edgeflow::tools::measure::SplitMix;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::support::{assert_same_rows, replay};

const BASE: u64 = 1_767_258_000_000;
const SIZE: u64 = 10_000;
const RETENTION: u64 = 30_000;
const SEGMENTS: [(&str, f64); 4] = [
    ("s-a", 13.89),
    ("s-b", 8.33),
    ("s-c", 22.22),
    ("s-d", 16.67),
];
const CHARGERS: [(&str, u32); 3] = [("c-1", 1), ("c-2", 2), ("c-3", 3)];
const STATUSES: [&str; 5] = [
    "Available",
    "Occupied",
    "Reserved",
    "Unavailable",
    "Faulted",
];

#[derive(Clone, Debug)]
enum Rec {
    Vehicle {
        vehicle: String,
        ts: u64,
        speed_milli: u64,
        segment: Option<String>,
    },
    Charger {
        charger: String,
        connector: u32,
        ts: u64,
        status: &'static str,
        power_milli: u64,
        energy: u64,
    },
}

impl Rec {
    fn ts(&self) -> u64 {
        match self {
            Rec::Vehicle { ts, .. } | Rec::Charger { ts, .. } => *ts,
        }
    }
    fn line(&self) -> String {
        match self {
            Rec::Vehicle {
                vehicle,
                ts,
                speed_milli,
                segment,
            } => {
                let seg = segment
                    .as_ref()
                    .map(|s| format!(r#","segment_id":"{s}""#))
                    .unwrap_or_default();
                format!(
                    r#"{{"type":"vehicle","vehicle_id":"{vehicle}","ts_ms":{ts},"lat":60.6,"lon":26.9,"speed_mps":{}.{:03}{seg}}}"#,
                    speed_milli / 1000,
                    speed_milli % 1000
                )
            }
            Rec::Charger {
                charger,
                connector,
                ts,
                status,
                power_milli,
                energy,
            } => format!(
                r#"{{"type":"charger","charger_id":"{charger}","connector":{connector},"ts_ms":{ts},"status":"{status}","power_kw":{}.{:03},"energy_wh":{energy}}}"#,
                power_milli / 1000,
                power_milli % 1000
            ),
        }
    }
}

fn reference() -> Reference {
    let roads = SEGMENTS
        .iter()
        .map(|(id, ff)| Road {
            id: (*id).into(),
            free_flow_mps: *ff,
            lanes: 1,
            name: None,
            length_m: None,
            line: vec![[26.9, 60.5], [26.91, 60.5]],
        })
        .collect();
    let chargers = CHARGERS
        .iter()
        .map(|(id, n)| Charger {
            id: (*id).into(),
            connectors: *n,
            max_kw: 50.0,
            name: None,
            position: [26.9, 60.5],
            ..Charger::default()
        })
        .collect();
    Reference::new(roads, chargers)
}

/// Random records in arrival order.
fn generate(seed: u64, vehicles: usize, lateness: u64) -> Vec<Rec> {
    let mut rng = SplitMix(seed);
    let span = 200_000;
    let mut recs = Vec::new();
    for _ in 0..vehicles {
        let segment = match rng.below(20) {
            0 | 1 => None,
            2 => Some("zz-unknown".to_owned()),
            _ => Some(
                SEGMENTS[rng.below(SEGMENTS.len() as u64) as usize]
                    .0
                    .to_owned(),
            ),
        };
        recs.push(Rec::Vehicle {
            vehicle: format!("v-{}", rng.below(9)),
            ts: BASE + rng.below(span),
            speed_milli: rng.below(30_000),
            segment,
        });
    }
    for (charger, connectors) in CHARGERS {
        for connector in 1..=connectors {
            let mut ts = BASE + rng.below(20_000);
            let mut energy = 1_000 + rng.below(1_000_000);
            while ts < BASE + span {
                recs.push(Rec::Charger {
                    charger: charger.into(),
                    connector,
                    ts,
                    status: STATUSES[rng.below(5) as usize],
                    power_milli: rng.below(50_000),
                    energy,
                });
                let step = 1_000 + rng.below(9_000);
                ts += step;
                energy = match rng.below(60) {
                    // A new meter: the register starts again.
                    0 => rng.below(100),
                    // A jump no 50 kW connector can deliver.
                    1 => energy + 1_000_000,
                    // Up to the connector's 50 kW over the step.
                    _ => energy + rng.below(step * 50_000 / 3_600_000 + 1),
                };
            }
        }
    }
    // Arrival = event time + delay: mostly small, some beyond the allowed
    // lateness, a few beyond retention.
    let mut keyed: Vec<(u64, usize, Rec)> = recs
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let delay = match rng.below(100) {
                0..=79 => rng.below(500),
                80..=95 => rng.below(3 * lateness + 12_000),
                _ => 40_000 + rng.below(60_000),
            };
            (r.ts() + delay, i, r)
        })
        .collect();
    keyed.sort_by_key(|(a, i, _)| (*a, *i));
    keyed.into_iter().map(|(_, _, r)| r).collect()
}

/// A connector's readings: (ts, energy, status, power in W).
type Readings = Vec<(u64, u64, &'static str, u64)>;

#[derive(Default, Debug, PartialEq, Eq)]
struct Fates {
    late: u64,
    corrections: u64,
    expired: u64,
}

/// The batch recomputation: accepted records, then every aggregate.
fn oracle(recs: &[Rec], chunk_lines: usize, lateness: u64) -> (String, String, Fates) {
    let mut fates = Fates::default();
    let mut accepted = Vec::new();
    let mut prefix_max: Option<u64> = None;
    for chunk in recs.chunks(chunk_lines) {
        let watermark = prefix_max.map_or(0, |m| m.saturating_sub(lateness));
        for r in chunk {
            let start = r.ts() - r.ts() % SIZE;
            if start + SIZE + RETENTION <= watermark {
                fates.expired += 1;
                continue;
            }
            if start + SIZE <= watermark {
                fates.corrections += 1;
            } else if r.ts() < watermark {
                fates.late += 1;
            }
            accepted.push(r.clone());
        }
        prefix_max = chunk.iter().map(Rec::ts).max().max(prefix_max);
    }

    // Congestion.
    let mut cong: BTreeMap<(String, u64), (u64, f64, BTreeSet<String>)> = BTreeMap::new();
    for r in &accepted {
        if let Rec::Vehicle {
            vehicle,
            ts,
            speed_milli,
            segment: Some(seg),
        } = r
        {
            if SEGMENTS.iter().any(|(id, _)| id == seg) {
                let e = cong.entry((seg.clone(), ts - ts % SIZE)).or_default();
                e.0 += 1;
                e.1 += *speed_milli as f64 / 1000.0;
                e.2.insert(vehicle.clone());
            }
        }
    }
    let mut congestion = format!("{CONGESTION_HEADER}\n");
    for ((seg, w), (n, sum, vs)) in &cong {
        let ff = SEGMENTS
            .iter()
            .find(|(id, _)| id == seg)
            .map(|s| s.1)
            .unwrap_or(1.0);
        let mean = sum / *n as f64;
        let ratio = mean / ff;
        let level = if ratio >= 0.75 {
            "free"
        } else if ratio >= 0.5 {
            "slow"
        } else if ratio >= 0.25 {
            "heavy"
        } else {
            "jam"
        };
        let _ = writeln!(
            congestion,
            "{seg},{w},{},{n},{},{mean:.4},{ff},{ratio:.4},{level}",
            w + SIZE,
            vs.len()
        );
    }

    // Charging: per connector, readings sorted by time.
    let mut by_connector: BTreeMap<(String, u32), Readings> = BTreeMap::new();
    for r in &accepted {
        if let Rec::Charger {
            charger,
            connector,
            ts,
            status,
            power_milli,
            energy,
        } = r
        {
            by_connector
                .entry((charger.clone(), *connector))
                .or_default()
                .push((*ts, *energy, status, *power_milli));
        }
    }
    // (charger, window) -> (energy, mean power kW sum, occupied, faulted)
    let mut charging: BTreeMap<(String, u64), (u64, f64, u32, u32)> = BTreeMap::new();
    for ((charger, _), mut readings) in by_connector {
        readings.sort();
        let windows: BTreeSet<u64> = readings.iter().map(|r| r.0 - r.0 % SIZE).collect();
        for w in windows {
            let inside: Vec<_> = readings.iter().filter(|r| r.0 - r.0 % SIZE == w).collect();
            let last = inside[inside.len() - 1];
            let before = readings.iter().rfind(|r| r.0 < w).unwrap_or(inside[0]);
            let e = charging.entry((charger.clone(), w)).or_default();
            // TELEMETRY.md §3: a register that went backwards counts from
            // the window's lowest reading; no more than 50 kW x the time
            // counted, + 10 %.
            let (delivered, since) = if last.1 < before.1 {
                let low = inside.iter().map(|r| (r.1, r.0)).min().expect("a reading");
                (last.1 - low.0, low.1)
            } else {
                (last.1 - before.1, before.0)
            };
            let bound = 50_000u128 * u128::from(last.0 - since) * 11 / 36_000_000;
            e.0 += (delivered as u128).min(bound) as u64;
            e.1 += inside.iter().map(|r| r.3 as f64 / 1000.0).sum::<f64>() / inside.len() as f64;
            e.2 += u32::from(last.2 == "Occupied");
            e.3 += u32::from(last.2 == "Faulted" || last.2 == "Unavailable");
        }
    }
    let mut out = format!("{CHARGING_HEADER}\n");
    for ((charger, w), (energy, power, occupied, faulted)) in &charging {
        let connectors = CHARGERS
            .iter()
            .find(|(id, _)| id == charger)
            .map_or(1, |c| c.1);
        let _ = writeln!(
            out,
            "{charger},{w},{},{energy},{power:.3},{occupied},{connectors},{:.4},{faulted}",
            w + SIZE,
            *occupied as f64 / connectors as f64
        );
    }
    (congestion, out, fates)
}

#[test]
fn incremental_output_equals_batch_recomputation() {
    let config = Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let reference = Arc::new(reference());
    let strategy = (
        any::<u64>(),
        50usize..700,
        1usize..60,
        2usize..=4,
        prop_oneof![Just(0u64), Just(2_000), Just(5_000)],
    );
    runner
        .run(
            &strategy,
            |(seed, vehicles, chunk_lines, workers, lateness)| {
                let recs = generate(seed, vehicles, lateness);
                let input: String = recs.iter().map(|r| r.line() + "\n").collect();
                let spec = TimeSpec {
                    size_ms: SIZE,
                    allowed_lateness_ms: lateness,
                    retention_ms: RETENTION,
                    max_future_ms: edgeflow::time::DEFAULT_MAX_FUTURE_MS,
                    leap_quorum: edgeflow::time::DEFAULT_LEAP_QUORUM,
                };
                let (want_congestion, want_charging, want_fates) =
                    oracle(&recs, chunk_lines, lateness);

                let one = RunOptions {
                    chunk_lines,
                    ..RunOptions::new(1)
                };
                let (c1, h1, s1) = replay(input.clone().into_bytes(), &reference, spec, one);
                assert_same_rows(&c1, &want_congestion, "congestion");
                assert_same_rows(&h1, &want_charging, "charging");
                let got = Fates {
                    late: s1.ingest.late,
                    corrections: s1.ingest.corrections,
                    expired: s1.ingest.expired,
                };
                prop_assert_eq!(got, want_fates);

                let many = RunOptions {
                    chunk_lines,
                    ..RunOptions::new(workers)
                };
                let (cn, hn, _) = replay(input.into_bytes(), &reference, spec, many);
                prop_assert!(
                    c1 == cn,
                    "congestion differs between 1 and {} workers",
                    workers
                );
                prop_assert!(
                    h1 == hn,
                    "charging differs between 1 and {} workers",
                    workers
                );
                Ok(())
            },
        )
        .expect("oracle agrees");
}
