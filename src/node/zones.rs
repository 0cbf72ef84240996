//! The zone file watcher: when the file changes and loads cleanly, the
//! membership change (pairs retracted, pairs added) goes to the dataflow,
//! and every zone window still in retention follows. A file with problems
//! is reported and ignored (the zones in force stay).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// A running zone watcher.
pub struct Watcher {
    /// The membership changes it finds (`None`: the topology has no zone
    /// file).
    pub changes: Option<mpsc::Receiver<crate::runtime::ZoneChange>>,
    /// Dropping this stops it.
    pub stop: Option<mpsc::Sender<()>>,
    /// Zone files loaded and handed on since the start.
    pub reloads: Arc<AtomicU64>,
}

impl Watcher {
    /// Watches `path` (nothing without one) on a thread of its own.
    pub fn start(
        path: Option<PathBuf>,
        reference: Arc<crate::reference::Reference>,
    ) -> std::io::Result<Watcher> {
        let reloads = Arc::new(AtomicU64::new(0));
        let Some(path) = path else {
            return Ok(Watcher {
                changes: None,
                stop: None,
                reloads,
            });
        };
        let (tx, rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel();
        let counted = reloads.clone();
        std::thread::Builder::new()
            .name("edgeflow-zones".into())
            .spawn(move || watch_zones(path, reference, tx, stop_rx, counted))?;
        Ok(Watcher {
            changes: Some(rx),
            stop: Some(stop_tx),
            reloads,
        })
    }
}

/// How often the zone file is checked for changes.
pub const ZONE_POLL: Duration = Duration::from_secs(1);

/// Watches the zone file; when it changes and loads cleanly, sends the
/// membership change to the dataflow. A file with problems is reported and
/// ignored (the zones in force stay). Stops when `stop` is dropped.
fn watch_zones(
    path: PathBuf,
    reference: Arc<crate::reference::Reference>,
    changes: mpsc::Sender<crate::runtime::ZoneChange>,
    stop: mpsc::Receiver<()>,
    reloads: Arc<AtomicU64>,
) {
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut current = reference.membership(&reference.zones);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(ZONE_POLL) {
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = crate::geo::zones::load(&path).and_then(|zones| {
            let problems = crate::geo::zones::check_cover(&zones, &reference.zone_settings);
            if problems.is_empty() {
                Ok(zones)
            } else {
                Err(problems
                    .into_iter()
                    .map(|message| crate::reference::Problem {
                        file: path.clone(),
                        place: "zones.max_position_cells".into(),
                        message,
                    })
                    .collect())
            }
        });
        match loaded {
            Ok(zones) => {
                let next = reference.membership(&zones);
                let (gone, added) = current.diff(&next);
                tracing::info!(
                    "zones reloaded from {}: {} zones; {} memberships added, {} removed",
                    path.display(),
                    zones.len(),
                    added.segments.len() + added.chargers.len() + added.cells.len(),
                    gone.segments.len() + gone.chargers.len() + gone.cells.len()
                );
                current = next;
                if changes.send((gone, added)).is_err() {
                    return;
                }
                reloads.fetch_add(1, Ordering::Relaxed);
            }
            Err(problems) => {
                for p in problems {
                    tracing::warn!("zone file not reloaded: {p}");
                }
            }
        }
    }
}
