//! The model's pieces shared by [`super::Track`] and [`super::match_all`]:
//! candidates, emission, transition, one Viterbi step, and the batch
//! decoder that is the reference.

use super::smooth::{refine, Pt};
use super::{Decision, Fix, Hmm, HmmSettings, Reason, MAX_CANDIDATES};

/// Constants derived from the settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Coefficients {
    /// `1 / 2σ²`.
    emit: f64,
    /// von Mises concentration `1 / σh²` (radians), 0 without headings.
    kappa: f64,
    inv_beta: f64,
    radius: f64,
    k: usize,
    back_tol: f64,
    max_speed: f64,
    margin: f64,
}

impl Coefficients {
    pub(crate) fn new(s: &HmmSettings) -> Self {
        let h = s.heading_sigma_deg.to_radians();
        Coefficients {
            emit: 1.0 / (2.0 * s.sigma_m * s.sigma_m),
            kappa: if h > 0.0 { 1.0 / (h * h) } else { 0.0 },
            inv_beta: 1.0 / s.beta_m,
            radius: s.radius_m,
            k: s.max_candidates.clamp(1, MAX_CANDIDATES),
            back_tol: s.backward_tolerance_m,
            max_speed: s.max_speed_mps,
            margin: s.emission_margin,
        }
    }
}

/// A candidate road position of a fix.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Cand {
    pub(crate) seg: u32,
    /// Offset along the segment, metres (clamped to it).
    pub(crate) off: f64,
    /// Perpendicular distance, metres (ordering key).
    pub(crate) dist: f64,
    /// Offset, unclamped where the fix projects beyond an end.
    pub(crate) raw: f64,
    /// Distance from the segment's line (extended beyond its ends).
    pub(crate) perp: f64,
    /// Emission log-likelihood.
    pub(crate) emit: f64,
}

/// A fix's candidates, nearest first, and its position.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layer {
    pub(crate) n: usize,
    pub(crate) c: [Cand; MAX_CANDIDATES],
    pub(crate) xy: [f64; 2],
    pub(crate) ts: u64,
}

/// Log-probabilities of a layer's candidates.
pub(crate) type Scores = [f64; MAX_CANDIDATES];
/// Back pointers of a layer's candidates into the previous live layer.
pub(crate) type Back = [u8; MAX_CANDIDATES];

impl Layer {
    /// The candidates of `fix` on `hmm`'s network.
    pub(crate) fn of(hmm: &Hmm, fix: &Fix) -> Layer {
        let net = &hmm.net;
        let k = &hmm.k;
        let p = net.project(fix.lon, fix.lat);
        let heading = fix.heading_deg.filter(|h| h.is_finite()).map(|h| {
            let h = h.to_radians();
            [h.sin(), h.cos()]
        });
        let mut layer = Layer {
            n: 0,
            c: [Cand::default(); MAX_CANDIDATES],
            xy: p,
            ts: fix.ts_ms,
        };
        if !(p[0].is_finite() && p[1].is_finite()) {
            return layer;
        }
        // The nearest position per segment, the `k` nearest segments.
        let mut cos = [0.0f64; MAX_CANDIDATES];
        let r2 = k.radius * k.radius;
        for piece in net.pieces.near(p) {
            let (along, d2) = piece.project2(p);
            if d2 > r2 {
                continue;
            }
            let dist = d2.sqrt();
            let t = along.clamp(0.0, piece.len);
            let outside = (piece.first && along < 0.0) || (piece.last && along > piece.len);
            let cand = Cand {
                seg: piece.segment,
                off: piece.at + t,
                dist,
                raw: piece.at + if outside { along } else { t },
                perp: if outside {
                    piece.line_distance(p)
                } else {
                    dist
                },
                emit: 0.0,
            };
            let c = heading.map_or(1.0, |h| h[0] * piece.dir[0] + h[1] * piece.dir[1]);
            layer.offer(cand, c, &mut cos, k.k);
        }
        let mut top = f64::NEG_INFINITY;
        for (c, cos) in layer.c.iter_mut().zip(cos).take(layer.n) {
            c.emit = -c.dist * c.dist * k.emit + k.kappa * (cos - 1.0);
            top = top.max(c.emit);
        }
        // Candidates far less likely than the fix's best are dropped
        // (nearest first order kept).
        let floor = top - k.margin;
        let mut kept = 0;
        for i in 0..layer.n {
            if layer.c[i].emit >= floor {
                layer.c[kept] = layer.c[i];
                kept += 1;
            }
        }
        layer.n = kept;
        layer
    }

    /// Keeps `cand` if it is among the `k` nearest (one per segment).
    #[inline]
    fn offer(&mut self, cand: Cand, cos: f64, coss: &mut [f64; MAX_CANDIDATES], k: usize) {
        let better = |a: &Cand, b: &Cand| {
            (a.dist, a.seg, a.off.to_bits()) < (b.dist, b.seg, b.off.to_bits())
        };
        // The same segment already in: keep the nearer.
        let mut at = self.n;
        if let Some(i) = self.c[..self.n].iter().position(|c| c.seg == cand.seg) {
            if !better(&cand, &self.c[i]) {
                return;
            }
            // Remove it, then insert in order below.
            self.c.copy_within(i + 1..self.n, i);
            coss.copy_within(i + 1..self.n, i);
            self.n -= 1;
            at = self.n;
        }
        if self.n == k {
            if !better(&cand, &self.c[k - 1]) {
                return;
            }
            self.n -= 1;
            at = self.n;
        }
        while at > 0 && better(&cand, &self.c[at - 1]) {
            self.c[at] = self.c[at - 1];
            coss[at] = coss[at - 1];
            at -= 1;
        }
        self.c[at] = cand;
        coss[at] = cos;
        self.n += 1;
    }

    /// The first candidate with the highest score.
    pub(crate) fn best(&self, scores: &Scores) -> usize {
        let mut b = 0;
        for i in 1..self.n {
            if scores[i] > scores[b] {
                b = i;
            }
        }
        b
    }

    /// Scores of a layer that starts a trajectory: emission alone.
    pub(crate) fn initial(&self, scores: &mut Scores) {
        let mut top = f64::NEG_INFINITY;
        for (s, c) in scores.iter_mut().zip(&self.c).take(self.n) {
            *s = c.emit;
            top = top.max(*s);
        }
        for s in scores.iter_mut().take(self.n) {
            *s -= top;
        }
    }
}

/// Route distance on the directed graph from `a` to `b`, if plausible
/// within the table.
#[inline]
fn route(hmm: &Hmm, a: &Cand, b: &Cand) -> Option<f64> {
    let net = &hmm.net;
    if a.seg == b.seg {
        if b.off >= a.off {
            return Some(b.off - a.off);
        }
        if a.off - b.off <= hmm.k.back_tol {
            return Some(0.0);
        }
    }
    let rest = net.pieces.seg_len[a.seg as usize] - a.off;
    let mid = hmm
        .table
        .get(net.seg_to[a.seg as usize], net.seg_from[b.seg as usize])?;
    Some(rest + mid + b.off)
}

/// One Viterbi step from `prev` (with `prev_scores`) to `cur`: fills
/// `scores` and `back`; false when no candidate of `cur` has a plausible
/// predecessor (a break).
pub(crate) fn forward(
    hmm: &Hmm,
    prev: &Layer,
    prev_scores: &Scores,
    cur: &Layer,
    scores: &mut Scores,
    back: &mut Back,
) -> bool {
    let k = &hmm.k;
    let straight = ((cur.xy[0] - prev.xy[0]).powi(2) + (cur.xy[1] - prev.xy[1]).powi(2)).sqrt();
    let dt = cur.ts.saturating_sub(prev.ts) as f64 / 1000.0;
    let longest = k.max_speed * dt + 2.0 * k.radius;
    let mut top = f64::NEG_INFINITY;
    for (j, b) in cur.c[..cur.n].iter().enumerate() {
        let (mut best, mut from) = (f64::NEG_INFINITY, 0u8);
        for (i, a) in prev.c[..prev.n].iter().enumerate() {
            // The transition only lowers a score: a state that cannot
            // beat the best so far needs no route (the same choice, ties
            // included, at a fraction of the lookups).
            if prev_scores[i] <= best {
                continue;
            }
            let Some(r) = route(hmm, a, b) else { continue };
            if r > longest {
                continue;
            }
            let s = prev_scores[i] - (r - straight).abs() * k.inv_beta;
            if s > best {
                best = s;
                from = i as u8;
            }
        }
        scores[j] = best + b.emit;
        back[j] = from;
        top = top.max(scores[j]);
    }
    if top == f64::NEG_INFINITY {
        return false;
    }
    for s in scores.iter_mut().take(cur.n) {
        *s -= top;
    }
    true
}

/// How a trajectory began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// The track's first fix with candidates (or the first after finish).
    First,
    /// After a gap longer than `max_gap_ms`.
    Gap,
    /// No plausible transition from the previous fix.
    Distance,
}

/// The reference decoder: every fix's decision from scratch, by the rule
/// of the module doc (ordered input assumed).
pub(crate) fn batch(hmm: &Hmm, fixes: &[Fix]) -> Vec<Decision> {
    struct Row {
        layer: Layer,
        scores: Scores,
        back: Back,
        traj: usize,
    }
    let s = &hmm.settings;
    let mut rows: Vec<Row> = Vec::with_capacity(fixes.len());
    // Per trajectory: how it began, its live rows.
    let mut trajs: Vec<(Start, Vec<usize>)> = Vec::new();
    let mut last_live: Option<usize> = None;
    for fix in fixes {
        let layer = Layer::of(hmm, fix);
        let mut row = Row {
            layer,
            scores: [0.0; MAX_CANDIDATES],
            back: [0; MAX_CANDIDATES],
            traj: usize::MAX,
        };
        if layer.n > 0 {
            let start = match last_live {
                None => Some(Start::First),
                Some(p) if fix.ts_ms.saturating_sub(rows[p].layer.ts) > s.max_gap_ms => {
                    Some(Start::Gap)
                }
                Some(p) => {
                    let prev = &rows[p];
                    (!forward(
                        hmm,
                        &prev.layer,
                        &prev.scores,
                        &layer,
                        &mut row.scores,
                        &mut row.back,
                    ))
                    .then_some(Start::Distance)
                }
            };
            if let Some(start) = start {
                layer.initial(&mut row.scores);
                trajs.push((start, Vec::new()));
            }
            row.traj = trajs.len() - 1;
            if let Some(t) = trajs.last_mut() {
                t.1.push(rows.len());
            }
            last_live = Some(rows.len());
        }
        rows.push(row);
    }
    let mut out = Vec::with_capacity(fixes.len());
    // Each live row's decided candidate, for the smoothing's look back.
    let mut decided = vec![0usize; rows.len()];
    let mut pts: Vec<Pt> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let result = if row.layer.n == 0 {
            Err(Reason::OffRoad)
        } else {
            let (start, lives) = &trajs[row.traj];
            let next_start = trajs.get(row.traj + 1).map(|t| t.0);
            // The last live fix of the trajectory within the lag.
            let limit = row.layer.ts.saturating_add(s.lag_ms);
            let upto = lives.partition_point(|&r| rows[r].layer.ts <= limit);
            let at = lives.partition_point(|&r| r < i);
            let mut c = rows[lives[upto - 1]]
                .layer
                .best(&rows[lives[upto - 1]].scores);
            // The path from i to there, newest first.
            pts.clear();
            for &r in lives[at..upto].iter().rev() {
                let cand = &rows[r].layer.c[c];
                pts.push(Pt {
                    ts: rows[r].layer.ts,
                    seg: cand.seg,
                    raw: cand.raw,
                    perp: cand.perp,
                });
                if r > i {
                    c = rows[r].back[c] as usize;
                }
            }
            decided[i] = c;
            let from = row.layer.ts.saturating_sub(s.smooth_back_ms);
            let back = lives[..at]
                .iter()
                .rev()
                .take_while(|&&r| rows[r].layer.ts >= from)
                .map(|&r| {
                    let cand = &rows[r].layer.c[decided[r]];
                    Pt {
                        ts: rows[r].layer.ts,
                        seg: cand.seg,
                        raw: cand.raw,
                        perp: cand.perp,
                    }
                });
            pts.extend(back);
            pts.reverse();
            let me = pts.len() - (upto - at);
            if lives.len() == 1 && *start == Start::Distance && next_start == Some(Start::Distance)
            {
                Err(Reason::Outlier)
            } else {
                refine(hmm, &pts, me)
            }
        };
        out.push(Decision {
            index: i as u64,
            ts_ms: row.layer.ts,
            result,
        });
    }
    out
}
