//! The layering `src/lib.rs` describes holds: every top-level module has
//! its layer and imports only its own layer and the ones below; no import
//! circle; the two protocols (ingest, subscribe) never import each other
//! (the node dispatches to them). Imports are read from the source: every
//! `crate::module` path outside comments and test modules.

/// The layers of `src/lib.rs`, lowest first.
const LAYERS: &[&[&str]] = &[
    &[
        "model",
        "metrics",
        "codec",
        "time",
        "problem",
        "geo",
        "reference",
        "aggregate",
        "partial",
        "privacy",
    ],
    &["log"],
    &["resolve", "input", "pipeline", "dataflow", "output"],
    &["checkpoint", "runtime"],
    &["topology"],
    &[
        "delivery",
        "wire",
        "ingest",
        "subscribe",
        "push",
        "sink",
        "observe",
        "web",
    ],
    &["node"],
    &["tools"],
];

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module {module} has no layer in src/lib.rs and LAYERS"))
}

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support::root;

/// Top-level module -> the top-level modules its code names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = root("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        // The crate root and the binary (`main.rs`, `cli/`) are above all.
        if module == "lib" || module == "main" || module == "cli" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("source");
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let names = graph.entry(module.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    names.insert(name);
                }
            }
        }
    }
    graph
}

/// The modules reachable from `from`.
fn reach(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(m) = todo.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    seen
}

#[test]
fn no_module_imports_itself_through_others_and_the_protocols_stay_apart() {
    let graph = imports();
    assert!(graph.len() > 10, "{graph:?}");
    let circles: Vec<&String> = graph
        .keys()
        .filter(|m| reach(&graph, m).contains(*m))
        .collect();
    assert!(
        circles.is_empty(),
        "modules in import circles: {circles:?}\n{graph:#?}"
    );
    for (a, b) in [("ingest", "subscribe"), ("subscribe", "ingest")] {
        assert!(!reach(&graph, a).contains(b), "{a} reaches {b}: {graph:#?}");
    }
    let upward: Vec<String> = graph
        .iter()
        .flat_map(|(m, names)| names.iter().map(move |n| (m, n)))
        .filter(|(m, n)| layer(n) > layer(m))
        .map(|(m, n)| {
            format!(
                "{m} (layer {}) imports {n} (layer {})",
                layer(m) + 1,
                layer(n) + 1
            )
        })
        .collect();
    assert!(upward.is_empty(), "imports reaching up: {upward:#?}");
}
