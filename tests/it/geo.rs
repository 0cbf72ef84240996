//! Map matching on the SUMO recording: positions alone find the segment
//! the vehicle named; junction and charging reports count toward none.

use std::sync::Arc;

use edgeflow::geo::Unmatched;
use edgeflow::replay::ReplayOptions;
use edgeflow::topology::Topology;

use crate::support::{data, replay, root, rows};

/// Vehicle reports of the recording: (original segment_id, lon, lat,
/// heading, charging).
fn reports() -> Vec<(Option<String>, f64, f64, Option<f64>, bool)> {
    let text = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("fixture");
    text.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            (v["type"] == "vehicle").then(|| {
                (
                    v["segment_id"].as_str().map(str::to_owned),
                    v["lon"].as_f64().expect("lon"),
                    v["lat"].as_f64().expect("lat"),
                    v["heading_deg"].as_f64(),
                    v["ev"]["charging"].as_bool() == Some(true),
                )
            })
        })
        .collect()
}

#[test]
fn positions_alone_find_the_segment_the_vehicle_named() {
    let topo = Topology::load(&root("topologies/karhula.toml")).expect("valid");
    let reference = &topo.reference;
    let (mut on_road, mut right, mut junction, mut junction_unmatched) = (0, 0, 0, 0);
    for (segment, lon, lat, heading, charging) in reports() {
        let found = reference.matcher.locate(lon, lat, heading);
        match segment {
            Some(id) => {
                on_road += 1;
                if found.ok().map(|i| reference.roads[i as usize].id.as_str()) == Some(&id) {
                    right += 1;
                }
            }
            None if !charging => {
                junction += 1;
                if matches!(found, Err(Unmatched::Junction)) {
                    junction_unmatched += 1;
                }
            }
            None => {}
        }
    }
    let share = right as f64 / on_road as f64;
    let junction_share = junction_unmatched as f64 / junction as f64;
    eprintln!(
        "on-road reports matched to their segment: {right}/{on_road} = {:.4}; \
         junction reports left unmatched: {junction_unmatched}/{junction} = {junction_share:.4}",
        share
    );
    assert!(share >= 0.99, "{share}");
    assert!(junction_share >= 0.8, "{junction_share}");
}

#[test]
fn congestion_from_positions_alone_is_within_tolerance_of_the_expected() {
    let topo = Topology::load(&root("topologies/karhula.toml")).expect("valid");
    let reference = Arc::new(topo.reference.clone());
    let text = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("fixture");
    let mut stripped = String::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).expect("json");
        if let Some(o) = v.as_object_mut() {
            o.remove("segment_id");
        }
        stripped.push_str(&v.to_string());
        stripped.push('\n');
    }
    let (congestion, _, summary) = replay(
        stripped.into_bytes(),
        &reference,
        topo.time,
        ReplayOptions::new(2),
    );
    assert_eq!(summary.ingest.unmatched[Unmatched::Charging.index()], 1_340);
    let expected =
        std::fs::read_to_string(data("sumo-public/expected-congestion.csv")).expect("fixture");
    let (_, got) = rows(&congestion);
    let (header, want) = rows(&expected);
    let samples = header.iter().position(|h| h == "samples").expect("column");
    let speed = header
        .iter()
        .position(|h| h == "mean_speed_mps")
        .expect("column");
    let (mut pairs, mut within) = (0, 0);
    for (key, row) in &want {
        if row[samples].parse::<u64>().expect("samples") < 10 {
            continue;
        }
        pairs += 1;
        let e: f64 = row[speed].parse().expect("speed");
        if let Some(g) = got.get(key) {
            let g: f64 = g[speed].parse().expect("speed");
            if (g - e).abs() <= (0.1 * e).max(0.5) {
                within += 1;
            }
        }
    }
    let share = within as f64 / pairs as f64;
    eprintln!(
        "map-matched {} reports; pairs with >= 10 samples within max(0.5 m/s, 10%): {within}/{pairs} = {share:.4}",
        summary.ingest.map_matched
    );
    assert!(pairs > 200);
    assert!(share >= 0.9, "{share}");
}

#[test]
fn the_index_finds_what_an_exhaustive_scan_finds() {
    let topo = Topology::load(&root("topologies/karhula.toml")).expect("valid");
    let m = &topo.reference.matcher;
    // Noise up to 30 m: on segments, in junctions, beyond the radius.
    let probes = edgeflow::bench_match::probes(&topo.reference, 5_000, 30.0, 7);
    let mut outcomes = std::collections::BTreeMap::new();
    for p in &probes {
        for heading in [Some(p.heading), None, Some((p.heading + 180.0) % 360.0)] {
            let got = m.locate(p.lon, p.lat, heading);
            assert_eq!(
                got,
                m.locate_exhaustive(p.lon, p.lat, heading),
                "{p:?} {heading:?}"
            );
            *outcomes
                .entry(format!("{:?}", got.map(|_| ())))
                .or_insert(0) += 1;
        }
    }
    // Every outcome occurs, so the comparison covered each rule.
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
}
