//! The matching operator's logic (`Fleet`) driven as the dataflow would.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::geo::hmm::synthetic::{Grid, GridSettings};
use crate::geo::hmm::{match_all, HmmSettings};

const LATENESS_MS: u64 = 5_000;

fn spec() -> TimeSpec {
    TimeSpec::new(
        Duration::from_secs(60),
        Duration::from_millis(LATENESS_MS),
        Duration::from_secs(900),
    )
}

/// A small grid, its HMM and `vehicles` noisy drives as fix records,
/// some fixes teleported 500 m when `teleports`.
fn drives(lag_ms: u64, vehicles: u32, seed: u64, teleports: bool) -> (Arc<Hmm>, Vec<FixRecord>) {
    let grid = Grid::new(
        &GridSettings {
            columns: 5,
            rows: 5,
            ..GridSettings::default()
        },
        seed,
    );
    let settings = HmmSettings {
        lag_ms,
        ..HmmSettings::default()
    };
    let hmm = Arc::new(Hmm::new(&grid.lines, settings).expect("grid builds"));
    let mut recs = Vec::new();
    for (v, samples) in grid
        .drive(vehicles, 150, 1000, 12.0, seed)
        .iter()
        .enumerate()
    {
        for (i, s) in samples.iter().enumerate() {
            let mut lat = s.fix.lat;
            if teleports && (i * 7 + v) % 53 == 0 {
                lat += 500.0 / 111_195.0;
            }
            recs.push(FixRecord {
                device: v as u64,
                vehicle: 1000 + v as u64,
                ts: s.fix.ts_ms,
                lon: s.fix.lon,
                lat,
                heading: s.fix.heading_deg,
                speed: crate::aggregate::speed_fixed(s.speed_mps),
            });
        }
    }
    (hmm, recs)
}

/// What the vehicles' fixes in order decide: the congestion inputs.
fn expected(hmm: &Hmm, recs: &[FixRecord]) -> BTreeMap<CongestionKey, SpeedSum> {
    let spec = spec();
    let mut by: BTreeMap<u64, Vec<FixRecord>> = BTreeMap::new();
    for r in recs {
        by.entry(r.device).or_default().push(*r);
    }
    let mut out = BTreeMap::new();
    for (_, mut v) in by {
        v.sort_by_key(FixRecord::key);
        let fixes: Vec<Fix> = v.iter().map(FixRecord::fix).collect();
        for d in match_all(hmm, &fixes).expect("sorted") {
            if let Ok(seg) = d.result {
                let r = &v[d.index as usize];
                let s: &mut SpeedSum = out
                    .entry(((seg, spec.window_start(r.ts)), r.vehicle))
                    .or_default();
                s.count += 1;
                s.sum += r.speed;
            }
        }
    }
    out
}

/// The net of the fleet's updates before retirement; and how many
/// were made at or after their window's end (corrections).
fn net(updates: &[(CongestionKey, u64, SpeedSum)]) -> (BTreeMap<CongestionKey, SpeedSum>, usize) {
    let spec = spec();
    let mut out: BTreeMap<CongestionKey, SpeedSum> = BTreeMap::new();
    let mut after_end = 0;
    for (key, time, s) in updates {
        let window = (key.0).1;
        if *time >= spec.retire_at(window) {
            continue;
        }
        if *time >= spec.window_end(window) {
            after_end += 1;
        }
        *out.entry(*key).or_default() += s;
    }
    out.retain(|_, s| s.count != 0 || s.sum != 0);
    (out, after_end)
}

/// Feeds `recs` as the dataflow would: each arrives `delay` after its
/// event time (less than the allowed lateness; with `late`, one in 20
/// up to 40 s later: behind the watermark, some after their window is
/// final), in batches of `batch_ms` of arrival, stamped with the
/// watermark then.
fn feed(
    hmm: Arc<Hmm>,
    recs: &[FixRecord],
    seed: u64,
    batch_ms: u64,
    late: bool,
) -> (Vec<(CongestionKey, u64, SpeedSum)>, Fleet, u64) {
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut arrivals: Vec<(u64, u64, FixRecord)> = recs
        .iter()
        .map(|r| {
            let delay = if late && next() % 20 == 0 {
                LATENESS_MS + next() % 35_000
            } else {
                next() % LATENESS_MS
            };
            (r.ts + delay, next(), *r)
        })
        .collect();
    arrivals.sort_by_key(|a| (a.0, a.1));
    let lag = hmm.settings().lag_ms;
    let mut fleet = Fleet::new(Arc::new(Reference::default()), hmm, spec());
    let mut changes = Changes::default();
    // What the operator's capability would be held at.
    let mut behind = 0;
    let mut updates = Vec::new();
    let mut i = 0;
    while i < arrivals.len() {
        let clock = arrivals[i].0 - arrivals[i].0 % batch_ms;
        let n = arrivals[i..]
            .iter()
            .take_while(|a| a.0 < clock + batch_ms)
            .count();
        let batch: Vec<FixRecord> = arrivals[i..i + n].iter().map(|a| a.2).collect();
        i += n;
        // The batch's time: the watermark (its clock less the lateness)
        // when it was taken; complete once the frontier passes it.
        let time = clock.saturating_sub(LATENESS_MS);
        changes.now = time.min(behind);
        fleet.add(batch, &mut changes);
        fleet.advance(Some(time + batch_ms), &mut changes);
        updates.extend(changes.drain());
        behind = (time + batch_ms).saturating_sub(lag);
    }
    // The input ends: the operator still holds its last time.
    fleet.advance(None, &mut changes);
    updates.extend(changes.drain());
    (updates, fleet, changes.counts.retaken)
}

#[test]
fn every_fix_of_a_window_is_decided_before_the_window_is_final() {
    let (hmm, recs) = drives(4_000, 6, 11, false);
    let (updates, fleet, _) = feed(hmm.clone(), &recs, 5, 1_000, false);
    let (got, after_end) = net(&updates);
    assert_eq!(got, expected(&hmm, &recs));
    assert_eq!(after_end, 0, "decisions made after their window ended");
    assert_eq!(fleet.vehicles(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Arrival order within the allowed lateness and batching change
    /// no final decision: the net updates equal the in-order match.
    #[test]
    fn arrival_order_and_batching_change_nothing(
        seed in 0u64..1000,
        lag in prop_oneof![Just(0u64), Just(2_000), Just(4_000), Just(5_000)],
        batch_ms in prop_oneof![Just(1_000u64), Just(3_000), Just(60_000)],
        teleports in any::<bool>(),
        late in any::<bool>(),
    ) {
        let (hmm, recs) = drives(lag, 5, seed, teleports);
        let (updates, fleet, retaken) = feed(hmm.clone(), &recs, seed, batch_ms, late);
        let (got, _) = net(&updates);
        // Independent delays put a vehicle's fixes out of order too: with
        // batches of a few seconds, hundreds of neighbouring fixes straddle
        // a batch's edge, so some are taken after a later one. A minute's
        // batch has two or three edges in these drives and may have none
        // straddled (seed 342 has none), so it proves nothing either way.
        if batch_ms <= 3_000 {
            prop_assert!(retaken > 0, "no fix was taken out of order");
        }
        prop_assert_eq!(got, expected(&hmm, &recs));
        prop_assert_eq!(fleet.vehicles(), 0);
    }
}
