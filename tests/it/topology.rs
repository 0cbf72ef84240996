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
    write(dir.path(), "t.toml", "[node]\nid = \"e1\"\ncolour = \"red\"\n[reference]\nroads = \"r\"\nchargers = \"c\"\n[windows]\n");
    let problems = Topology::load(&dir.path().join("t.toml")).expect_err("invalid");
    assert_eq!(problems.len(), 1, "{problems:?}");
    let text = problems[0].to_string();
    assert!(text.contains("colour") && text.contains("line 3"), "{text}");
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
