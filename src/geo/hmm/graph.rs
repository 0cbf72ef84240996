//! The directed road graph and the spatial index of its pieces.
//!
//! Segment `i` of the reference is edge `i`, from the node of its first
//! point to the node of its last. Ends within `node_snap_m` of each other
//! are one node (clustered in x order, then joined transitively, so the
//! result does not depend on the segments' order). Junction edges link a
//! segment's end node to every start node within `junction_link_m`, as
//! long as the straight line (see the module doc of [`super`]).

use super::HmmSettings;
use crate::geo::pieces::Pieces;

/// The road graph: segments as directed edges between nodes, junction
/// edges, and the index of the segments' pieces (lengths per segment
/// there too).
#[derive(Clone, Debug)]
pub struct Network {
    pub(crate) pieces: Pieces,
    /// Per segment: start node, end node.
    pub(crate) seg_from: Vec<u32>,
    pub(crate) seg_to: Vec<u32>,
    nodes: usize,
    /// Outgoing edges by node (CSR): `adj_to[adj_at[n]..adj_at[n + 1]]`.
    adj_at: Vec<u32>,
    adj_to: Vec<u32>,
    adj_len: Vec<f64>,
}

impl Network {
    /// Builds the graph of `lines` (`[lon, lat]`) by `settings`.
    pub fn new<L: AsRef<[[f64; 2]]>>(lines: &[L], settings: &HmmSettings) -> Self {
        let pieces = Pieces::new(lines, settings.radius_m);
        let plane = pieces.plane;
        let seg_len = &pieces.seg_len;
        let mut starts = Vec::with_capacity(lines.len());
        let mut ends = Vec::with_capacity(lines.len());
        for line in lines {
            let line = line.as_ref();
            let end = |p: Option<&[f64; 2]>| p.map_or([f64::NAN; 2], |p| plane.project(p[0], p[1]));
            let first = end(line.first());
            starts.push(first);
            ends.push(if line.is_empty() {
                first
            } else {
                end(line.last())
            });
        }
        // Nodes: every start and end, snapped.
        let n = lines.len();
        let mut points: Vec<[f64; 2]> = Vec::with_capacity(2 * n);
        points.extend_from_slice(&starts);
        points.extend_from_slice(&ends);
        let (node_of, nodes) = cluster(&points, settings.node_snap_m);
        let seg_from: Vec<u32> = node_of[..n].to_vec();
        let seg_to: Vec<u32> = node_of[n..].to_vec();
        // Edges: segments, then junction links end -> start.
        let mut edges: Vec<(u32, u32, f64)> = (0..n)
            .filter(|&i| seg_len[i] > 0.0)
            .map(|i| (seg_from[i], seg_to[i], seg_len[i]))
            .collect();
        let link = settings.junction_link_m;
        let mut by_x: Vec<u32> = (0..n as u32)
            .filter(|&i| starts[i as usize][0].is_finite())
            .collect();
        by_x.sort_by(|&a, &b| starts[a as usize][0].total_cmp(&starts[b as usize][0]));
        let xs: Vec<f64> = by_x.iter().map(|&i| starts[i as usize][0]).collect();
        for (a, e) in ends.iter().enumerate() {
            if !e[0].is_finite() || seg_len[a] <= 0.0 {
                continue;
            }
            let lo = xs.partition_point(|&x| x < e[0] - link);
            for &b in by_x[lo..]
                .iter()
                .take_while(|&&b| starts[b as usize][0] <= e[0] + link)
            {
                let s = starts[b as usize];
                let d = ((s[0] - e[0]).powi(2) + (s[1] - e[1]).powi(2)).sqrt();
                let (from, to) = (seg_to[a], seg_from[b as usize]);
                if d <= link && from != to {
                    edges.push((from, to, d));
                }
            }
        }
        edges.sort_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)).then(x.2.total_cmp(&y.2)));
        edges.dedup_by(|later, kept| later.0 == kept.0 && later.1 == kept.1);
        let mut adj_at = vec![0u32; nodes + 1];
        for e in &edges {
            adj_at[e.0 as usize + 1] += 1;
        }
        for i in 0..nodes {
            adj_at[i + 1] += adj_at[i];
        }
        Network {
            pieces,
            seg_from,
            seg_to,
            nodes,
            adj_at,
            adj_to: edges.iter().map(|e| e.1).collect(),
            adj_len: edges.iter().map(|e| e.2).collect(),
        }
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Number of segments.
    pub fn segments(&self) -> usize {
        self.pieces.seg_len.len()
    }

    /// Number of directed edges (segments and junction links).
    pub fn edges(&self) -> usize {
        self.adj_to.len()
    }

    /// Segment `s`'s length along its pieces, metres.
    pub fn segment_length(&self, s: u32) -> f64 {
        self.pieces.seg_len.get(s as usize).copied().unwrap_or(0.0)
    }

    /// Segment `s`'s start and end nodes.
    pub fn segment_nodes(&self, s: u32) -> Option<(u32, u32)> {
        Some((
            *self.seg_from.get(s as usize)?,
            *self.seg_to.get(s as usize)?,
        ))
    }

    /// Node `n`'s outgoing edges: (target node, length in metres).
    pub fn out_edges(&self, n: u32) -> impl Iterator<Item = (u32, f64)> + '_ {
        let (a, b) = match (self.adj_at.get(n as usize), self.adj_at.get(n as usize + 1)) {
            (Some(&a), Some(&b)) => (a as usize, b as usize),
            _ => (0, 0),
        };
        self.adj_to[a..b]
            .iter()
            .copied()
            .zip(self.adj_len[a..b].iter().copied())
    }

    /// `[lon, lat]` to plane metres (x east, y north).
    pub fn project(&self, lon: f64, lat: f64) -> [f64; 2] {
        self.pieces.plane.project(lon, lat)
    }
}

/// Clusters points within `tol` (transitively): each point's node, and the
/// node count. Nodes are numbered in the order of their first point.
fn cluster(points: &[[f64; 2]], tol: f64) -> (Vec<u32>, usize) {
    let mut parent: Vec<usize> = (0..points.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut order: Vec<usize> = (0..points.len())
        .filter(|&i| points[i][0].is_finite())
        .collect();
    order.sort_by(|&a, &b| points[a][0].total_cmp(&points[b][0]).then(a.cmp(&b)));
    for (k, &i) in order.iter().enumerate() {
        for &j in order[k + 1..]
            .iter()
            .take_while(|&&j| points[j][0] - points[i][0] <= tol)
        {
            let d = ((points[i][0] - points[j][0]).powi(2) + (points[i][1] - points[j][1]).powi(2))
                .sqrt();
            if d <= tol {
                let (ri, rj) = (root(&mut parent, i), root(&mut parent, j));
                let (lo, hi) = (ri.min(rj), ri.max(rj));
                parent[hi] = lo;
            }
        }
    }
    let mut id = vec![u32::MAX; points.len()];
    let mut node = vec![0u32; points.len()];
    let mut count = 0usize;
    for (i, slot) in node.iter_mut().enumerate() {
        let r = root(&mut parent, i);
        if id[r] == u32::MAX {
            id[r] = count as u32;
            count += 1;
        }
        *slot = id[r];
    }
    (node, count)
}
