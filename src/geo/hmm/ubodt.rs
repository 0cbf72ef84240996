//! The upper-bounded route table (FMM's UBODT): for every node, the route
//! distance to every node reachable within a bound, by one bounded
//! Dijkstra per node at construction.
//!
//! Layout: one sorted run of `(target, distance)` per source node (CSR);
//! a lookup is a binary search in its source's run (a few dozen to a few
//! hundred entries on a city network). Memory: 8 bytes per reachable
//! pair plus 4 per node, capped at construction.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{HmmError, Network};

/// Route distances between node pairs up to a bound.
#[derive(Clone, Debug, Default)]
pub struct Table {
    bound: f64,
    /// Source `n`'s run: `targets[at[n]..at[n + 1]]`, sorted.
    at: Vec<u32>,
    targets: Vec<u32>,
    dist: Vec<f32>,
}

/// A heap entry: smallest distance first, then the lowest node.
#[derive(PartialEq)]
struct Entry(f64, u32);
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then(other.1.cmp(&self.1))
    }
}

impl Table {
    /// Runs a Dijkstra bounded by `bound` metres from every node of `net`;
    /// refuses to hold more than `max_bytes`.
    pub fn build(net: &Network, bound: f64, max_bytes: usize) -> Result<Self, HmmError> {
        let n = net.nodes();
        let mut at = Vec::with_capacity(n + 1);
        at.push(0u32);
        let (mut targets, mut dist) = (Vec::new(), Vec::new());
        let mut best = vec![f64::INFINITY; n];
        let mut touched: Vec<u32> = Vec::new();
        let mut heap = BinaryHeap::new();
        let mut run: Vec<(u32, f32)> = Vec::new();
        for source in 0..n as u32 {
            for &t in &touched {
                best[t as usize] = f64::INFINITY;
            }
            touched.clear();
            run.clear();
            best[source as usize] = 0.0;
            touched.push(source);
            heap.push(Entry(0.0, source));
            while let Some(Entry(d, v)) = heap.pop() {
                if d > best[v as usize] {
                    continue;
                }
                run.push((v, d as f32));
                for (w, len) in net.out_edges(v) {
                    let nd = d + len;
                    if nd <= bound && nd < best[w as usize] {
                        if best[w as usize].is_infinite() {
                            touched.push(w);
                        }
                        best[w as usize] = nd;
                        heap.push(Entry(nd, w));
                    }
                }
            }
            run.sort_unstable_by_key(|e| e.0);
            let bytes = (targets.len() + run.len()) * 8 + (n + 1) * 4;
            if bytes > max_bytes {
                return Err(HmmError::TableTooLarge {
                    bytes,
                    limit: max_bytes,
                });
            }
            targets.extend(run.iter().map(|e| e.0));
            dist.extend(run.iter().map(|e| e.1));
            at.push(targets.len() as u32);
        }
        Ok(Table {
            bound,
            at,
            targets,
            dist,
        })
    }

    /// The route distance from node `from` to node `to`, metres, if it is
    /// within the bound.
    #[inline]
    pub fn get(&self, from: u32, to: u32) -> Option<f64> {
        let a = *self.at.get(from as usize)? as usize;
        let b = *self.at.get(from as usize + 1)? as usize;
        let run = &self.targets[a..b];
        run.binary_search(&to)
            .ok()
            .map(|i| f64::from(self.dist[a + i]))
    }

    /// The bound, metres.
    pub fn bound(&self) -> f64 {
        self.bound
    }

    /// Node pairs held.
    pub fn pairs(&self) -> usize {
        self.targets.len()
    }

    /// Memory held, bytes.
    pub fn bytes(&self) -> usize {
        self.targets.len() * 4 + self.dist.len() * 4 + self.at.len() * 4
    }
}
