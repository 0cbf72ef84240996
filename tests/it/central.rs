//! Central's merge (issue 12): the partials two edges keep, merged, are
//! exactly what one node seeing every record computes. The Karhula
//! recording is split between a west and an east edge by a meridian
//! through the town, each report going to the edge it is in, so vehicles
//! cross from one edge to the other mid-trip and mid-window.
//!
//! Two levels: the edges' partials merged by the pure functions of
//! `edgeflow::partial`, and central's dataflow fed those partials as they
//! leave the edges, with central's watermark the oldest of the edges'.

use std::collections::BTreeMap;
use std::sync::Arc;

use edgeflow::aggregate::{AggKey, AggValue, Charging, Congestion, Kind};
use edgeflow::dataflow::central::{self, Upserts};
use edgeflow::dataflow::emit::Status;
use edgeflow::dataflow::partials::{PartialEmission, PartialKey, PartialKind, PartialValue};
use edgeflow::dataflow::ZoneFlow;
use edgeflow::geo::zones::Membership;
use edgeflow::partial::{merge_charging, merge_congestion, merge_low_soc};
use edgeflow::privacy::VehicleKey;
use edgeflow::push::inbox;
use edgeflow::push::outbox::Outbox;
use edgeflow::reference::Reference;
use edgeflow::runtime::{Input, RunOptions};
use edgeflow::topology::Topology;

use crate::support::{data, root};

/// The final partials and aggregates of one run.
#[derive(Default)]
struct Finals {
    partials: BTreeMap<PartialKey, PartialValue>,
    congestion: BTreeMap<(u32, u64), Congestion>,
    charging: BTreeMap<(u32, u64), Charging>,
    /// Every final row.
    rows: BTreeMap<AggKey, AggValue>,
    /// Every partial emission, in order.
    emitted: Vec<PartialEmission>,
}

fn run(lines: &[&str], reference: &Arc<Reference>, topo: &Topology, workers: usize) -> Finals {
    let mut finals = Finals::default();
    let mut partials = BTreeMap::new();
    let mut emitted = Vec::new();
    let input = lines.join("\n").into_bytes();
    edgeflow::runtime::run_with(
        Input::JsonLines(Box::new(std::io::Cursor::new(input))),
        reference.clone(),
        topo.time,
        RunOptions {
            partials: true,
            ..RunOptions::new(workers)
        },
        |batch| {
            for e in batch {
                if !matches!(e.status, Status::Final | Status::Correction) {
                    continue;
                }
                finals.rows.insert(e.key, e.value.clone());
                match (&e.key.kind, &e.value) {
                    (Kind::Congestion, AggValue::Congestion(c)) => {
                        finals.congestion.insert((e.key.key, e.key.window), *c);
                    }
                    (Kind::Charging, AggValue::Charging(c)) => {
                        finals.charging.insert((e.key.key, e.key.window), *c);
                    }
                    _ => {}
                }
            }
        },
        |batch| {
            emitted.extend_from_slice(batch);
            for e in batch {
                match e.status {
                    Status::Final | Status::Correction => {
                        partials.insert(e.key, e.value.clone());
                    }
                    Status::Retraction => {
                        partials.remove(&e.key);
                    }
                    Status::Provisional => {}
                }
            }
        },
        |_| {},
    )
    .expect("run");
    finals.partials = partials;
    finals.emitted = emitted;
    finals
}

/// The Karhula topology, its reference data with a city key (edges that
/// push hash vehicle ids under it) and the recording.
fn karhula_keyed() -> (Topology, Arc<Reference>, String) {
    let topo = Topology::load(&root("topologies/karhula.toml")).expect("valid topology");
    let mut keyed = topo.reference.clone();
    keyed.vehicle_key = Some(VehicleKey::new([0x5a; 32]));
    let text = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("fixture");
    (topo, Arc::new(keyed), text)
}

/// The recording split by a meridian through the median report: west and
/// east, each report going to the edge it is in.
fn split<'a>(lines: &[&'a str], reference: &Reference) -> (Vec<&'a str>, Vec<&'a str>) {
    // Where each report is: a vehicle's position, a charger's site.
    let lon = |line: &str| {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        match v["type"].as_str() {
            Some("charger") => {
                let id = v["charger_id"].as_str().expect("charger id");
                let i = reference.charger(id).expect("known charger") as usize;
                reference.chargers[i].position[0]
            }
            _ => v["lon"].as_f64().expect("lon"),
        }
    };
    let mut lons: Vec<f64> = lines.iter().map(|l| lon(l)).collect();
    lons.sort_by(f64::total_cmp);
    let meridian = lons[lons.len() / 2];
    let (west, east): (Vec<&str>, Vec<&str>) = lines.iter().partition(|l| lon(l) < meridian);
    assert!(
        west.len() > 3_000 && east.len() > 3_000,
        "{} {}",
        west.len(),
        east.len()
    );

    (west, east)
}

#[test]
fn two_edges_merged_equal_one_node_seeing_everything() {
    let (topo, reference, text) = karhula_keyed();
    let lines: Vec<&str> = text.lines().collect();
    let (west, east) = split(&lines, &reference);

    let whole = run(&lines, &reference, &topo, 2);
    // Keyed hashes count the same vehicles as the node's own.
    let plain = run(&lines, &Arc::new(topo.reference.clone()), &topo, 1);
    assert_eq!(plain.congestion, whole.congestion);
    assert_eq!(plain.charging, whole.charging);
    let edges = [
        run(&west, &reference, &topo, 1),
        run(&east, &reference, &topo, 2),
    ];

    // Every final partial of the whole run, merged from the edges.
    let mut shared = [0usize; 3];
    let mut crossings = 0;
    for (key, value) in &whole.partials {
        let parts: Vec<&PartialValue> = edges.iter().filter_map(|e| e.partials.get(key)).collect();
        assert!(!parts.is_empty(), "{key:?} is at no edge");
        if parts.len() > 1 {
            shared[key.kind as usize] += 1;
            // A vehicle both edges counted: the union counts it once.
            let sum: u64 = parts
                .iter()
                .map(|p| match p {
                    PartialValue::Congestion(c) => c.vehicles,
                    _ => 0,
                })
                .sum();
            if let PartialValue::Congestion(one) = value {
                crossings += usize::from(sum > one.vehicles);
            }
        }
        match (key.kind, value) {
            (PartialKind::Congestion, PartialValue::Congestion(one)) => {
                let merged = merge_congestion(parts.iter().map(|p| match p {
                    PartialValue::Congestion(c) => c,
                    other => panic!("{other:?}"),
                }));
                let expected = whole.congestion[&(key.key as u32, key.window)];
                assert_eq!(merged, expected, "{key:?}");
                assert_eq!(
                    (one.samples, one.speed_sum, one.vehicles),
                    (expected.samples, expected.speed_sum, expected.vehicles)
                );
            }
            (PartialKind::Charging, PartialValue::Charging(_)) => {
                let merged = merge_charging(parts.iter().map(|p| match p {
                    PartialValue::Charging(c) => c,
                    other => panic!("{other:?}"),
                }));
                assert_eq!(merged.split_connectors, 0, "{key:?}");
                assert_eq!(
                    merged.charging,
                    whole.charging[&(key.key as u32, key.window)],
                    "{key:?}"
                );
            }
            (PartialKind::LowSoc, PartialValue::LowSoc(one)) => {
                let merged = merge_low_soc(parts.iter().map(|p| match p {
                    PartialValue::LowSoc(l) => l,
                    other => panic!("{other:?}"),
                }));
                assert_eq!(merged, one.evs, "{key:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Nothing at an edge that the whole run lacks.
    for e in &edges {
        for key in e.partials.keys() {
            assert!(whole.partials.contains_key(key), "{key:?} only at an edge");
        }
    }
    assert_eq!(
        whole.congestion.len(),
        whole
            .partials
            .keys()
            .filter(|k| k.kind == PartialKind::Congestion)
            .count()
    );
    assert_eq!(whole.charging.len(), 40);
    // The split is a real one: segments and cells both edges saw in a
    // window, vehicles crossing between them.
    // (48 segment windows and 2 low-SoC cell windows of the 1,276 and 260.)
    assert_eq!(shared, [48, 0, 2]);
    let count = |k: PartialKind| whole.partials.keys().filter(|p| p.kind == k).count();
    assert_eq!(count(PartialKind::LowSoc), 260);
    assert!(
        crossings > 0,
        "no vehicle counted by both edges in one window"
    );
}

/// Central's final rows from its emissions.
fn finals_of(
    rx: &std::sync::mpsc::Receiver<Vec<edgeflow::dataflow::emit::Emission>>,
) -> BTreeMap<AggKey, AggValue> {
    let mut rows = BTreeMap::new();
    for batch in rx.try_iter() {
        for e in batch {
            match e.status {
                Status::Final | Status::Correction => {
                    rows.insert(e.key, e.value);
                }
                Status::Retraction => {
                    rows.remove(&e.key);
                }
                Status::Provisional => {}
            }
        }
    }
    rows
}

/// The edges' partials as (watermark, edge, index), in the order they
/// left their edges: by watermark, then edge.
fn arrival_order(edges: &[Vec<PartialEmission>]) -> Vec<(u64, usize, usize)> {
    let mut order: Vec<(u64, usize, usize)> = edges
        .iter()
        .enumerate()
        .flat_map(|(e, list)| {
            list.iter()
                .enumerate()
                .map(move |(i, p)| (p.watermark, e, i))
        })
        .collect();
    order.sort();
    order
}

/// Central fed the edges' partials as they left each edge, interleaved by
/// the edges' watermarks; its watermark is the oldest of theirs. Returns
/// central's final rows.
fn central_finals(
    edges: Vec<Vec<PartialEmission>>,
    reference: &Arc<Reference>,
    topo: &Topology,
) -> BTreeMap<AggKey, AggValue> {
    let spec = topo.time;
    let zones = ZoneFlow::of(reference);
    let membership = reference.membership(&reference.zones);
    let (tx, rx) = std::sync::mpsc::channel();
    timely::execute_directly(move |worker| {
        let (mut inputs, completion) = central::build(worker, spec, true, zones, Some(tx));
        inputs.zones.update(&Membership::default(), &membership);
        let order = arrival_order(&edges);
        let mut marks = vec![0u64; edges.len()];
        let mut upserts = Upserts::default();
        for (watermark, e, i) in order {
            marks[e] = watermark;
            let central_mark = marks.iter().copied().min().unwrap_or(0);
            // An edge at the end of its recording says u64::MAX; closing
            // the inputs below ends central's run instead.
            if central_mark > inputs.time() && central_mark < u64::MAX {
                upserts.advance(&mut inputs, &spec, central_mark);
                worker.step();
            }
            let p = &edges[e][i];
            assert_ne!(p.status, Status::Retraction, "partials are never retracted");
            upserts.apply(&mut inputs, e as u32, p.key, p.value.clone());
        }
        drop(inputs);
        while !completion.done() {
            worker.step();
        }
    });
    finals_of(&rx)
}

#[test]
fn central_merging_two_edges_computes_what_one_node_computes() {
    let (topo, reference, text) = karhula_keyed();
    let lines: Vec<&str> = text.lines().collect();
    let (west, east) = split(&lines, &reference);
    let whole = run(&lines, &reference, &topo, 1);
    let edges = vec![
        run(&west, &reference, &topo, 2).emitted,
        run(&east, &reference, &topo, 1).emitted,
    ];
    let central = central_finals(edges, &reference, &topo);
    let kinds = |rows: &BTreeMap<AggKey, AggValue>, k: Kind| {
        rows.keys().filter(|key| key.kind == k).count()
    };
    assert_eq!(kinds(&central, Kind::Congestion), 1_276);
    assert_eq!(kinds(&central, Kind::Charging), 40);
    assert_eq!(kinds(&central, Kind::Zone), 155);
    // Every row exactly as one node computes it: congestion (samples,
    // distinct vehicles, mean speed), charging, and every zone row with
    // its vehicles and low-SoC EVs counted across both edges.
    for (key, value) in &whole.rows {
        assert_eq!(central.get(key), Some(value), "{key:?}");
    }
    assert_eq!(central.len(), whole.rows.len());
}

/// As [`central_finals`], but every partial goes the push's way: each
/// edge's outbox coalesces and cuts batches of wire updates whenever its
/// watermark moves, every fifth batch is lost on the way and cut again,
/// and central reads each batch with its own reference data before
/// applying it; an edge's watermark at central is the one its batches
/// claim.
fn central_finals_pushed(
    edges: Vec<Vec<PartialEmission>>,
    reference: &Arc<Reference>,
    topo: &Topology,
) -> (BTreeMap<AggKey, AggValue>, usize) {
    let spec = topo.time;
    let zones = ZoneFlow::of(reference);
    let membership = reference.membership(&reference.zones);
    let resolution = reference.zone_settings.position_resolution;
    let reference = reference.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let batches = timely::execute_directly(move |worker| {
        let (mut inputs, completion) = central::build(worker, spec, true, zones, Some(tx));
        inputs.zones.update(&Membership::default(), &membership);
        let order = arrival_order(&edges);
        let n = edges.len();
        let mut outboxes: Vec<Outbox> = (0..n)
            .map(|_| Outbox::new(spec.size_ms, Some(resolution)))
            .collect();
        let mut seqs = vec![0u64; n];
        let mut marks = vec![0u64; n];
        let mut upserts = Upserts::default();
        let mut batches = 0;
        // Pushes what edge `e` has waiting; the last batch claims `last`.
        let mut push = |e: usize,
                        outboxes: &mut Vec<Outbox>,
                        marks: &mut Vec<u64>,
                        inputs: &mut central::CentralInputs,
                        upserts: &mut Upserts| {
            loop {
                let cut = outboxes[e]
                    .next_batch(seqs[e], &reference, 64)
                    .expect("not holding");
                batches += 1;
                if batches % 5 == 0 {
                    outboxes[e].lost(seqs[e]);
                    continue;
                }
                let (header, read) =
                    inbox::read(&cut.records, &reference, spec.size_ms, resolution)
                        .expect("settings agree");
                for r in read {
                    let (key, value) = r.expect("every update applies");
                    upserts.apply(inputs, e as u32, key, value);
                }
                outboxes[e].acked(seqs[e]);
                seqs[e] += 1;
                marks[e] = header.watermark_ms;
                if outboxes[e].backlog() == (0, 0) {
                    break;
                }
            }
        };
        let mut last = vec![0u64; n];
        for (watermark, e, i) in order {
            if watermark != last[e] && last[e] != 0 {
                // The edge's watermark moved: what waits leaves.
                push(e, &mut outboxes, &mut marks, &mut inputs, &mut upserts);
            }
            last[e] = watermark;
            outboxes[e].offer(std::slice::from_ref(&edges[e][i]));
            outboxes[e].advance(watermark);
            let central_mark = marks.iter().copied().min().unwrap_or(0);
            if central_mark > inputs.time() && central_mark < u64::MAX {
                upserts.advance(&mut inputs, &spec, central_mark);
                worker.step();
            }
        }
        for e in 0..n {
            push(e, &mut outboxes, &mut marks, &mut inputs, &mut upserts);
        }
        drop(inputs);
        while !completion.done() {
            worker.step();
        }
        batches
    });
    (finals_of(&rx), batches)
}

#[test]
fn pushed_through_outboxes_and_read_by_central_the_rows_are_the_same() {
    let (topo, reference, text) = karhula_keyed();
    let lines: Vec<&str> = text.lines().collect();
    let (west, east) = split(&lines, &reference);
    let whole = run(&lines, &reference, &topo, 1);
    let edges = vec![
        run(&west, &reference, &topo, 1).emitted,
        run(&east, &reference, &topo, 2).emitted,
    ];
    let (central, batches) = central_finals_pushed(edges, &reference, &topo);
    assert!(batches > 20, "{batches} batches");
    assert_eq!(central, whole.rows);
}
