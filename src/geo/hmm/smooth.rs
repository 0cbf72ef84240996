//! Where along its road a decided fix is: the junction notion, with the
//! trajectory's help.
//!
//! A fix's own projection onto its segment is off along the road by the
//! full GNSS error (σ), so near a segment's end the point rule ("beyond an
//! end: a junction") flips on noise. Along the decoded path the vehicle's
//! position is smooth in time: the fixes of the path within
//! [`super::HmmSettings::smooth_back_ms`] before the fix and up to its
//! lag after it are laid on one axis (route distance along the path,
//! through the route table), and a Rauch-Tung-Striebel smoother with a
//! constant-velocity model (acceleration noise
//! [`super::HmmSettings::accel_mps2`], measurement noise estimated from
//! the same fixes' distances from their roads: clean positions are
//! trusted, noisy ones smoothed)
//! estimates the fix's position on that axis. The fix is on the path's
//! segment whose stretch of the axis holds the estimate (its own, or the
//! path's segment just before or after it); between two stretches it is in
//! a junction ([`Reason::Junction`]), as [`crate::geo::Matcher::locate`]
//! would say of a fix there.

use super::{Hmm, Reason};

/// A decoded fix on the path: time, segment, and its unclamped offset
/// (negative or past the segment's length when it projects beyond an end).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Pt {
    pub(crate) ts: u64,
    pub(crate) seg: u32,
    pub(crate) raw: f64,
    /// Distance from the segment's line.
    pub(crate) perp: f64,
}

/// A fix whose own projection is this many σ inside its segment from
/// both ends is on it without smoothing (the smoothed position differs
/// from the fix's by about σ; on Karhula at σ = 10 m no decision changed
/// at 4).
pub(crate) const INSIDE_SIGMAS: f64 = 4.0;

/// Most points one estimate uses (older ones are left out).
pub(crate) const MAX_POINTS: usize = 32;

/// The decision for `pts[at]`, by the rule of the module doc.
pub(crate) fn refine(hmm: &Hmm, pts: &[Pt], at: usize) -> Result<u32, Reason> {
    let me = pts[at];
    let s = &hmm.settings;
    let slack = s.end_slack_m;
    let net = &hmm.net;
    let len = |seg: u32| net.pieces.seg_len[seg as usize];
    if s.accel_mps2 <= 0.0 || pts.len() < 2 {
        return plain(me, len(me.seg), slack);
    }
    // Deep inside its segment the fix stays on it: the smoothing moves a
    // position along the road by about the noise, and only decides near
    // an end.
    let inside = INSIDE_SIGMAS * s.sigma_m;
    if me.raw >= inside && me.raw <= len(me.seg) - inside {
        return Ok(me.seg);
    }
    // The axis: u of each point; a segment's stretch starts at u - raw.
    let mut u = [0.0f64; MAX_POINTS];
    let (mut lo, mut hi) = (at, at);
    u[0] = me.raw;
    while hi + 1 < pts.len() && hi + 1 - lo < MAX_POINTS {
        let (p, q) = (pts[hi], pts[hi + 1]);
        let Some(d) = step(hmm, p, q) else { break };
        u[hi + 1 - lo] = u[hi - lo] + d;
        hi += 1;
    }
    while lo > 0 && hi + 1 - lo < MAX_POINTS {
        let (p, q) = (pts[lo - 1], pts[lo]);
        let Some(d) = step(hmm, p, q) else { break };
        u.copy_within(0..hi + 1 - lo, 1);
        u[0] = u[1] - d;
        lo -= 1;
    }
    let window = &pts[lo..=hi];
    let us = &u[..window.len()];
    if window.len() < 2 {
        return plain(me, len(me.seg), slack);
    }
    let est = smooth(window, us, at - lo, noise(window), s.accel_mps2);
    let base = us[at - lo] - me.raw;
    if est >= base - slack && est <= base + len(me.seg) + slack {
        return Ok(me.seg);
    }
    // The path's segment just before or just after.
    let before = (0..at - lo).rev().find(|&k| window[k].seg != me.seg);
    let after = (at - lo + 1..window.len()).find(|&k| window[k].seg != me.seg);
    for k in [before, after].into_iter().flatten() {
        let p = window[k];
        let b = us[k] - p.raw;
        if est >= b - slack && est <= b + len(p.seg) + slack {
            return Ok(p.seg);
        }
    }
    Err(Reason::Junction)
}

/// The GNSS noise σ the path shows: from the median squared distance of
/// its fixes from their roads' lines (the median of a squared N(0, σ) is
/// 0.455 σ²; the median, because a fix turning in a junction is far from
/// the line it left), at least 1 m (lanes, geometry).
fn noise(window: &[Pt]) -> f64 {
    let mut d2 = [0.0f64; MAX_POINTS];
    for (d, p) in d2.iter_mut().zip(window) {
        *d = p.perp * p.perp;
    }
    let d2 = &mut d2[..window.len()];
    d2.sort_unstable_by(f64::total_cmp);
    let n = d2.len();
    let median = if n % 2 == 1 {
        d2[n / 2]
    } else {
        (d2[n / 2 - 1] + d2[n / 2]) / 2.0
    };
    (median / 0.455).sqrt().max(1.0)
}

/// The point rule: beyond an end is a junction.
fn plain(me: Pt, len: f64, slack: f64) -> Result<u32, Reason> {
    if me.raw < -slack || me.raw > len + slack {
        Err(Reason::Junction)
    } else {
        Ok(me.seg)
    }
}

/// Route distance along the path from `p` to `q` (may be negative on one
/// segment: noise).
fn step(hmm: &Hmm, p: Pt, q: Pt) -> Option<f64> {
    if p.seg == q.seg {
        return Some(q.raw - p.raw);
    }
    let net = &hmm.net;
    let mid = hmm
        .table
        .get(net.seg_to[p.seg as usize], net.seg_from[q.seg as usize])?;
    Some(net.pieces.seg_len[p.seg as usize] - p.raw + mid + q.raw)
}

/// RTS smoother with a constant-velocity model: the position at `at`.
fn smooth(pts: &[Pt], z: &[f64], at: usize, sigma: f64, accel: f64) -> f64 {
    type V = [f64; 2];
    type M = [[f64; 2]; 2];
    let r = sigma * sigma;
    let q = accel * accel;
    let n = pts.len();
    let mut xf = [[0.0; 2]; MAX_POINTS];
    let mut pf = [[[0.0; 2]; 2]; MAX_POINTS];
    let mut xp = [[0.0; 2]; MAX_POINTS];
    let mut pp = [[[0.0; 2]; 2]; MAX_POINTS];
    let update = |x: V, p: M, z: f64| -> (V, M) {
        let s = p[0][0] + r;
        let k = [p[0][0] / s, p[1][0] / s];
        let y = z - x[0];
        let x = [x[0] + k[0] * y, x[1] + k[1] * y];
        let p = [
            [(1.0 - k[0]) * p[0][0], (1.0 - k[0]) * p[0][1]],
            [p[1][0] - k[1] * p[0][0], p[1][1] - k[1] * p[0][1]],
        ];
        (x, p)
    };
    // Speed unknown at first: 20 m/s of spread.
    xp[0] = [z[0], 0.0];
    pp[0] = [[r, 0.0], [0.0, 400.0]];
    (xf[0], pf[0]) = update(xp[0], pp[0], z[0]);
    for k in 1..n {
        let dt = pts[k].ts.saturating_sub(pts[k - 1].ts) as f64 / 1000.0;
        let (x, p) = (xf[k - 1], pf[k - 1]);
        xp[k] = [x[0] + dt * x[1], x[1]];
        let a = p[0][0] + dt * (p[1][0] + p[0][1]) + dt * dt * p[1][1];
        let b = p[0][1] + dt * p[1][1];
        let c = p[1][0] + dt * p[1][1];
        let (dt2, dt3) = (dt * dt, dt * dt * dt);
        pp[k] = [
            [a + q * dt2 * dt2 / 4.0, b + q * dt3 / 2.0],
            [c + q * dt3 / 2.0, p[1][1] + q * dt2],
        ];
        (xf[k], pf[k]) = update(xp[k], pp[k], z[k]);
    }
    // Backward: x_s(k) = x_f(k) + C (x_s(k+1) - x_p(k+1)), C = P_f F' P_p⁻¹.
    let mut xs = xf[n - 1];
    for k in (at..n - 1).rev() {
        let dt = pts[k + 1].ts.saturating_sub(pts[k].ts) as f64 / 1000.0;
        let p = pf[k];
        // P_f F' with F = [[1, dt], [0, 1]].
        let pft = [
            [p[0][0] + dt * p[0][1], p[0][1]],
            [p[1][0] + dt * p[1][1], p[1][1]],
        ];
        let m = pp[k + 1];
        let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
        if det.abs() < 1e-12 {
            xs = xf[k];
            continue;
        }
        let inv = [
            [m[1][1] / det, -m[0][1] / det],
            [-m[1][0] / det, m[0][0] / det],
        ];
        let c = [
            [
                pft[0][0] * inv[0][0] + pft[0][1] * inv[1][0],
                pft[0][0] * inv[0][1] + pft[0][1] * inv[1][1],
            ],
            [
                pft[1][0] * inv[0][0] + pft[1][1] * inv[1][0],
                pft[1][0] * inv[0][1] + pft[1][1] * inv[1][1],
            ],
        ];
        let d = [xs[0] - xp[k + 1][0], xs[1] - xp[k + 1][1]];
        xs = [
            xf[k][0] + c[0][0] * d[0] + c[0][1] * d[1],
            xf[k][1] + c[1][0] * d[0] + c[1][1] * d[1],
        ];
    }
    xs[0]
}
