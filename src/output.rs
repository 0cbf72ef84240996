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

/// The final value of every (key, window) emitted so far, and the rows a
/// files sink already held when the node started (windows whose log
/// segments retention deleted are nowhere else).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinalTable {
    rows: BTreeMap<AggKey, AggValue>,
    kept: BTreeMap<AggKey, String>,
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

    /// Loads the rows of `congestion.csv` and `charging.csv` in `dir` as
    /// kept rows (missing files are empty). Emitted values replace them.
    /// Rows of keys no longer in `reference` cannot be written again: they
    /// are dropped, with one warning each in the result.
    pub fn load_csv(&mut self, dir: &Path, reference: &Reference) -> std::io::Result<Vec<String>> {
        let mut warnings = Vec::new();
        for (kind, name, header) in [
            (Kind::Congestion, "congestion.csv", CONGESTION_HEADER),
            (Kind::Charging, "charging.csv", CHARGING_HEADER),
        ] {
            let path = dir.join(name);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut lines = text.lines().enumerate();
            if lines.next().is_some_and(|(_, h)| h != header) {
                warnings.push(format!("{}: unexpected header, not loaded", path.display()));
                continue;
            }
            for (i, line) in lines {
                // Ids may hold commas: the other eight fields never do.
                let mut fields = line.rsplitn(9, ',');
                let window = fields.nth(7).and_then(|w| w.parse::<u64>().ok());
                let id = fields.next();
                let index = id.and_then(|id| match kind {
                    Kind::Congestion => reference.road(id),
                    Kind::Charging => reference.charger(id),
                });
                match (window, index) {
                    (Some(window), Some(key)) => {
                        self.kept
                            .insert(AggKey { kind, key, window }, line.to_owned());
                    }
                    _ => warnings.push(format!(
                        "{}:{}: not a row of a known {}, dropped",
                        path.display(),
                        i + 1,
                        match kind {
                            Kind::Congestion => "road segment",
                            Kind::Charging => "charger",
                        }
                    )),
                }
            }
        }
        Ok(warnings)
    }

    /// Rows of one kind, sorted by key then window.
    pub fn rows(&self, kind: Kind) -> impl Iterator<Item = (&AggKey, &AggValue)> {
        self.rows.iter().filter(move |(k, _)| k.kind == kind)
    }

    /// Number of rows, kept ones included.
    pub fn len(&self) -> usize {
        self.rows.len()
            + self
                .kept
                .keys()
                .filter(|k| !self.rows.contains_key(k))
                .count()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.kept.is_empty()
    }

    /// The CSV text of one kind.
    pub fn csv(&self, kind: Kind, reference: &Reference, window_ms: u64) -> String {
        let mut out = String::new();
        out.push_str(match kind {
            Kind::Congestion => CONGESTION_HEADER,
            Kind::Charging => CHARGING_HEADER,
        });
        out.push('\n');
        let mut kept = self
            .kept
            .iter()
            .filter(|(k, _)| k.kind == kind && !self.rows.contains_key(k))
            .peekable();
        for (key, value) in self.rows(kind) {
            while let Some((_, line)) = kept.next_if(|(k, _)| *k < key) {
                out.push_str(line);
                out.push('\n');
            }
            if write_csv_row(&mut out, reference, window_ms, key, value) {
                out.push('\n');
            }
        }
        for (_, line) in kept {
            out.push_str(line);
            out.push('\n');
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
