//! One vehicle's incremental fixed-lag decoder.
//!
//! State: the last fix with candidates (its layer and scores) and the
//! undecided fixes of the current trajectory (segments, junction bits and
//! back pointers: about 100 bytes each), so it is bounded by the lag and
//! is cheap to clone: a caller snapshots a track and recomputes from the
//! snapshot when a late fix arrives. Decisions come out in fix order.

use std::collections::VecDeque;

use super::smooth::{refine, Pt};
use super::viterbi::{forward, Back, Layer, Scores, Start};
use super::{Decision, Fix, Hmm, HmmError, Reason, MAX_CANDIDATES};

/// An undecided fix: what backtracking and deciding need of it.
#[derive(Clone, Copy, Debug)]
struct Step {
    index: u64,
    ts: u64,
    /// Candidates (0: off the road).
    n: u8,
    segs: [u32; MAX_CANDIDATES],
    /// Unclamped offsets, distances from the line.
    raws: [f64; MAX_CANDIDATES],
    perps: [f64; MAX_CANDIDATES],
    back: Back,
}

impl Step {
    fn new(index: u64, layer: &Layer, back: &Back) -> Self {
        let mut step = Step {
            index,
            ts: layer.ts,
            n: layer.n as u8,
            segs: [0; MAX_CANDIDATES],
            raws: [0.0; MAX_CANDIDATES],
            perps: [0.0; MAX_CANDIDATES],
            back: *back,
        };
        for (i, c) in layer.c[..layer.n].iter().enumerate() {
            step.segs[i] = c.seg;
            step.raws[i] = c.raw;
            step.perps[i] = c.perp;
        }
        step
    }

    fn pt(&self, c: usize) -> Pt {
        Pt {
            ts: self.ts,
            seg: self.segs[c],
            raw: self.raws[c],
            perp: self.perps[c],
        }
    }
}

/// The last fix with candidates and its scores.
#[derive(Clone, Copy, Debug)]
struct Live {
    layer: Layer,
    scores: Scores,
}

/// How pending fixes are being decided.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Flush {
    /// By the lag, at a fix of time `now`.
    Lag { now: u64 },
    /// All of them: the trajectory ended by a break of this kind, or
    /// (`None`) by [`Track::finish`].
    End(Option<Start>),
}

/// A vehicle's incremental HMM state: fixes in, decisions out.
#[derive(Clone, Debug, Default)]
pub struct Track {
    next_index: u64,
    last_key: Option<(u64, u64, u64, u64)>,
    pending: VecDeque<Step>,
    live: Option<Live>,
    /// Live fixes in the current trajectory, and how it began.
    traj_live: u32,
    traj_start: Option<Start>,
    /// A lone fix's decision, waiting to learn whether it is an outlier,
    /// and the decisions after it.
    held: Option<Decision>,
    waiting: Vec<Decision>,
    /// The current trajectory's decided fixes within `smooth_back_ms`
    /// (the smoothing looks back at them).
    history: VecDeque<Pt>,
    /// Backtracking scratch: the chosen candidate of each pending fix, and
    /// the path the smoothing reads.
    chosen: Vec<u8>,
    path: Vec<Pt>,
}

impl Track {
    /// An empty track.
    pub fn new() -> Self {
        Track::default()
    }

    /// Fixes pushed so far (the next fix's [`Decision::index`]).
    pub fn pushed(&self) -> u64 {
        self.next_index
    }

    /// Fixes pushed and not decided yet.
    pub fn undecided(&self) -> usize {
        self.pending.len() + self.waiting.len() + usize::from(self.held.is_some())
    }

    /// Takes the vehicle's next fix (in [`Fix::order_key`] order, else
    /// [`HmmError::OutOfOrder`] and nothing changes); appends the decisions
    /// it makes final to `out`, in fix order.
    pub fn push(&mut self, hmm: &Hmm, fix: &Fix, out: &mut Vec<Decision>) -> Result<(), HmmError> {
        let key = fix.order_key();
        if self.last_key.is_some_and(|k| key < k) {
            return Err(HmmError::OutOfOrder { ts_ms: fix.ts_ms });
        }
        self.last_key = Some(key);
        let index = self.next_index;
        self.next_index += 1;
        let s = hmm.settings();
        let layer = Layer::of(hmm, fix);
        let no_back = [0u8; MAX_CANDIDATES];
        if layer.n == 0 {
            // Off the road: the trajectory stays as it was.
            let gap = self
                .held
                .is_some_and(|h| fix.ts_ms.saturating_sub(h.ts_ms) > s.max_gap_ms);
            if gap {
                self.release(None, out);
            }
            self.decide(hmm, Flush::Lag { now: fix.ts_ms }, out);
            self.pending.push_back(Step::new(index, &layer, &no_back));
            return Ok(());
        }
        let mut scores = [0.0; MAX_CANDIDATES];
        let mut back = [0u8; MAX_CANDIDATES];
        let start = match &self.live {
            None => Some(Start::First),
            Some(l) if fix.ts_ms.saturating_sub(l.layer.ts) > s.max_gap_ms => Some(Start::Gap),
            Some(l) => (!forward(hmm, &l.layer, &l.scores, &layer, &mut scores, &mut back))
                .then_some(Start::Distance),
        };
        match start {
            Some(start) => {
                let outlier = start == Start::Distance;
                self.release(Some(outlier), out);
                self.decide(hmm, Flush::End(Some(start)), out);
                self.history.clear();
                layer.initial(&mut scores);
                self.traj_live = 1;
                self.traj_start = Some(start);
            }
            None => {
                self.release(Some(false), out);
                self.traj_live += 1;
                self.decide(hmm, Flush::Lag { now: fix.ts_ms }, out);
            }
        }
        self.live = Some(Live { layer, scores });
        self.pending.push_back(Step::new(index, &layer, &back));
        Ok(())
    }

    /// Decides every fix still undecided (the vehicle is done, or idle:
    /// the next fix pushed starts a new trajectory).
    pub fn finish(&mut self, hmm: &Hmm, out: &mut Vec<Decision>) {
        self.release(None, out);
        self.decide(hmm, Flush::End(None), out);
        self.history.clear();
        self.live = None;
        self.traj_live = 0;
        self.traj_start = None;
    }

    /// Emits the held decision (as an outlier when `outlier == Some(true)`)
    /// and those waiting behind it.
    fn release(&mut self, outlier: Option<bool>, out: &mut Vec<Decision>) {
        if let Some(mut d) = self.held.take() {
            if outlier == Some(true) {
                d.result = Err(Reason::Outlier);
            }
            out.push(d);
            out.append(&mut self.waiting);
        }
    }

    /// Decides the pending fixes `flush` says, by backtracking from the
    /// best state of the last live fix.
    fn decide(&mut self, hmm: &Hmm, flush: Flush, out: &mut Vec<Decision>) {
        let lag = hmm.settings().lag_ms;
        let count = match flush {
            Flush::Lag { now } => self
                .pending
                .iter()
                .take_while(|p| p.ts.saturating_add(lag) < now)
                .count(),
            Flush::End(_) => self.pending.len(),
        };
        if count == 0 {
            return;
        }
        // Backtrack through the pending fixes (they are all of the current
        // trajectory; the newest live one among them is `live`).
        self.chosen.clear();
        self.chosen.resize(self.pending.len(), 0);
        if let Some(live) = &self.live {
            let mut c = live.layer.best(&live.scores);
            for (k, step) in self.pending.iter().enumerate().rev() {
                if step.n > 0 {
                    self.chosen[k] = c as u8;
                    c = step.back[c] as usize;
                }
            }
        }
        let lone = self.traj_live == 1 && self.traj_start == Some(Start::Distance);
        let back_ms = hmm.settings().smooth_back_ms;
        for k in 0..count {
            let Some(step) = self.pending.get(k).copied() else {
                break;
            };
            let result = if step.n == 0 {
                Err(Reason::OffRoad)
            } else {
                // The path: the decided fixes within the look back, this
                // one, and the pending live ones after it.
                let from = step.ts.saturating_sub(back_ms);
                while self.history.front().is_some_and(|p| p.ts < from) {
                    self.history.pop_front();
                }
                self.path.clear();
                self.path.extend(self.history.iter().copied());
                let me = self.path.len();
                for (j, p) in self.pending.iter().enumerate().skip(k) {
                    if p.n > 0 {
                        self.path.push(p.pt(self.chosen[j] as usize));
                    }
                }
                self.history.push_back(step.pt(self.chosen[k] as usize));
                refine(hmm, &self.path, me)
            };
            let d = Decision {
                index: step.index,
                ts_ms: step.ts,
                result,
            };
            if step.n > 0 && lone {
                match flush {
                    Flush::End(Some(Start::Distance)) => {
                        out.push(Decision {
                            result: Err(Reason::Outlier),
                            ..d
                        });
                        continue;
                    }
                    Flush::Lag { now }
                        if now.saturating_sub(step.ts) <= hmm.settings().max_gap_ms =>
                    {
                        self.held = Some(d);
                        continue;
                    }
                    _ => {}
                }
            }
            if self.held.is_some() {
                self.waiting.push(d);
            } else {
                out.push(d);
            }
        }
        self.pending.drain(..count.min(self.pending.len()));
    }
}
