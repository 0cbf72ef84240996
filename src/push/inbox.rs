//! Central's side of a push batch, sans-IO: the batch's updates keyed by
//! central's own reference data (segment and charger ids to indexes), or
//! why each one cannot be applied.

use thiserror::Error;

use crate::dataflow::partials::{PartialKey, PartialKind, PartialValue};
use crate::partial::wire::{self, Header, HeaderError, Part, Update, UpdateError};
use crate::reference::Reference;

/// Why an update is not applied.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refused {
    /// It does not decode.
    #[error(transparent)]
    Malformed(#[from] UpdateError),
    /// Its segment is not in central's road network.
    #[error("segment {0:?} is not in central's road network")]
    UnknownSegment(String),
    /// Its charger is not in central's charger list.
    #[error("charger {0:?} is not in central's charger list")]
    UnknownCharger(String),
}

/// What central's settings must agree with.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Mismatch {
    /// The header does not decode.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// Another window length.
    #[error("the edge's windows are {edge} ms, central's {central} ms")]
    Window {
        /// The edge's.
        edge: u64,
        /// Central's.
        central: u64,
    },
    /// Low-SoC cells at another resolution.
    #[error("the edge places low-SoC EVs at H3 resolution {edge}, central at {central}")]
    Resolution {
        /// The edge's.
        edge: u8,
        /// Central's.
        central: u8,
    },
}

/// A batch read against central's reference: its header and each update
/// as a (key, value) to apply, or why not (by index in the batch).
pub type Read = (
    Header,
    Vec<Result<(PartialKey, PartialValue), (usize, Refused)>>,
);

/// Reads a push batch's records for central, whose windows are
/// `window_ms` long and whose low-SoC cells are at `position_resolution`.
pub fn read(
    records: &[u8],
    reference: &Reference,
    window_ms: u64,
    position_resolution: u8,
) -> Result<Read, Mismatch> {
    let (header, updates) = wire::decode(records)?;
    if header.window_ms != window_ms {
        return Err(Mismatch::Window {
            edge: header.window_ms,
            central: window_ms,
        });
    }
    match header.position_resolution {
        Some(r) if r != position_resolution => {
            return Err(Mismatch::Resolution {
                edge: r,
                central: position_resolution,
            })
        }
        _ => {}
    }
    // `decode` gives one result per update, in order: its position is
    // the update's index in the batch.
    let read = updates
        .into_iter()
        .enumerate()
        .map(|(index, u)| {
            let u = u.map_err(|(_, e)| (index, Refused::from(e)))?;
            key_of(u, reference).map_err(|e| (index, e))
        })
        .collect();
    Ok((header, read))
}

/// An update keyed by central's reference data.
fn key_of(u: Update, reference: &Reference) -> Result<(PartialKey, PartialValue), Refused> {
    let window = u.window_start_ms;
    let (kind, key, value) = match u.part {
        Part::Congestion { segment, partial } => match reference.road(&segment) {
            Some(i) => (
                PartialKind::Congestion,
                u64::from(i),
                PartialValue::Congestion(partial),
            ),
            None => return Err(Refused::UnknownSegment(segment)),
        },
        Part::Charging { charger, partial } => match reference.charger(&charger) {
            Some(i) => (
                PartialKind::Charging,
                u64::from(i),
                PartialValue::Charging(partial),
            ),
            None => return Err(Refused::UnknownCharger(charger)),
        },
        Part::LowSoc { cell, partial } => {
            (PartialKind::LowSoc, cell, PartialValue::LowSoc(partial))
        }
    };
    Ok((PartialKey { kind, key, window }, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Charging;
    use crate::partial::sketch::Sketch;
    use crate::partial::{ChargingPartial, CongestionPartial};
    use crate::reference::{Charger, Road};

    fn reference() -> Reference {
        Reference::new(
            vec![Road {
                id: "s-1".into(),
                free_flow_mps: 10.0,
                lanes: 1,
                name: None,
                length_m: None,
                line: vec![[24.9, 60.1], [24.901, 60.1]],
            }],
            vec![Charger {
                id: "c-1".into(),
                connectors: 2,
                max_kw: 22.0,
                name: None,
                position: [24.9, 60.1],
                ..Default::default()
            }],
        )
    }

    fn batch(window_ms: u64, resolution: Option<u8>, updates: &[Update]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let header = Header {
            window_ms,
            position_resolution: resolution,
            watermark_ms: 120_000,
        };
        wire::encode(&header, updates, &mut bytes);
        bytes
    }

    fn congestion(segment: &str) -> Update {
        Update {
            window_start_ms: 60_000,
            part: Part::Congestion {
                segment: segment.into(),
                partial: CongestionPartial {
                    samples: 1,
                    speed_sum: 5,
                    vehicles: 1,
                    sketch: Sketch::of([9]),
                },
            },
        }
    }

    #[test]
    fn updates_are_keyed_by_centrals_indexes_and_unknown_ids_refused() {
        let r = reference();
        let charging = Update {
            window_start_ms: 0,
            part: Part::Charging {
                charger: "c-1".into(),
                partial: ChargingPartial {
                    charging: Charging::default(),
                    connectors: vec![1],
                },
            },
        };
        let bytes = batch(
            60_000,
            None,
            &[congestion("s-9"), congestion("s-1"), charging],
        );
        let (header, read) = read(&bytes, &r, 60_000, 11).expect("settings agree");
        assert_eq!(header.watermark_ms, 120_000);
        assert_eq!(read[0], Err((0, Refused::UnknownSegment("s-9".into()))));
        let (key, _) = read[1].as_ref().expect("known segment");
        assert_eq!(
            (key.kind, key.key, key.window),
            (PartialKind::Congestion, 0, 60_000)
        );
        let (key, _) = read[2].as_ref().expect("known charger");
        assert_eq!((key.kind, key.key), (PartialKind::Charging, 0));
    }

    #[test]
    fn other_settings_refuse_the_batch() {
        let r = reference();
        let bytes = batch(30_000, None, &[congestion("s-1")]);
        assert_eq!(
            read(&bytes, &r, 60_000, 11).map(|_| ()),
            Err(Mismatch::Window {
                edge: 30_000,
                central: 60_000
            })
        );
        let bytes = batch(60_000, Some(10), &[]);
        assert_eq!(
            read(&bytes, &r, 60_000, 11).map(|_| ()),
            Err(Mismatch::Resolution {
                edge: 10,
                central: 11
            })
        );
    }
}
