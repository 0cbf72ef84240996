//! Topology validation reports every problem at once, with its place.

use std::path::Path;

use edgeflow::topology::Topology;

use crate::support::root;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write fixture");
}

#[test]
fn bundled_karhula_topology_is_valid() {
    let t = Topology::load(&root("topologies/karhula.toml")).expect("valid");
    assert_eq!(t.node_id, "karhula-edge-1");
    assert_eq!(t.reference.roads.len(), 517);
    assert_eq!(t.reference.chargers.len(), 4);
    assert_eq!(
        (
            t.time.size_ms,
            t.time.allowed_lateness_ms,
            t.time.retention_ms
        ),
        (60_000, 5_000, 900_000)
    );
}

#[test]
fn unknown_keys_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "t.toml", "[node]\nid = \"e1\"\ncolour = \"red\"\n[reference]\nroads = \"r\"\nchargers = \"c\"\n[windows]\nsise = \"60s\"\n");
    let problems = Topology::load(&dir.path().join("t.toml")).expect_err("invalid");
    // Every unknown key, each with its line, and the other problems too.
    let text = problems[0].to_string();
    assert!(
        text.contains("node.colour") && text.contains("line 3"),
        "{text}"
    );
    let text = problems[1].to_string();
    assert!(
        text.contains("windows.sise") && text.contains("line 8"),
        "{text}"
    );
    assert!(
        problems[2..]
            .iter()
            .any(|p| p.to_string().contains("cannot read")),
        "{problems:?}"
    );
}

#[test]
fn every_problem_is_reported_at_once_with_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "t.toml",
        "[node]\nid = \"edge one\"\n[reference]\nroads = \"roads.geojson\"\nchargers = \"missing.geojson\"\n\
         [windows]\nsize = \"7s\"\nallowed_lateness = \"soon\"\nretention = \"1m\"\n[dataflow]\nworkers = 0\n",
    );
    write(
        dir.path(),
        "roads.geojson",
        r#"{"type":"FeatureCollection","features":[
            {"type":"Feature","geometry":{"type":"LineString","coordinates":[[26.9,60.5],[26.91,60.5]]},"properties":{"id":"a","free_flow_mps":13.9,"lanes":1}},
            {"type":"Feature","geometry":{"type":"LineString","coordinates":[[26.9,60.5]]},"properties":{"id":"a","free_flow_mps":-1,"lanes":1.5}},
            {"type":"Feature","geometry":{"type":"Point","coordinates":[26.9,60.5]},"properties":{"free_flow_mps":"fast","lanes":2}}
        ]}"#,
    );
    let problems = Topology::load(&dir.path().join("t.toml")).expect_err("invalid");
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let expect = [
        "node.id",
        "windows.size",
        "windows.allowed_lateness",
        "dataflow.workers",
        "missing.geojson: cannot read",
        "features[1].properties.id: duplicate id \"a\" (first at features[0])",
        "features[1].geometry.coordinates",
        "features[1].properties.free_flow_mps",
        "features[1].properties.lanes",
        "features[2].geometry.type",
        "features[2].properties.id: required property is missing",
        "features[2].properties.free_flow_mps: expected a number",
    ];
    for e in expect {
        assert!(
            text.iter().any(|t| t.contains(e)),
            "no problem mentions {e:?} in:\n{}",
            text.join("\n")
        );
    }
    assert_eq!(problems.len(), expect.len(), "{}", text.join("\n"));
}

#[test]
fn malformed_zone_files_and_settings_are_reported_with_their_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "t.toml",
        &format!(
            "[node]\nid = \"e1\"\n[reference]\nroads = \"{}\"\nchargers = \"{}\"\nzones = \"zones.geojson\"\n\
             [windows]\n[zones]\nh3_resolution = 16\nlow_soc_pct = 120\n[matching]\nradius_m = 0\nheading_tolerance_deg = 200\n",
            root("topologies/karhula/roads.geojson").display(),
            root("topologies/karhula/chargers.geojson").display()
        ),
    );
    write(
        dir.path(),
        "zones.geojson",
        r#"{"type":"FeatureCollection","features":[
            {"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[26.9,60.5],[27.0,60.5],[27.0,60.6],[26.9,60.5]]]},"properties":{"id":"ok"}},
            {"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[26.9,60.5],[27.0,60.5],[27.0,60.6],[26.9,60.6]]]},"properties":{"id":"open"}},
            {"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[26.9,60.5],[27.0,60.5],[26.9,60.5]]]},"properties":{"id":"ok"}},
            {"type":"Feature","geometry":{"type":"LineString","coordinates":[[26.9,60.5],[27.0,60.5]]},"properties":{"id":"line"}},
            {"type":"Feature","geometry":{"type":"MultiPolygon","coordinates":[[[[26.9,60.5],[270.0,60.5],[27.0,60.6],[26.9,60.5]]]]},"properties":{"id":"far"}},
            {"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[26.9,60.5],[27.0,60.5],[27.0,60.6],[26.9,60.5]]]},"properties":{"id":"a,b"}},
            {"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[26.9,60.5],[27.0,60.5],[27.0,60.6],[26.9,60.5]]]},"properties":{}}
        ]}"#,
    );
    let problems = Topology::load(&dir.path().join("t.toml")).expect_err("invalid");
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let expect = [
        "features[1].geometry.coordinates: ring 0: not closed",
        "features[2].properties.id: duplicate id \"ok\" (first at features[0])",
        "features[2].geometry.coordinates: ring 0: 3 positions",
        "features[3].geometry.type: expected \"Polygon\" or \"MultiPolygon\"",
        "features[4].geometry.coordinates: ring 0: positions must be [lon, lat] within WGS84 bounds",
        "features[5].properties.id: \"a,b\" must be 1-128 characters",
        "features[6].properties.id: required property is missing",
        "zones.h3_resolution",
        "zones.low_soc_pct",
        "matching.radius_m",
        "matching.heading_tolerance_deg",
    ];
    for e in expect {
        assert!(
            text.iter().any(|t| t.contains(e)),
            "no problem mentions {e:?} in:\n{}",
            text.join("\n")
        );
    }
    assert_eq!(problems.len(), expect.len(), "{}", text.join("\n"));
    // Garbage in place of the file: one clear problem, no panic.
    write(dir.path(), "zones.geojson", "\u{0}\u{1}not json");
    let problems = Topology::load(&dir.path().join("t.toml")).expect_err("invalid");
    assert!(problems
        .iter()
        .any(|p| p.to_string().contains("zones.geojson: not valid JSON")));
}

#[test]
fn an_empty_zone_file_keeps_rollups_on_for_zones_added_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "t.toml",
        &format!(
            "[node]\nid = \"e1\"\n[reference]\nroads = \"{}\"\nchargers = \"{}\"\nzones = \"zones.geojson\"\n[windows]\n",
            root("topologies/karhula/roads.geojson").display(),
            root("topologies/karhula/chargers.geojson").display()
        ),
    );
    write(
        dir.path(),
        "zones.geojson",
        r#"{"type":"FeatureCollection","features":[]}"#,
    );
    let t = Topology::load(&dir.path().join("t.toml")).expect("valid");
    assert!(t.reference.zones.is_empty());
    assert!(t.reference.rollups(), "roll-ups are built for a zone file");
}

#[test]
fn empty_networks_zero_length_segments_crossing_zones_and_zero_timeouts_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chargers = root("topologies/karhula/chargers.geojson");
    let topo = |roads: &str, extra: &str| {
        format!(
            "[node]\nid = \"e1\"\n[reference]\nroads = \"{roads}\"\nchargers = \"{}\"\nzones = \"zones.geojson\"\n[windows]\n{extra}",
            chargers.display()
        )
    };
    write(
        dir.path(),
        "empty.geojson",
        r#"{"type":"FeatureCollection","features":[]}"#,
    );
    write(
        dir.path(),
        "zero.geojson",
        r#"{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"LineString","coordinates":[[26.9,60.5],[26.9,60.5]]},"properties":{"id":"s1","free_flow_mps":10,"lanes":1}}]}"#,
    );
    write(
        dir.path(),
        "zones.geojson",
        r#"{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[26.9,60.5],[27.0,60.6],[27.0,60.5],[26.9,60.6],[26.9,60.5]]]},"properties":{"id":"bowtie"}}]}"#,
    );
    write(dir.path(), "a.toml", &topo("empty.geojson", ""));
    let problems = Topology::load(&dir.path().join("a.toml")).expect_err("invalid");
    let all = format!("{problems:?}");
    assert!(all.contains("no segments"), "{all}");
    assert!(all.contains("bowtie") || all.contains("cross"), "{all}");
    write(
        dir.path(),
        "b.toml",
        &(topo("zero.geojson", "")
            + "[ingest]\nlisten = \"127.0.0.1:0\"\ncert = \"c\"\nkey = \"k\"\nhello_timeout = \"0s\"\nreceive_window = 1\nmax_frame_bytes = 16777216\n"),
    );
    let problems = Topology::load(&dir.path().join("b.toml")).expect_err("invalid");
    let all = format!("{problems:?}");
    for expected in [
        "zero length",
        "ingest.hello_timeout",
        "ingest.receive_window",
        "cross",
    ] {
        assert!(all.contains(expected), "{expected}: {all}");
    }
}

#[test]
fn the_vehicle_hash_key_is_32_random_bytes_in_hex() {
    let dir = tempfile::tempdir().expect("tempdir");
    let karhula = root("topologies/karhula");
    let with_key = |key: &str| {
        format!(
            "[node]\nid = \"e1\"\n[reference]\nroads = {:?}\nchargers = {:?}\n[windows]\n[privacy]\nvehicle_hash_key = {key:?}\n",
            karhula.join("roads.geojson"),
            karhula.join("chargers.geojson"),
        )
    };
    for bad in ["abc", &"0".repeat(64), &"g".repeat(64), &"ab".repeat(33)] {
        write(dir.path(), "t.toml", &with_key(bad));
        let problems = Topology::load(&dir.path().join("t.toml")).expect_err(bad);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].place, "privacy.vehicle_hash_key");
    }
    write(dir.path(), "t.toml", &with_key(&"5a".repeat(32)));
    let t = Topology::load(&dir.path().join("t.toml")).expect("valid");
    assert_eq!(
        t.reference.vehicle_key,
        Some(edgeflow::privacy::VehicleKey::new([0x5a; 32]))
    );
    // A node that pushes places low-SoC EVs in cells, zones or not.
    assert!(!t.reference.rollups() && t.reference.places_low_soc());
}

#[test]
fn hmm_matching_is_chosen_and_its_settings_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let head = format!(
        "[node]\nid = \"e1\"\n[reference]\nroads = \"{}\"\nchargers = \"{}\"\n\
         [windows]\nsize = \"60s\"\nallowed_lateness = \"5s\"\nretention = \"15m\"\n",
        root("topologies/karhula/roads.geojson").display(),
        root("topologies/karhula/chargers.geojson").display()
    );
    let load = |body: &str| {
        write(dir.path(), "t.toml", &format!("{head}{body}"));
        Topology::load(&dir.path().join("t.toml"))
    };
    // The default is the point matcher; "hmm" builds the graph and table.
    assert!(load("").expect("valid").reference.hmm.is_none());
    // The settings that scale with sigma follow it unless set.
    let t = load(
        "[matching]\nmethod = \"hmm\"\n[matching.hmm]\nsigma_m = 20\nlag = \"3s\"\nemission_margin = 25\n",
    )
    .expect("valid");
    let hmm = t.reference.hmm.expect("HMM matching");
    let s = hmm.settings();
    assert_eq!(
        (
            s.sigma_m,
            s.radius_m,
            s.backward_tolerance_m,
            s.emission_margin,
            s.lag_ms
        ),
        (20.0, 80.0, 50.0, 25.0, 3_000)
    );
    let t = load("[matching]\nmethod = \"hmm\"\n[matching.hmm]\nsigma_m = 5\nradius_m = 30\nbackward_tolerance_m = 10\n")
        .expect("valid");
    let s = *t.reference.hmm.expect("HMM matching").settings();
    assert_eq!((s.radius_m, s.backward_tolerance_m), (30.0, 10.0));
    assert!(hmm.table_bytes() > 0);
    // Each problem with its place.
    for (body, place) in [
        (
            "[matching]\nmethod = \"hidden-markov\"\n",
            "matching.method",
        ),
        (
            "[matching]\nmethod = \"hmm\"\n[matching.hmm]\nlag = \"6s\"\n",
            "matching.hmm.lag",
        ),
        (
            "[matching]\nmethod = \"hmm\"\n[matching.hmm]\nlag = \"soon\"\n",
            "matching.hmm.lag",
        ),
        (
            "[matching]\nmethod = \"hmm\"\n[matching.hmm]\nmax_gap = \"1s\"\n",
            "matching.hmm.max_gap",
        ),
        (
            "[matching]\nmethod = \"hmm\"\n[matching.hmm]\nradius_m = 0\n",
            "matching.hmm.radius_m",
        ),
        (
            "[matching]\nmethod = \"hmm\"\n[matching.hmm]\ncandidates = 40\n",
            "max_candidates",
        ),
        (
            "[matching]\nmethod = \"hmm\"\n[matching.hmm]\nsigma_m = -1\n",
            "sigma_m",
        ),
        (
            "[matching]\nmethod = \"hmm\"\n[matching.hmm]\nmax_table_bytes = 1000\n",
            "route table",
        ),
        (
            "[matching]\nmethod = \"hmm\"\n[matching.hmm]\nsigma = 3\n",
            "matching.hmm.sigma",
        ),
    ] {
        let problems = load(body).expect_err(place);
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(
            text.iter().any(|t| t.contains(place)),
            "{body}: no problem mentions {place:?} in:\n{}",
            text.join("\n")
        );
    }
}

/// `[cluster]`: the site's process addresses and its stop wait, each
/// problem with its place; a good section gives the settings.
#[test]
fn a_cluster_section_is_checked_and_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let k = root("topologies/karhula");
    let head = format!(
        "[node]\nid = \"e1\"\n[reference]\nroads = \"{}\"\nchargers = \"{}\"\n[windows]\nsize = \"60s\"\nallowed_lateness = \"5s\"\nretention = \"15m\"\n",
        k.join("roads.geojson").display(),
        k.join("chargers.geojson").display()
    );
    write(
        dir.path(),
        "bad.toml",
        &format!("{head}[cluster]\nprocesses = [\"a:1\", \"b\"]\nstop_wait = \"soon\"\n"),
    );
    let problems = Topology::load(&dir.path().join("bad.toml")).expect_err("invalid");
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("cluster.stop_wait") && t.contains("\"soon\"")),
        "{text:?}"
    );
    write(
        dir.path(),
        "no-port.toml",
        &format!("{head}[cluster]\nprocesses = [\"a:1\", \"b\"]\n"),
    );
    let problems = Topology::load(&dir.path().join("no-port.toml")).expect_err("invalid");
    assert!(
        problems[0].to_string().contains("cluster.processes")
            && problems[0].to_string().contains("HOST:PORT"),
        "{problems:?}"
    );
    write(
        dir.path(),
        "good.toml",
        &format!("{head}[cluster]\nprocesses = [\"a:1\", \"b:2\", \"c:3\"]\nstop_wait = \"5s\"\n"),
    );
    let c = (Topology::load(&dir.path().join("good.toml"))
        .expect("valid")
        .cluster)
        .expect("a cluster");
    assert_eq!(c.addresses, ["a:1", "b:2", "c:3"]);
    assert_eq!(c.stop_wait, std::time::Duration::from_secs(5));
}
