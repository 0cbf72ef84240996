//! The Karhula road network and chargers, built into the binary, so that
//! `edgeflow simulate` works outside a checkout (its traffic runs on the
//! network of the bundled topology, `topologies/karhula.toml`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::reference::Reference;

/// `topologies/karhula/roads.geojson`.
pub const ROADS: &str = include_str!("../../topologies/karhula/roads.geojson");
/// `topologies/karhula/chargers.geojson`.
pub const CHARGERS: &str = include_str!("../../topologies/karhula/chargers.geojson");

/// The bundled reference data, with the default matching settings.
pub fn reference() -> anyhow::Result<Reference> {
    // The loader reads files: a private directory of this process.
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "edgeflow-bundled-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    let (roads, chargers) = (dir.join("roads.geojson"), dir.join("chargers.geojson"));
    let loaded = std::fs::write(&roads, ROADS)
        .and_then(|()| std::fs::write(&chargers, CHARGERS))
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            Reference::load(&roads, &chargers, Default::default()).map_err(|problems| {
                anyhow::anyhow!(
                    "the bundled reference data has {} problem(s)",
                    problems.len()
                )
            })
        });
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_network_loads() {
        let r = super::reference().expect("loads");
        assert!(r.roads.len() > 100 && !r.chargers.is_empty());
    }
}
