//! Final aggregate tables and their CSV files (TELEMETRY.md §4).
//!
//! A [`FinalTable`] keeps, per (key, window), the last final or corrected
//! value emitted. Written out it is one row per (key, window), sorted by key
//! then window start. Files are written to a temporary name, fsynced, then
//! renamed, so a reader never sees half a file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::aggregate::{
    write_csv_row, AggKey, AggValue, Kind, CHARGING_HEADER, CONGESTION_HEADER, ZONES_HEADER,
};
use crate::dataflow::emit::{Emission, Status};
use crate::geo::zones::ZoneKind;
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
            match e.status {
                Status::Final | Status::Correction => {
                    self.rows.insert(e.key, e.value.clone());
                }
                Status::Retraction => {
                    self.rows.remove(&e.key);
                    self.kept.remove(&e.key);
                }
                Status::Provisional => {}
            }
        }
    }

    /// Loads the rows of the CSV files in `dir` ([`FILES`]) for which
    /// `frozen` holds as kept rows (missing files are empty); the others are
    /// left to be computed again. Emitted values replace them. Rows of keys
    /// no longer in `reference` cannot be written again: they are dropped,
    /// with one warning each in the result.
    pub fn load_csv(
        &mut self,
        dir: &Path,
        reference: &Reference,
        frozen: impl Fn(&AggKey) -> bool,
    ) -> std::io::Result<Vec<String>> {
        let mut warnings = Vec::new();
        for (kind, name) in FILES {
            let path = dir.join(name);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut lines = text.lines().enumerate();
            let Some((_, found)) = lines.next() else {
                continue;
            };
            // A file written before columns were added loads by column
            // name, the new columns empty; any other header is not ours.
            let old: Vec<&str> = found.split(',').collect();
            let columns: Vec<Option<usize>> = header(kind)
                .split(',')
                .map(|c| old.iter().position(|o| *o == c))
                .collect();
            let same = found == header(kind);
            let known = columns.iter().flatten().count() == old.len();
            if !(same || known && columns[0] == Some(0)) {
                warnings.push(format!("{}: unexpected header, not loaded", path.display()));
                continue;
            }
            if !same {
                warnings.push(format!(
                    "{}: written by an older version: columns added since are left empty in its rows",
                    path.display()
                ));
            }
            for (i, line) in lines {
                let line: std::borrow::Cow<'_, str> = if same {
                    line.into()
                } else {
                    // Only the first field (the id) may hold commas.
                    let mut f: Vec<&str> = line.rsplitn(old.len(), ',').collect();
                    f.reverse();
                    let fields: Vec<&str> = columns
                        .iter()
                        .map(|c| c.and_then(|c| f.get(c).copied()).unwrap_or(""))
                        .collect();
                    fields.join(",").into()
                };
                let line = line.as_ref();
                match row_key(kind, line, reference) {
                    Some(key) => {
                        if frozen(&key) {
                            self.kept.insert(key, line.to_owned());
                        }
                    }
                    None => warnings.push(format!(
                        "{}:{}: not a row of a known {}, dropped",
                        path.display(),
                        i + 1,
                        match kind {
                            Kind::Congestion => "road segment",
                            Kind::Charging => "charger",
                            Kind::Zone => "zone",
                        }
                    )),
                }
            }
        }
        Ok(warnings)
    }

    /// Keeps only the loaded rows for which `frozen` holds (a cluster
    /// learns its frozen horizon once its processes agree).
    pub fn keep_only(&mut self, frozen: impl Fn(&AggKey) -> bool) {
        self.kept.retain(|k, _| frozen(k));
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

    /// The CSV text of one kind: rows sorted by id, then window start.
    pub fn csv(&self, kind: Kind, reference: &Reference, window_ms: u64) -> String {
        // Segment and charger indexes follow id order; zone numbers do not
        // (a reloaded zone file appends), so sort by the printed id.
        let mut lines: Vec<(String, u64, String)> = Vec::new();
        for (key, value) in self.rows(kind) {
            let mut line = String::new();
            if write_csv_row(&mut line, reference, window_ms, key, value) {
                lines.push((sort_id(key, reference), key.window, line));
            }
        }
        for (key, line) in &self.kept {
            if key.kind == kind && !self.rows.contains_key(key) {
                lines.push((sort_id(key, reference), key.window, line.clone()));
            }
        }
        lines.sort_unstable();
        let mut out =
            String::with_capacity(lines.iter().map(|l| l.2.len() + 1).sum::<usize>() + 200);
        out.push_str(header(kind));
        out.push('\n');
        for (_, _, line) in lines {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// Writes the CSV files into `dir` (created if missing), durably:
    /// `congestion.csv`, `charging.csv`, and `zones.csv` when `reference`
    /// has zone roll-ups.
    pub fn write_csv(
        &self,
        dir: &Path,
        reference: &Reference,
        window_ms: u64,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (kind, name) in FILES {
            if kind == Kind::Zone && !reference.rollups() {
                continue;
            }
            write_durably(
                &dir.join(name),
                self.csv(kind, reference, window_ms).as_bytes(),
            )?;
        }
        Ok(())
    }
}

/// The output files, by kind.
pub const FILES: [(Kind, &str); 3] = [
    (Kind::Congestion, "congestion.csv"),
    (Kind::Charging, "charging.csv"),
    (Kind::Zone, "zones.csv"),
];

/// The CSV header of a kind.
pub fn header(kind: Kind) -> &'static str {
    match kind {
        Kind::Congestion => CONGESTION_HEADER,
        Kind::Charging => CHARGING_HEADER,
        Kind::Zone => ZONES_HEADER,
    }
}

/// The id a row sorts by.
fn sort_id(key: &AggKey, reference: &Reference) -> String {
    match key.kind {
        Kind::Congestion => reference.roads.get(key.key as usize).map(|r| r.id.clone()),
        Kind::Charging => reference
            .chargers
            .get(key.key as usize)
            .map(|c| c.id.clone()),
        Kind::Zone => reference.registry.id(key.key).map(|(id, _)| id),
    }
    .unwrap_or_default()
}

/// The key of a CSV row read back, if its id is known.
fn row_key(kind: Kind, line: &str, reference: &Reference) -> Option<AggKey> {
    let (key, window) = match kind {
        Kind::Zone => {
            // Zone ids hold no commas (the zone file forbids them).
            let mut f = line.split(',');
            let (id, zone_kind, window) = (f.next()?, f.next()?, f.next()?);
            let zone_kind = [ZoneKind::Named, ZoneKind::H3]
                .into_iter()
                .find(|k| k.as_str() == zone_kind)?;
            (reference.registry.intern(id, zone_kind), window)
        }
        _ => {
            // Ids may hold commas: the other eight fields never do.
            let mut f = line.rsplitn(9, ',');
            let window = f.nth(7)?;
            let id = f.next()?;
            let key = match kind {
                Kind::Congestion => reference.road(id)?,
                _ => reference.charger(id)?,
            };
            (key, window)
        }
    };
    Some(AggKey {
        kind,
        key,
        window: window.parse().ok()?,
    })
}

/// Writes `bytes` to `path` via a temporary file, fsync and rename.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_and_rename(path, bytes, 0o644)
}

/// Like [`write_durably`], for a secret: the file is readable and
/// writable by its owner only (mode 0600) from the moment it exists.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_and_rename(path, bytes, 0o600)
}

/// Writes a temporary file created with `mode` (before the umask), fsyncs
/// it, renames it over `path` and fsyncs the directory.
fn write_and_rename(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_file_from_before_a_column_was_added_loads_by_column_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old_header = ZONES_HEADER.replace(",vehicles", "");
        std::fs::write(
            dir.path().join("zones.csv"),
            format!("{old_header}\nz1,zone,0,60000,12,3,0.5000,1,0,0,0.000,0,0,0,2\n"),
        )
        .expect("write");
        std::fs::write(dir.path().join("congestion.csv"), "something,else\n1,2\n").expect("write");
        let reference = Reference::default();
        let mut table = FinalTable::default();
        let warnings = table
            .load_csv(dir.path(), &reference, |_| true)
            .expect("loads");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("unexpected header"), "{warnings:?}");
        assert!(warnings[1].contains("older version"), "{warnings:?}");
        let row = table.kept.values().next().expect("the zone row");
        assert_eq!(row, "z1,zone,0,60000,12,,3,0.5000,1,0,0,0.000,0,0,0,2");
    }

    #[test]
    fn every_kinds_fields_are_named_and_ordered_as_its_csv_header() {
        use crate::aggregate::{fields, Charging, Congestion};
        use crate::geo::zones::ZoneKind;
        let road = crate::reference::Road {
            id: "s1".into(),
            free_flow_mps: 13.89,
            lanes: 1,
            name: None,
            length_m: None,
            line: vec![[26.9, 60.5], [26.91, 60.5]],
        };
        let charger = crate::reference::Charger {
            id: "c1".into(),
            connectors: 2,
            max_kw: 50.0,
            name: None,
            position: [26.9, 60.5],
            ..Default::default()
        };
        let reference = Reference::new(vec![road], vec![charger]);
        let zone = reference.registry.intern("z1", ZoneKind::Named);
        let key = |kind, key| AggKey {
            kind,
            key,
            window: 60_000,
        };
        for (k, value) in [
            (
                key(Kind::Congestion, 0),
                AggValue::Congestion(Congestion::default()),
            ),
            (
                key(Kind::Charging, 0),
                AggValue::Charging(Charging::default()),
            ),
            (key(Kind::Zone, zone), AggValue::Zone(Box::default())),
        ] {
            let f = fields(&reference, 60_000, &k, &value).expect("a known key");
            let names: Vec<&str> = f.iter().map(|(n, _)| *n).collect();
            assert_eq!(names.join(","), header(k.kind), "{:?}", k.kind);
        }
    }
}
