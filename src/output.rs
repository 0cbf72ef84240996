//! Final aggregate tables and their CSV files (TELEMETRY.md §4).
//!
//! A [`FinalTable`] keeps, per (key, window), the last final or corrected
//! value emitted. Written out it is one row per (key, window), sorted by key
//! then window start. Files are written to a temporary name, fsynced, then
//! renamed, so a reader never sees half a file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::aggregate::{write_csv_row, AggKey, AggValue, Kind, CHARGING_HEADER, CONGESTION_HEADER};
use crate::dataflow::emit::{Emission, Status};
use crate::reference::Reference;

/// The final value of every (key, window) emitted so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinalTable {
    rows: BTreeMap<AggKey, AggValue>,
}

impl FinalTable {
    /// Applies emissions: final and corrected values replace what was there.
    pub fn apply(&mut self, emissions: &[Emission]) {
        for e in emissions {
            if matches!(e.status, Status::Final | Status::Correction) {
                self.rows.insert(e.key, e.value);
            }
        }
    }

    /// Rows of one kind, sorted by key then window.
    pub fn rows(&self, kind: Kind) -> impl Iterator<Item = (&AggKey, &AggValue)> {
        self.rows.iter().filter(move |(k, _)| k.kind == kind)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The CSV text of one kind.
    pub fn csv(&self, kind: Kind, reference: &Reference, window_ms: u64) -> String {
        let mut out = String::new();
        out.push_str(match kind {
            Kind::Congestion => CONGESTION_HEADER,
            Kind::Charging => CHARGING_HEADER,
        });
        out.push('\n');
        for (key, value) in self.rows(kind) {
            if write_csv_row(&mut out, reference, window_ms, key, value) {
                out.push('\n');
            }
        }
        out
    }

    /// Writes `congestion.csv` and `charging.csv` into `dir` (created if
    /// missing), durably.
    pub fn write_csv(
        &self,
        dir: &Path,
        reference: &Reference,
        window_ms: u64,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (kind, name) in [
            (Kind::Congestion, "congestion.csv"),
            (Kind::Charging, "charging.csv"),
        ] {
            write_durably(
                &dir.join(name),
                self.csv(kind, reference, window_ms).as_bytes(),
            )?;
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` via a temporary file, fsync and rename.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
