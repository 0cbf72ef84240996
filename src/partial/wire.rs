//! The records of a push batch: BATCH encoding 2, "partials, version 1"
//! (docs/PROTOCOL.md, "Push"). Sans-IO encode and decode.
//!
//! ```text
//! header:
//!   u8  version = 1
//!   u64 window_ms            the edge's [windows] size
//!   u8  position_resolution  its [zones] position_resolution (255: none)
//!   u64 watermark_ms         the edge's watermark once these updates are in
//!   u32 count                updates that follow
//! update (count times):
//!   u32 length               of the rest of the update, bytes
//!   u8  kind                 1 congestion, 2 charging, 3 low-SoC EVs
//!   u64 window_start_ms
//!   key: kinds 1, 2: u8 id_len, id (UTF-8, a segment or charger id)
//!        kind 3:     u64 H3 cell index at position_resolution
//!   kind 1: u64 samples, i64 speed_sum (µm/s), u64 vehicles, sketch
//!   kind 2: u64 energy_wh, i64 mean_power_mw, u32 occupied, u32 faulted,
//!           u16 n, n × u32 connector (strictly increasing)
//!   kind 3: u64 evs, sketch
//! ```
//! Integers are big-endian; the sketch is [`Sketch::encode`]. Every update
//! is an upsert: it replaces what the same edge sent before for its (kind,
//! key, window). A bad header refuses the whole batch; a bad update is
//! refused alone (its length lets the rest be read) with the reason.

use thiserror::Error;

use super::sketch::{Sketch, SketchError};
use super::{ChargingPartial, CongestionPartial, LowSocPartial};
use crate::aggregate::Charging;

/// The version this build writes and reads.
pub const VERSION: u8 = 1;
/// Header bytes.
pub const HEADER_BYTES: usize = 1 + 8 + 1 + 8 + 4;

/// What an edge's batch says about the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Window length, ms: must be central's.
    pub window_ms: u64,
    /// H3 resolution of low-SoC cells, if the edge sends any.
    pub position_resolution: Option<u8>,
    /// The edge's watermark with these updates in.
    pub watermark_ms: u64,
}

/// One upsert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// The window's start.
    pub window_start_ms: u64,
    /// What and whose.
    pub part: Part,
}

/// The key and partial of an update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// A road segment's congestion.
    Congestion {
        /// Segment id.
        segment: String,
        /// The partial.
        partial: CongestionPartial,
    },
    /// A charger's charging.
    Charging {
        /// Charger id.
        charger: String,
        /// The partial.
        partial: ChargingPartial,
    },
    /// Low-SoC EVs in an H3 cell.
    LowSoc {
        /// The cell.
        cell: u64,
        /// The partial.
        partial: LowSocPartial,
    },
}

/// Why a batch cannot be read at all.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    #[error("push batch of {0} bytes is shorter than its {HEADER_BYTES}-byte header")]
    Short(usize),
    /// Another version.
    #[error("push batch version {0} (this node reads version {VERSION})")]
    Version(u8),
    /// A window length that divides no day.
    #[error("window_ms {0} is not a whole number of seconds dividing a day")]
    Window(u64),
    /// A position resolution beyond H3's.
    #[error("position_resolution {0} is not an H3 resolution (0-15, or 255 for none)")]
    Resolution(u8),
}

/// Why one update is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UpdateError {
    /// The batch ends inside it.
    #[error("update cut short: {0}")]
    Truncated(&'static str),
    /// An unknown kind.
    #[error("unknown update kind {0}")]
    Kind(u8),
    /// A window start not on a window boundary.
    #[error("window_start_ms {0} is not on a window boundary")]
    Window(u64),
    /// A key that is not an id.
    #[error("bad key: {0}")]
    Key(String),
    /// Figures that cannot be.
    #[error("impossible figures: {0}")]
    Figures(&'static str),
    /// A bad sketch.
    #[error("sketch: {0}")]
    Sketch(#[from] SketchError),
    /// Bytes after the update within its length.
    #[error("{0} bytes after the update")]
    Trailing(usize),
}

/// Appends a batch's records.
pub fn encode(header: &Header, updates: &[Update], out: &mut Vec<u8>) {
    out.push(VERSION);
    out.extend_from_slice(&header.window_ms.to_be_bytes());
    out.push(header.position_resolution.unwrap_or(255));
    out.extend_from_slice(&header.watermark_ms.to_be_bytes());
    out.extend_from_slice(&(updates.len() as u32).to_be_bytes());
    for u in updates {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        encode_update(u, out);
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

fn encode_id(id: &str, out: &mut Vec<u8>) {
    // Ids are at most 64 bytes (model::check_id); longer ones are cut
    // here and refused by the receiver.
    let bytes = &id.as_bytes()[..id.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

fn encode_update(u: &Update, out: &mut Vec<u8>) {
    let kind = match u.part {
        Part::Congestion { .. } => 1,
        Part::Charging { .. } => 2,
        Part::LowSoc { .. } => 3,
    };
    out.push(kind);
    out.extend_from_slice(&u.window_start_ms.to_be_bytes());
    match &u.part {
        Part::Congestion { segment, partial } => {
            encode_id(segment, out);
            out.extend_from_slice(&partial.samples.to_be_bytes());
            out.extend_from_slice(&partial.speed_sum.to_be_bytes());
            out.extend_from_slice(&partial.vehicles.to_be_bytes());
            partial.sketch.encode(out);
        }
        Part::Charging { charger, partial } => {
            encode_id(charger, out);
            let c = &partial.charging;
            out.extend_from_slice(&c.energy_wh.to_be_bytes());
            out.extend_from_slice(&c.mean_power_mw.to_be_bytes());
            out.extend_from_slice(&c.occupied.to_be_bytes());
            out.extend_from_slice(&c.faulted.to_be_bytes());
            out.extend_from_slice(&(partial.connectors.len() as u16).to_be_bytes());
            for c in &partial.connectors {
                out.extend_from_slice(&c.to_be_bytes());
            }
        }
        Part::LowSoc { cell, partial } => {
            out.extend_from_slice(&cell.to_be_bytes());
            out.extend_from_slice(&partial.evs.to_be_bytes());
            partial.sketch.encode(out);
        }
    }
}

/// A cursor over bytes that fails with a named field instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], UpdateError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(UpdateError::Truncated(what))?;
        self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, UpdateError> {
        Ok(self.take::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, UpdateError> {
        Ok(u16::from_be_bytes(self.take(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, UpdateError> {
        Ok(u32::from_be_bytes(self.take(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, UpdateError> {
        Ok(u64::from_be_bytes(self.take(what)?))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, UpdateError> {
        Ok(i64::from_be_bytes(self.take(what)?))
    }
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], UpdateError> {
        if self.0.len() < n {
            return Err(UpdateError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn id(&mut self) -> Result<String, UpdateError> {
        let n = usize::from(self.u8("id length")?);
        let raw = self.bytes(n, "id")?;
        let id = std::str::from_utf8(raw)
            .map_err(|_| UpdateError::Key("id is not UTF-8".into()))?
            .to_owned();
        crate::model::check_id(&id, "id").map_err(|e| UpdateError::Key(e.detail))?;
        Ok(id)
    }
    fn sketch(&mut self) -> Result<Sketch, UpdateError> {
        let (sketch, rest) = Sketch::decode_prefix(self.0)?;
        self.0 = rest;
        Ok(sketch)
    }
}

/// A distinct count and its sketch must agree: a sparse sketch holds
/// exactly the counted hashes; a dense one more than a sparse one could.
fn check_distinct(count: u64, sketch: &Sketch) -> Result<(), UpdateError> {
    let agrees = match sketch {
        Sketch::Sparse(v) => v.len() as u64 == count,
        Sketch::Dense(_) => count > super::sketch::SPARSE_MAX as u64,
    };
    agrees.then_some(()).ok_or(UpdateError::Figures(
        "the distinct count and its sketch disagree",
    ))
}

fn decode_update(header: &Header, bytes: &[u8]) -> Result<Update, UpdateError> {
    let mut r = Reader(bytes);
    let kind = r.u8("kind")?;
    let window_start_ms = r.u64("window_start_ms")?;
    if !window_start_ms.is_multiple_of(header.window_ms) {
        return Err(UpdateError::Window(window_start_ms));
    }
    let part = match kind {
        1 => {
            let segment = r.id()?;
            let partial = CongestionPartial {
                samples: r.u64("samples")?,
                speed_sum: r.i64("speed_sum")?,
                vehicles: r.u64("vehicles")?,
                sketch: r.sketch()?,
            };
            if partial.speed_sum < 0 || partial.vehicles > partial.samples {
                return Err(UpdateError::Figures(
                    "a negative speed sum, or more vehicles than samples",
                ));
            }
            check_distinct(partial.vehicles, &partial.sketch)?;
            Part::Congestion { segment, partial }
        }
        2 => {
            let charger = r.id()?;
            let charging = Charging {
                energy_wh: r.u64("energy_wh")?,
                mean_power_mw: r.i64("mean_power_mw")?,
                occupied: r.u32("occupied")?,
                faulted: r.u32("faulted")?,
            };
            let n = r.u16("connector count")?;
            let connectors = (0..n)
                .map(|_| r.u32("connector"))
                .collect::<Result<Vec<u32>, _>>()?;
            if connectors.windows(2).any(|w| w[0] >= w[1]) {
                return Err(UpdateError::Figures("connectors not strictly increasing"));
            }
            if u64::from(charging.occupied) + u64::from(charging.faulted) > u64::from(n) {
                return Err(UpdateError::Figures(
                    "more occupied and faulted connectors than connectors",
                ));
            }
            Part::Charging {
                charger,
                partial: ChargingPartial {
                    charging,
                    connectors,
                },
            }
        }
        3 => {
            let cell = r.u64("cell")?;
            let resolution = h3o::CellIndex::try_from(cell)
                .map(|c| u8::from(c.resolution()))
                .map_err(|e| UpdateError::Key(format!("cell {cell:x}: {e}")))?;
            if Some(resolution) != header.position_resolution {
                return Err(UpdateError::Key(format!(
                    "cell {cell:x} is at resolution {resolution}, the batch says {:?}",
                    header.position_resolution
                )));
            }
            let partial = LowSocPartial {
                evs: r.u64("evs")?,
                sketch: r.sketch()?,
            };
            check_distinct(partial.evs, &partial.sketch)?;
            Part::LowSoc { cell, partial }
        }
        other => return Err(UpdateError::Kind(other)),
    };
    match r.0.len() {
        0 => Ok(Update {
            window_start_ms,
            part,
        }),
        n => Err(UpdateError::Trailing(n)),
    }
}

/// A batch read: its header and each update or why it was refused (by
/// index). Updates after one whose length runs past the batch are
/// refused as cut short.
pub type Decoded = (Header, Vec<Result<Update, (usize, UpdateError)>>);

/// Reads a batch's records.
pub fn decode(bytes: &[u8]) -> Result<Decoded, HeaderError> {
    let head = bytes
        .first_chunk::<HEADER_BYTES>()
        .ok_or(HeaderError::Short(bytes.len()))?;
    if head[0] != VERSION {
        return Err(HeaderError::Version(head[0]));
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[i..i + 8]);
        u64::from_be_bytes(b)
    };
    let window_ms = u64_at(1);
    if window_ms == 0 || !window_ms.is_multiple_of(1000) || 86_400_000 % window_ms != 0 {
        return Err(HeaderError::Window(window_ms));
    }
    let position_resolution = match head[9] {
        255 => None,
        r if r <= 15 => Some(r),
        r => return Err(HeaderError::Resolution(r)),
    };
    let header = Header {
        window_ms,
        position_resolution,
        watermark_ms: u64_at(10),
    };
    let count = u32::from_be_bytes([head[18], head[19], head[20], head[21]]) as usize;
    let mut r = Reader(&bytes[HEADER_BYTES..]);
    // At most one result per 5 bytes: a count cannot make us allocate
    // more than the batch's size.
    let mut updates = Vec::with_capacity(count.min(r.0.len() / 5 + 1));
    for index in 0..count {
        let len = match r.u32("update length") {
            Ok(len) => len as usize,
            Err(e) => {
                updates.push(Err((index, e)));
                break;
            }
        };
        match r.bytes(len, "update") {
            Ok(body) => updates.push(decode_update(&header, body).map_err(|e| (index, e))),
            Err(e) => {
                updates.push(Err((index, e)));
                break;
            }
        }
    }
    Ok((header, updates))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Header, Vec<Update>) {
        let cell = u64::from(
            h3o::LatLng::new(60.47, 26.94)
                .expect("position")
                .to_cell(h3o::Resolution::Eleven),
        );
        let header = Header {
            window_ms: 60_000,
            position_resolution: Some(11),
            watermark_ms: 1_767_258_120_000,
        };
        let updates = vec![
            Update {
                window_start_ms: 1_767_258_000_000,
                part: Part::Congestion {
                    segment: "s-1".into(),
                    partial: CongestionPartial {
                        samples: 5,
                        speed_sum: 50_000_000,
                        vehicles: 2,
                        sketch: Sketch::of([7, 3]),
                    },
                },
            },
            Update {
                window_start_ms: 1_767_258_060_000,
                part: Part::Charging {
                    charger: "c-1".into(),
                    partial: ChargingPartial {
                        charging: Charging {
                            energy_wh: 1200,
                            mean_power_mw: 11_000_000,
                            occupied: 1,
                            faulted: 1,
                        },
                        connectors: vec![1, 2],
                    },
                },
            },
            Update {
                window_start_ms: 1_767_258_060_000,
                part: Part::LowSoc {
                    cell,
                    partial: LowSocPartial {
                        evs: 1,
                        sketch: Sketch::of([42]),
                    },
                },
            },
        ];
        (header, updates)
    }

    #[test]
    fn a_batch_round_trips() {
        let (header, updates) = sample();
        let mut bytes = Vec::new();
        encode(&header, &updates, &mut bytes);
        let (h, decoded) = decode(&bytes).expect("header");
        assert_eq!(h, header);
        let decoded: Vec<Update> = decoded.into_iter().map(|u| u.expect("update")).collect();
        assert_eq!(decoded, updates);
    }

    #[test]
    fn a_bad_update_costs_only_itself() {
        let (header, mut updates) = sample();
        // Off the window grid, and a count its sketch contradicts.
        updates[0].window_start_ms += 1;
        if let Part::LowSoc { partial, .. } = &mut updates[2].part {
            partial.evs = 2;
        }
        let mut bytes = Vec::new();
        encode(&header, &updates, &mut bytes);
        let (_, decoded) = decode(&bytes).expect("header");
        assert!(matches!(decoded[0], Err((0, UpdateError::Window(_)))));
        assert_eq!(decoded[1].as_ref().ok(), Some(&updates[1]));
        assert!(matches!(decoded[2], Err((2, UpdateError::Figures(_)))));
    }

    #[test]
    fn bad_headers_and_cut_batches_are_errors_not_panics() {
        let (header, updates) = sample();
        let mut bytes = Vec::new();
        encode(&header, &updates, &mut bytes);
        assert_eq!(decode(&bytes[..5]), Err(HeaderError::Short(5)));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(decode(&v2), Err(HeaderError::Version(2)));
        // Every prefix decodes to an error or fewer updates, never a panic.
        for cut in HEADER_BYTES..bytes.len() {
            let (_, decoded) = decode(&bytes[..cut]).expect("header");
            assert!(decoded.iter().any(|u| u.is_err()), "cut at {cut}");
        }
        // A huge count in a short batch allocates nothing much.
        let mut huge = bytes[..HEADER_BYTES].to_vec();
        huge[18..22].copy_from_slice(&u32::MAX.to_be_bytes());
        let (_, decoded) = decode(&huge).expect("header");
        assert_eq!(decoded.len(), 1);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn update() -> impl Strategy<Value = Update> {
        let window = (0u64..1_000).prop_map(|w| 1_767_225_600_000 + w * 60_000);
        let hashes = proptest::collection::vec(any::<u64>(), 0..40);
        let congestion = (
            "[a-z0-9-]{1,20}",
            0u64..1_000,
            0i64..1 << 40,
            hashes.clone(),
        )
            .prop_map(|(segment, extra, speed_sum, h)| {
                let sketch = Sketch::of(h);
                let vehicles = sketch.estimate();
                Part::Congestion {
                    segment,
                    partial: CongestionPartial {
                        samples: vehicles + extra,
                        speed_sum,
                        vehicles,
                        sketch,
                    },
                }
            });
        let charging = (
            "[a-z0-9-]{1,20}",
            any::<u64>(),
            any::<i64>(),
            proptest::collection::btree_set(0u32..64, 0..8),
        )
            .prop_map(|(charger, energy_wh, mean_power_mw, set)| {
                let connectors: Vec<u32> = set.into_iter().collect();
                let n = connectors.len() as u32;
                Part::Charging {
                    charger,
                    partial: ChargingPartial {
                        charging: Charging {
                            energy_wh,
                            mean_power_mw,
                            occupied: n / 2,
                            faulted: n - n / 2,
                        },
                        connectors,
                    },
                }
            });
        (window, prop_oneof![congestion, charging]).prop_map(|(window_start_ms, part)| Update {
            window_start_ms,
            part,
        })
    }

    proptest! {
        #[test]
        fn batches_round_trip(updates in proptest::collection::vec(update(), 0..20), mark in any::<u64>()) {
            let header = Header { window_ms: 60_000, position_resolution: None, watermark_ms: mark };
            let mut bytes = Vec::new();
            encode(&header, &updates, &mut bytes);
            let (h, decoded) = decode(&bytes).expect("header");
            prop_assert_eq!(h, header);
            let decoded: Vec<Update> = decoded.into_iter().map(|u| u.expect("valid")).collect();
            prop_assert_eq!(decoded, updates);
        }

        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn damaged_batches_decode_without_panic(
            updates in proptest::collection::vec(update(), 1..6),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let header = Header { window_ms: 60_000, position_resolution: None, watermark_ms: 0 };
            let mut bytes = Vec::new();
            encode(&header, &updates, &mut bytes);
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            if let Ok((_, decoded)) = decode(&bytes) {
                // Whatever decodes is a valid update.
                for u in decoded.into_iter().flatten() {
                    prop_assert_eq!(u.window_start_ms % 60_000, 0);
                }
            }
        }
    }
}
