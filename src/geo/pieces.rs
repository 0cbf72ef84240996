//! The road network's straight pieces and the grid that finds the ones
//! near a position: the one spatial index of both matchers (the point
//! matcher, [`crate::geo::Matcher`], and the HMM's candidates,
//! [`crate::geo::hmm`]).
//!
//! # The grid
//! A uniform grid of square cells over the pieces' extent. Every piece is
//! listed in each cell whose square comes within `reach` metres of it, so
//! the pieces within `reach` of a position are all in the one cell that
//! holds the position: a query is one cell lookup and a scan of its list,
//! with no duplicates and no tree walk (the R-tree it replaced was a third
//! of the HMM's time per fix, and 3x the point matcher's). The cell side
//! is `reach / 2`, larger when the extent would need more than
//! [`MAX_CELLS`] cells (a list then holds more pieces a query discards;
//! nothing is missed). A short piece is in about 36 cells (4 bytes each):
//! 100,000 pieces, a city's network, take about 15 MB. Lists hold piece
//! indices in piece order, so a scan's order never depends on the build.

use super::matcher::Plane;

/// Most cells a grid has; past it cells grow (16 MiB of cell offsets).
pub const MAX_CELLS: usize = 1 << 22;

/// One straight piece of a segment's polyline, in plane metres.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Piece {
    pub(crate) segment: u32,
    pub(crate) a: [f64; 2],
    /// Unit direction of travel.
    pub(crate) dir: [f64; 2],
    pub(crate) len: f64,
    /// Offset of `a` along the segment, metres.
    pub(crate) at: f64,
    /// First / last piece of its segment (they carry the segment's ends).
    pub(crate) first: bool,
    pub(crate) last: bool,
}

impl Piece {
    /// Where `p` falls along the piece's line (metres from `a`, negative
    /// before it) and its distance from the nearest point of the piece.
    #[inline]
    pub(crate) fn project(&self, p: [f64; 2]) -> (f64, f64) {
        let (along, d2) = self.project2(p);
        (along, d2.sqrt())
    }

    /// [`Piece::project`] with the squared distance (no square root for
    /// the pieces a query discards).
    #[inline]
    pub(crate) fn project2(&self, p: [f64; 2]) -> (f64, f64) {
        let rel = [p[0] - self.a[0], p[1] - self.a[1]];
        let along = rel[0] * self.dir[0] + rel[1] * self.dir[1];
        let t = along.clamp(0.0, self.len);
        let q = [self.a[0] + self.dir[0] * t, self.a[1] + self.dir[1] * t];
        (along, (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2))
    }

    /// Distance of `p` from the piece's line, extended beyond its ends.
    #[inline]
    pub(crate) fn line_distance(&self, p: [f64; 2]) -> f64 {
        let rel = [p[0] - self.a[0], p[1] - self.a[1]];
        (rel[0] * self.dir[1] - rel[1] * self.dir[0]).abs()
    }
}

/// The pieces of every segment and the grid over them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pieces {
    pub(crate) plane: Plane,
    pieces: Vec<Piece>,
    /// Per segment: its length along its pieces, metres.
    pub(crate) seg_len: Vec<f64>,
    grid: Grid,
}

impl Pieces {
    /// Cuts `lines` (`[lon, lat]`; segment `i` is `lines[i]`) into pieces
    /// on a plane around their mean point, indexed for queries within
    /// `reach` metres. Pieces of zero length (repeated points) are left
    /// out; the first and last pieces kept carry the segment's ends.
    pub(crate) fn new<L: AsRef<[[f64; 2]]>>(lines: &[L], reach: f64) -> Self {
        let plane = Plane::of_lines(lines);
        let mut pieces = Vec::new();
        let mut seg_len = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let begin = pieces.len();
            let mut at = 0.0;
            let pts: Vec<[f64; 2]> = line
                .as_ref()
                .iter()
                .map(|p| plane.project(p[0], p[1]))
                .collect();
            for w in pts.windows(2) {
                let (a, b) = (w[0], w[1]);
                let len = ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt();
                if len < 1e-6 {
                    continue;
                }
                pieces.push(Piece {
                    segment: i as u32,
                    a,
                    dir: [(b[0] - a[0]) / len, (b[1] - a[1]) / len],
                    len,
                    at,
                    first: pieces.len() == begin,
                    last: false,
                });
                at += len;
            }
            if pieces.len() > begin {
                if let Some(p) = pieces.last_mut() {
                    p.last = true;
                }
            }
            seg_len.push(at);
        }
        let grid = Grid::new(&pieces, reach);
        Pieces {
            plane,
            pieces,
            seg_len,
            grid,
        }
    }

    /// Number of pieces.
    pub(crate) fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Every piece, in segment order.
    pub(crate) fn all(&self) -> &[Piece] {
        &self.pieces
    }

    /// The pieces that may lie within `reach` of plane point `p` (a
    /// superset; none farther is missed), in piece order.
    #[inline]
    pub(crate) fn near(&self, p: [f64; 2]) -> impl Iterator<Item = &Piece> + '_ {
        self.grid
            .cell(p)
            .iter()
            .filter_map(|&i| self.pieces.get(i as usize))
    }

    /// Memory the pieces and their grid hold, bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.pieces.len() * std::mem::size_of::<Piece>()
            + self.seg_len.len() * 8
            + (self.grid.at.len() + self.grid.items.len()) * 4
    }
}

/// The uniform grid: cell `(cx, cy)`'s pieces are
/// `items[at[c]..at[c + 1]]` with `c = cy * nx + cx`.
#[derive(Clone, Debug, Default)]
struct Grid {
    origin: [f64; 2],
    cell: f64,
    nx: usize,
    ny: usize,
    at: Vec<u32>,
    items: Vec<u32>,
}

impl Grid {
    fn new(pieces: &[Piece], reach: f64) -> Self {
        let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
        for p in pieces {
            let b = [p.a[0] + p.dir[0] * p.len, p.a[1] + p.dir[1] * p.len];
            for q in [p.a, b] {
                for k in 0..2 {
                    lo[k] = lo[k].min(q[k]);
                    hi[k] = hi[k].max(q[k]);
                }
            }
        }
        let reach = if reach.is_finite() && reach > 0.0 {
            reach
        } else {
            1.0
        };
        if !(lo[0].is_finite() && lo[1].is_finite() && hi[0].is_finite() && hi[1].is_finite()) {
            return Grid::default();
        }
        let origin = [lo[0] - reach, lo[1] - reach];
        let (w, h) = (hi[0] - lo[0] + 2.0 * reach, hi[1] - lo[1] + 2.0 * reach);
        let mut cell = reach / 2.0;
        while (w / cell).ceil() * (h / cell).ceil() > MAX_CELLS as f64 {
            cell *= 1.5;
        }
        let nx = ((w / cell).ceil() as usize).max(1);
        let ny = ((h / cell).ceil() as usize).max(1);
        // Each piece into every cell whose centre is within reach plus
        // half the cell's diagonal of it (every point of the cell is then
        // within reach of the piece or farther than reach from it is not
        // missed: a conservative test).
        let half_diag = cell * std::f64::consts::FRAC_1_SQRT_2;
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let b = [p.a[0] + p.dir[0] * p.len, p.a[1] + p.dir[1] * p.len];
            let x0 = ((p.a[0].min(b[0]) - reach - origin[0]) / cell)
                .floor()
                .max(0.0) as usize;
            let x1 = (((p.a[0].max(b[0]) + reach - origin[0]) / cell).floor() as usize).min(nx - 1);
            let y0 = ((p.a[1].min(b[1]) - reach - origin[1]) / cell)
                .floor()
                .max(0.0) as usize;
            let y1 = (((p.a[1].max(b[1]) + reach - origin[1]) / cell).floor() as usize).min(ny - 1);
            for cy in y0..=y1 {
                for cx in x0..=x1 {
                    let centre = [
                        origin[0] + (cx as f64 + 0.5) * cell,
                        origin[1] + (cy as f64 + 0.5) * cell,
                    ];
                    if p.project(centre).1 <= reach + half_diag {
                        pairs.push(((cy * nx + cx) as u32, i as u32));
                    }
                }
            }
        }
        pairs.sort_unstable();
        let mut at = vec![0u32; nx * ny + 1];
        for &(c, _) in &pairs {
            at[c as usize + 1] += 1;
        }
        for c in 0..nx * ny {
            at[c + 1] += at[c];
        }
        Grid {
            origin,
            cell,
            nx,
            ny,
            at,
            items: pairs.into_iter().map(|(_, i)| i).collect(),
        }
    }

    /// The piece list of the cell holding `p` (empty outside the grid).
    #[inline]
    fn cell(&self, p: [f64; 2]) -> &[u32] {
        let fx = (p[0] - self.origin[0]) / self.cell;
        let fy = (p[1] - self.origin[1]) / self.cell;
        // NaN fails both comparisons.
        if !(fx >= 0.0 && fy >= 0.0 && fx < self.nx as f64 && fy < self.ny as f64) {
            return &[];
        }
        let c = fy as usize * self.nx + fx as usize;
        match (self.at.get(c), self.at.get(c + 1)) {
            (Some(&a), Some(&b)) => self.items.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The grid misses no piece within reach: its candidates agree
        /// with a scan of every piece.
        #[test]
        fn the_grid_finds_every_piece_within_reach(
            lines in prop::collection::vec(
                prop::collection::vec((-500.0f64..500.0, -500.0f64..500.0), 2..5), 1..30),
            queries in prop::collection::vec((-700.0f64..700.0, -700.0f64..700.0), 1..50),
            reach in 1.0f64..80.0,
        ) {
            let plane = Plane::around(24.94, 60.17);
            let lines: Vec<Vec<[f64; 2]>> = lines
                .iter()
                .map(|l| l.iter().map(|&(x, y)| plane.unproject([x, y])).collect())
                .collect();
            let pieces = Pieces::new(&lines, reach);
            for (x, y) in queries {
                let p = [x, y];
                let id = |q: &Piece| (q.segment, q.at.to_bits());
                let mut want: Vec<(u32, u64)> = pieces
                    .all()
                    .iter()
                    .filter(|q| q.project(p).1 <= reach)
                    .map(id)
                    .collect();
                let got: Vec<(u32, u64)> = pieces.near(p).map(id).collect();
                want.retain(|i| !got.contains(i));
                prop_assert!(want.is_empty(), "missed {:?} at {:?}", want, p);
            }
        }
    }

    #[test]
    fn huge_extents_get_larger_cells_not_more_memory() {
        let plane = Plane::around(2.35, 48.85);
        let far = plane.unproject([200_000.0, 200_000.0]);
        let near = plane.unproject([0.0, 0.0]);
        let pieces = Pieces::new(&[vec![near, far]], 25.0);
        assert!(
            pieces.bytes() <= (MAX_CELLS + 1) * 4 + (1 << 20),
            "{} bytes",
            pieces.bytes()
        );
        assert_eq!(pieces.near(plane.project(near[0], near[1])).count(), 1);
    }
}
