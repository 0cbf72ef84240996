//! Privacy of vehicles: keyed vehicle hashes, what stands for a vehicle id
//! wherever a distinct count must travel (the sketches an edge pushes to
//! central).
//!
//! A vehicle id never leaves the edge. Its hash does, inside a sketch, so
//! the hash must not let anyone who sees it find the id (ids are short and
//! guessable: a plate, a fleet number) nor follow a vehicle from day to
//! day. Hence SipHash-1-3, a keyed pseudo-random function, under a key
//! derived from the city's secret (`[privacy] vehicle_hash_key`, 32 bytes,
//! shared by all edges of a city so that their sketches merge) and the UTC
//! day of the report:
//!
//! ```text
//! day key = SHA-256("edgeflow vehicle hash v1" || secret || day as u64 LE)[0..16]
//! hash    = SipHash-1-3(day key, vehicle id bytes)
//! ```
//!
//! Windows divide a day, so every report of a window hashes under one day
//! key, and sketches of the same window merge; sketches of different days
//! share no key, so they cannot be linked. Someone with the secret can
//! test a guessed id: the secret is the city's to keep, like a token.
//!
//! What leaves a node as rows (subscriptions, the city sinks) passes
//! [`crate::aggregate::project`]: rows over fewer than
//! `privacy.min_vehicles` distinct vehicles are withheld.

use std::hash::Hasher;

use sha2::{Digest, Sha256};
use siphasher::sip::SipHasher13;

/// Milliseconds in a UTC day.
pub const DAY_MS: u64 = 86_400_000;

/// The city's secret for vehicle hashes.
#[derive(Clone, PartialEq, Eq)]
pub struct VehicleKey {
    secret: [u8; 32],
    /// Tells keys apart in the per-thread cache of day keys.
    tag: u64,
}

impl std::fmt::Debug for VehicleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VehicleKey(..)")
    }
}

thread_local! {
    /// The day hasher last used on this thread, with its key's tag: reports
    /// come nearly in event-time order, so one day's key serves millions.
    static LAST: std::cell::Cell<Option<(u64, DayHasher)>> = const { std::cell::Cell::new(None) };
}

impl VehicleKey {
    /// A key from its 32 bytes.
    pub fn new(secret: [u8; 32]) -> Self {
        let digest = Sha256::digest([b"edgeflow vehicle key tag".as_slice(), &secret].concat());
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&digest[..8]);
        VehicleKey {
            secret,
            tag: u64::from_le_bytes(tag),
        }
    }

    /// The hasher of one UTC day (days since the Unix epoch).
    pub fn day(&self, day: u64) -> DayHasher {
        let mut h = Sha256::new();
        h.update(b"edgeflow vehicle hash v1");
        h.update(self.secret);
        h.update(day.to_le_bytes());
        let d = h.finalize();
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[i..i + 8]);
            u64::from_le_bytes(b)
        };
        DayHasher {
            day,
            k0: word(0),
            k1: word(8),
        }
    }

    /// The hash of `vehicle_id` reported at `ts_ms`, under the key of
    /// that UTC day (cached per thread).
    pub fn hash(&self, vehicle_id: &str, ts_ms: u64) -> u64 {
        let day = ts_ms / DAY_MS;
        let hasher = match LAST.get() {
            Some((tag, h)) if tag == self.tag && h.day == day => h,
            _ => {
                let h = self.day(day);
                LAST.set(Some((self.tag, h)));
                h
            }
        };
        hasher.hash(vehicle_id)
    }
}

/// The vehicle hash of one day.
#[derive(Clone, Copy, Debug)]
pub struct DayHasher {
    day: u64,
    k0: u64,
    k1: u64,
}

impl DayHasher {
    /// Its day.
    pub fn day(&self) -> u64 {
        self.day
    }

    /// The hash of a vehicle id.
    pub fn hash(&self, vehicle_id: &str) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(vehicle_id.as_bytes());
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_day_same_hash_other_day_or_key_unrelated() {
        let key = VehicleKey::new([7; 32]);
        let noon = 20_000 * DAY_MS + DAY_MS / 2;
        let a = key.hash("veh-1", noon);
        assert_eq!(a, key.hash("veh-1", noon + 3_600_000));
        assert_eq!(a, key.day(20_000).hash("veh-1"));
        assert_ne!(a, key.hash("veh-1", noon + DAY_MS));
        assert_ne!(a, key.hash("veh-2", noon));
        // Another key, alternating on one thread: the cache tells them apart.
        let other = VehicleKey::new([8; 32]);
        assert_ne!(a, other.hash("veh-1", noon));
        assert_eq!(a, key.hash("veh-1", noon));
    }

    #[test]
    fn the_hash_is_pinned() {
        // A city's edges of different builds must agree: the derivation
        // above is a format.
        let h = VehicleKey::new([0; 32]).day(0).hash("veh-1");
        assert_eq!(h, PINNED);
    }

    const PINNED: u64 = 10_686_143_978_657_179_657;
}
