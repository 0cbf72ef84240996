//! Codecs for telemetry records: JSON Lines and CBOR (RFC 8949).
//!
//! Both decode into the same [`RawRecord`] wire shape and go through the same
//! validation, so a record means the same whatever its encoding.
//!
//! * **JSON Lines**: one JSON object per line (TELEMETRY.md §1). Decoding
//!   borrows strings from the line: no allocation for unescaped strings.
//! * **CBOR**: each record is one CBOR map with the same text keys and value
//!   types as the JSON object (`{"type": "vehicle", "vehicle_id": ..., ...}`);
//!   a batch is a CBOR sequence (RFC 8742): items back to back, no framing.
//!   Any standard CBOR library produces it (Python `cbor2.dumps(dict)`,
//!   C `tinycbor`/`libcbor`). Integers may be sent as CBOR integers or floats.
//!
//! Decoders never panic. A JSON line is independent of the others, so a bad
//! line costs only itself. In a CBOR sequence an item that is well-formed
//! CBOR but not a valid record costs only itself; bytes that are not
//! well-formed CBOR end the sequence ([`CborItem::Fatal`]), because item
//! boundaries can no longer be found.

use crate::model::{RawRecord, Record, RecordError, RejectReason};

/// Decodes and validates one JSON Lines line (without its newline).
pub fn decode_json(line: &[u8]) -> Result<Record<'_>, RecordError> {
    // serde would also take a JSON array as a positional struct; the
    // contract says object.
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match std::str::from_utf8(line) {
            Err(e) => RecordError::record(
                RejectReason::InvalidUtf8,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            ),
            Ok(_) if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok() => {
                RecordError::record(RejectReason::WrongType, "expected a JSON object")
            }
            Ok(_) => RecordError::record(RejectReason::Syntax, "not valid JSON"),
        });
    }
    match serde_json::from_slice::<RawRecord>(line) {
        Ok(raw) => raw.validate(),
        Err(err) => Err(explain_json_error(line, err)),
    }
}

/// Turns a serde_json error into a [`RecordError`] that names the field.
/// Only runs on the error path, so it may parse the line a second time.
fn explain_json_error(line: &[u8], err: serde_json::Error) -> RecordError {
    if let Err(utf8) = std::str::from_utf8(line) {
        return RecordError::record(
            RejectReason::InvalidUtf8,
            format!("invalid UTF-8 at byte {}", utf8.valid_up_to()),
        );
    }
    if !err.is_data() {
        return RecordError::record(RejectReason::Syntax, format!("not valid JSON: {err}"));
    }
    let mut de = serde_json::Deserializer::from_slice(line);
    match serde_path_to_error::deserialize::<_, RawRecord>(&mut de) {
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                RecordError::record(
                    RejectReason::WrongType,
                    format!("expected a JSON object: {inner}"),
                )
            } else {
                RecordError::field(RejectReason::WrongType, &path, inner.to_string())
            }
        }
        Ok(_) => RecordError::record(RejectReason::WrongType, err.to_string()),
    }
}

/// Encodes a record as one JSON line (no trailing newline).
pub fn encode_json(record: &Record<'_>) -> Vec<u8> {
    // Serializing plain structs of strings and finite numbers cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}

/// Encodes a record as one CBOR item (a map with text keys).
pub fn encode_cbor(record: &Record<'_>) -> Vec<u8> {
    // Writing into a Vec is infallible.
    minicbor_serde::to_vec(record).unwrap_or_default()
}

/// Decodes and validates one CBOR item that spans all of `bytes`.
pub fn decode_cbor(bytes: &[u8]) -> Result<Record<'_>, RecordError> {
    // Major type 5 (map); serde would also take an array positionally.
    if bytes.first().map(|b| b >> 5) != Some(5) {
        return Err(RecordError::record(
            RejectReason::WrongType,
            "expected a CBOR map",
        ));
    }
    let mut de = minicbor_serde::Deserializer::new(bytes);
    let raw: RawRecord = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            RecordError::record(
                RejectReason::WrongType,
                format!("expected a CBOR map: {inner}"),
            )
        } else {
            RecordError::field(RejectReason::WrongType, &path, inner.to_string())
        }
    })?;
    if de.decoder().position() != bytes.len() {
        return Err(RecordError::record(
            RejectReason::Syntax,
            "trailing bytes after the CBOR item",
        ));
    }
    raw.validate()
}

/// One step of a CBOR sequence.
#[derive(Debug)]
pub enum CborItem<'a> {
    /// A valid record.
    Record(Record<'a>),
    /// A well-formed item that is not a valid record; the sequence goes on.
    Invalid(RecordError),
    /// Bytes that are not well-formed CBOR: the rest cannot be read.
    Fatal(RecordError),
}

/// Iterates over the items of a CBOR sequence (RFC 8742).
pub fn cbor_sequence(bytes: &[u8]) -> impl Iterator<Item = CborItem<'_>> {
    cbor_items(bytes).map(|(_, item)| item)
}

/// Iterates over the items of a CBOR sequence with the byte range of each.
pub fn cbor_items(bytes: &[u8]) -> impl Iterator<Item = (std::ops::Range<usize>, CborItem<'_>)> {
    let mut pos = 0usize;
    let mut done = false;
    std::iter::from_fn(move || {
        if done || pos >= bytes.len() {
            return None;
        }
        let mut d = minicbor::Decoder::new(&bytes[pos..]);
        // A break code (0xff) outside an indefinite-length item is not
        // well-formed CBOR (RFC 8949 §3.2.1), whatever a decoder skips.
        let skipped = if bytes[pos] == 0xff {
            Err(minicbor::decode::Error::message(
                "a break code outside an indefinite-length item",
            ))
        } else {
            d.skip()
        };
        match skipped {
            Ok(()) => {
                let range = pos..pos + d.position();
                pos = range.end;
                let item = match decode_cbor(&bytes[range.clone()]) {
                    Ok(r) => CborItem::Record(r),
                    Err(e) => CborItem::Invalid(e),
                };
                Some((range, item))
            }
            Err(e) => {
                done = true;
                Some((
                    pos..bytes.len(),
                    CborItem::Fatal(RecordError::record(
                        RejectReason::Syntax,
                        format!("malformed CBOR at byte {pos}: {e}"),
                    )),
                ))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConnectorStatus;

    const VEHICLE: &str = r#"{"type":"vehicle","vehicle_id":"v-000042","ts_ms":1767258000000,"lat":60.16952,"lon":24.93545,"speed_mps":12.4,"heading_deg":87.0,"segment_id":"-2345#1","ev":{"soc_pct":54.2}}"#;
    const CHARGER: &str = r#"{"type":"charger","charger_id":"cs-kamppi-1","connector":1,"ts_ms":1767258000000,"status":"Occupied","power_kw":48.5,"energy_wh":1234567}"#;

    #[test]
    fn a_lone_break_code_is_malformed_cbor_and_ends_the_batch() {
        let mut bytes = vec![0xff];
        bytes.extend_from_slice(&[0xa0]);
        let items: Vec<_> = cbor_items(&bytes).collect();
        assert_eq!(items.len(), 1);
        match &items[0].1 {
            CborItem::Fatal(e) => assert_eq!(e.reason, RejectReason::Syntax),
            _ => panic!("expected the batch to end"),
        }
    }

    #[test]
    fn decodes_the_contract_examples() {
        let Ok(Record::Vehicle(v)) = decode_json(VEHICLE.as_bytes()) else {
            panic!("vehicle")
        };
        assert_eq!(v.vehicle_id, "v-000042");
        assert_eq!(v.segment_id.as_deref(), Some("-2345#1"));
        assert!(matches!(v.vehicle_id, std::borrow::Cow::Borrowed(_)));
        let Ok(Record::Charger(c)) = decode_json(CHARGER.as_bytes()) else {
            panic!("charger")
        };
        assert_eq!(
            (c.connector, c.status, c.energy_wh),
            (1, ConnectorStatus::Occupied, 1234567)
        );
    }

    #[test]
    fn json_and_cbor_round_trip() {
        for line in [VEHICLE, CHARGER] {
            let rec = decode_json(line.as_bytes()).expect("valid");
            let json = encode_json(&rec);
            let again = decode_json(&json).expect("json round trip");
            assert_eq!(rec, again);
            let cbor = encode_cbor(&rec);
            assert_eq!(decode_cbor(&cbor).expect("cbor round trip"), rec);
        }
    }

    #[test]
    fn cbor_sequence_skips_invalid_items_and_stops_on_garbage() {
        let v = decode_json(VEHICLE.as_bytes()).expect("valid");
        let mut seq = encode_cbor(&v);
        // A well-formed item that is not a record: the text string "x".
        seq.extend_from_slice(&[0x61, b'x']);
        seq.extend(encode_cbor(&v));
        // Additional information 28 is reserved in every major type: malformed.
        seq.push(0x1c);
        let items: Vec<_> = cbor_sequence(&seq).collect();
        assert_eq!(items.len(), 4);
        assert!(matches!(items[0], CborItem::Record(_)));
        assert!(matches!(&items[1], CborItem::Invalid(e) if e.reason == RejectReason::WrongType));
        assert!(matches!(items[2], CborItem::Record(_)));
        assert!(matches!(items[3], CborItem::Fatal(_)));
    }

    #[test]
    fn cbor_map_written_by_hand_decodes() {
        // {"type":"charger","charger_id":"c1","connector":2,"ts_ms":1767258000000,
        //  "status":"Faulted","power_kw":0,"energy_wh":10}, as a C client writes it.
        let mut b = vec![0xa7];
        let text = |b: &mut Vec<u8>, s: &str| {
            b.push(0x60 + s.len() as u8);
            b.extend_from_slice(s.as_bytes());
        };
        text(&mut b, "type");
        text(&mut b, "charger");
        text(&mut b, "charger_id");
        text(&mut b, "c1");
        text(&mut b, "connector");
        b.push(0x02);
        text(&mut b, "ts_ms");
        b.push(0x1b);
        b.extend_from_slice(&1_767_258_000_000u64.to_be_bytes());
        text(&mut b, "status");
        text(&mut b, "Faulted");
        text(&mut b, "power_kw");
        b.push(0x00);
        text(&mut b, "energy_wh");
        b.push(0x0a);
        let Ok(Record::Charger(c)) = decode_cbor(&b) else {
            panic!("decodes")
        };
        assert_eq!(
            (c.connector, c.status, c.energy_wh),
            (2, ConnectorStatus::Faulted, 10)
        );
    }

    #[test]
    fn errors_name_field_and_reason() {
        let cases: &[(&[u8], RejectReason, Option<&str>)] = &[
            (b"not json", RejectReason::Syntax, None),
            (b"[1,2]", RejectReason::WrongType, None),
            (br#"{"type":"vehicle","vehicle_id":"v1","ts_ms":"soon","lat":1,"lon":1,"speed_mps":1}"#, RejectReason::WrongType, Some("ts_ms")),
            (br#"{"type":"vehicle","vehicle_id":"v1","lat":1,"lon":1,"speed_mps":1}"#, RejectReason::MissingField, Some("ts_ms")),
            (br#"{"type":"vehicle","vehicle_id":"v1","ts_ms":1767258000000,"lat":1,"lon":1,"speed_mps":-1}"#, RejectReason::OutOfRange, Some("speed_mps")),
            (br#"{"type":"vehicle","vehicle_id":"v1","ts_ms":1767258000000,"lat":1,"lon":1,"speed_mps":1e400}"#, RejectReason::Syntax, None),
            (br#"{"type":"vehicle","vehicle_id":"v 1","ts_ms":1767258000000,"lat":1,"lon":1,"speed_mps":1}"#, RejectReason::InvalidId, Some("vehicle_id")),
            (br#"{"type":"vehicle","vehicle_id":"v1","ts_ms":1767258000000,"lat":1,"lon":1,"speed_mps":1,"ev":{"soc_pct":101}}"#, RejectReason::OutOfRange, Some("ev.soc_pct")),
            (br#"{"type":"bus"}"#, RejectReason::UnknownType, Some("type")),
            (br#"{"type":"charger","charger_id":"c","connector":1,"ts_ms":1767258000000,"status":"Charging","power_kw":1,"energy_wh":1}"#, RejectReason::UnknownStatus, Some("status")),
            (br#"{"type":"charger","charger_id":"c","connector":1,"ts_ms":1767258000000,"status":"Occupied","power_kw":1,"energy_wh":1.5}"#, RejectReason::OutOfRange, Some("energy_wh")),
            (b"{\"type\":\"vehicle\",\"vehicle_id\":\"v\xff\"}", RejectReason::InvalidUtf8, None),
        ];
        for (line, reason, field) in cases {
            let err = decode_json(line).expect_err(&String::from_utf8_lossy(line));
            assert_eq!(
                err.reason,
                *reason,
                "{}: {err}",
                String::from_utf8_lossy(line)
            );
            assert_eq!(
                err.field.as_deref(),
                *field,
                "{}: {err}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
