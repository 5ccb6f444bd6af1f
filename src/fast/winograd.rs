//! 3×3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(m×m, 3×3): each m×m
//! block of outputs costs (m+2)² multiplications per input channel instead of 9m²: 16 instead of
//! 36 for F(2×2, 3×3), 36 instead of 144 for F(4×4, 3×3).
//!
//! With `d` an (m+2)×(m+2) input patch and `g` a 3×3 kernel, the m×m outputs are
//! `Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A` (the matrices of Lavin & Gray, "Fast Algorithms for Convolutional
//! Neural Networks", 2016). The kernel transform `U = G g Gᵀ` is done once, in f64; per tile the
//! input and output transforms take a few additions and multiplications by small constants, and
//! the element-wise products, summed over channels, are (m+2)² matrix products
//! `[tiles × c_in]·[c_in × c_out]`. All of it is exact in real arithmetic; in f32 the transforms
//! add roundings that grow with m (measured by the parity tests: well inside their 1e-4 on the
//! logits for both).

use super::gemm::{product, Packed};
use super::isa::{Kernels, Precision, Simd};
use super::kernels::{Grid, Mat, MatMut};
use super::{padded, part_size, team, with_scratch};

/// Tiles one task transforms and multiplies at once: their transformed copies stay in a core's
/// L2 cache (48 tiles × 36 positions × 128 channels of F(4×4): 864 KiB).
const TILES_PER_TASK: usize = 48;

/// The most positions of a transformed tile (F(4×4): 6×6).
const MAX_POSITIONS: usize = 36;

/// The most outputs of a tile (F(4×4): 4×4).
const MAX_OUTPUTS: usize = 16;

/// Which minimal filtering algorithm: the size of the output tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tile {
    /// F(2×2, 3×3): 4×4 input patches, 16 products; adds only.
    F2,
    /// F(4×4, 3×3): 6×6 input patches, 36 products, 2.25× fewer than F(2×2) per output, with
    /// larger constants (so more rounding) and a kernel four times the size of the original.
    F4,
}

impl Tile {
    /// Outputs per side.
    fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Inputs per side.
    fn a(self) -> usize {
        self.m() + 2
    }

    fn positions(self) -> usize {
        self.a() * self.a()
    }

    /// Row `i` of G.
    fn g(self, i: usize) -> [f64; 3] {
        match self {
            Tile::F2 => [
                [1.0, 0.0, 0.0],
                [0.5, 0.5, 0.5],
                [0.5, -0.5, 0.5],
                [0.0, 0.0, 1.0],
            ][i],
            Tile::F4 => [
                [1.0 / 4.0, 0.0, 0.0],
                [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
                [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
                [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
                [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
                [0.0, 0.0, 1.0],
            ][i],
        }
    }
}

/// A 3×3, stride-1, padding-1 convolution in the Winograd domain.
#[derive(Clone, Debug)]
pub(crate) struct Winograd {
    tile: Tile,
    c_in: usize,
    c_out: usize,
    /// `U` at each position of the transformed tile, as [c_in × c_out].
    kernels: Vec<Packed>,
}

impl Winograd {
    /// From a PyTorch weight `[c_out, c_in, 3, 3]`, flattened; `U` packed in `precision`.
    pub(crate) fn new(
        tile: Tile,
        weight: &[f32],
        (c_out, c_in): (usize, usize),
        precision: Precision,
    ) -> Self {
        let (a, positions) = (tile.a(), tile.positions());
        // u[(co·c_in + ci)·positions + p] = (G g Gᵀ)[p] for kernel g = weight[co][ci].
        let mut u = vec![0.0f32; c_out * c_in * positions];
        for (g, out) in weight.chunks_exact(9).zip(u.chunks_exact_mut(positions)) {
            for i in 0..a {
                for j in 0..a {
                    let (gi, gj) = (tile.g(i), tile.g(j));
                    let mut s = 0.0f64;
                    for (r, row) in g.chunks_exact(3).enumerate() {
                        for (c, &w) in row.iter().enumerate() {
                            s += gi[r] * f64::from(w) * gj[c];
                        }
                    }
                    out[a * i + j] = s as f32;
                }
            }
        }
        let kernels = (0..positions)
            .map(|p| {
                Packed::new(precision, c_in, c_out, |ci, co| {
                    u[(co * c_in + ci) * positions + p]
                })
            })
            .collect();
        Self {
            tile,
            c_in,
            c_out,
            kernels,
        }
    }

    /// Output channels.
    pub(crate) fn c_out(&self) -> usize {
        self.c_out
    }

    /// Input channels.
    pub(crate) fn c_in(&self) -> usize {
        self.c_in
    }

    /// Convolves `src` (over `grid`) into columns `0..c_out` of `dst`, one pixel per row, as the
    /// PyTorch convolution does.
    pub(crate) fn run(&self, kernels: Kernels, src: Mat, grid: Grid, dst: MatMut) {
        let dst_ld = dst.ld;
        let m = self.tile.m();
        let tiles_w = grid.w.div_ceil(m);
        let tile_rows = grid.n * grid.h.div_ceil(m);
        let per_task = part_size(tile_rows, (TILES_PER_TASK / tiles_w).max(1));
        // A row of tiles covers whole rows of pixels, so a run of them owns a contiguous
        // range of `dst`.
        let mut jobs = Vec::with_capacity(tile_rows.div_ceil(per_task));
        let mut rest = dst.data;
        let mut first = 0;
        while first < tile_rows {
            let count = per_task.min(tile_rows - first);
            let task = Task {
                tile: self.tile,
                grid,
                first,
                count,
                first_pixel: 0,
            };
            let pixel_rows = task.pixel_rows();
            let (mine, others) = rest.split_at_mut((pixel_rows.len() * dst_ld).min(rest.len()));
            jobs.push((
                Task {
                    first_pixel: pixel_rows.start,
                    ..task
                },
                mine,
            ));
            rest = others;
            first += count;
        }
        let positions = self.tile.positions();
        team::for_each(jobs, |(task, out): (Task, &mut [f32])| {
            let tiles = task.tiles();
            let (v_plane, m_plane) = (task.plane(self.c_in), task.plane(self.c_out));
            let (v_len, m_len) = (positions * v_plane, positions * m_plane);
            with_scratch(v_len + m_len, |scratch| {
                let (v, m) = scratch.split_at_mut(v_len);
                kernels.winograd_input(&task, self.c_in, src, v);
                for (p, kernel) in self.kernels.iter().enumerate() {
                    let a = Mat {
                        data: &v[p * v_plane..][..tiles * self.c_in],
                        ld: self.c_in,
                    };
                    let c = MatMut {
                        data: &mut m[p * m_plane..][..tiles * self.c_out],
                        ld: self.c_out,
                    };
                    product(kernels, tiles, a, kernel, c, None);
                }
                kernels.winograd_output(&task, self.c_out, m, (out, dst_ld));
            });
        });
    }
}

/// The tiles of one task: tile rows `first..first + count` of `grid`, whose output pixels start
/// at pixel row `first_pixel`.
#[derive(Clone, Copy)]
pub(crate) struct Task {
    tile: Tile,
    grid: Grid,
    first: usize,
    count: usize,
    first_pixel: usize,
}

impl Task {
    fn tiles(&self) -> usize {
        self.count * self.grid.w.div_ceil(self.tile.m())
    }

    /// Floats between the [tiles × c] planes of V or M, one per position: padded so that the
    /// planes a tile's transform writes (or reads) together do not share L1 cache sets.
    fn plane(&self, c: usize) -> usize {
        padded(self.tiles() * c)
    }

    /// The pixel rows the task's tiles cover (tile row `r` = image `r / ⌈h/m⌉`, pixel rows
    /// `m·(r mod ⌈h/m⌉)` and the m − 1 next, where they exist).
    fn pixel_rows(&self) -> std::ops::Range<usize> {
        let (g, m) = (self.grid, self.tile.m());
        let th = g.h.div_ceil(m);
        let start = |r: usize| ((r / th) * g.h + (m * (r % th)).min(g.h)) * g.w;
        let end = self.first + self.count;
        start(self.first)..if end.is_multiple_of(th) {
            (end / th) * g.h * g.w
        } else {
            start(end)
        }
    }

    /// Each tile in order: its index in the task and where it lies (see [`TileRows`]). An
    /// iterator rather than a function taking a closure, so that the loop body stays inside the
    /// instruction set's entry point and is compiled for it.
    fn tiles_in_order(&self) -> impl Iterator<Item = TileRows> + '_ {
        let (g, m) = (self.grid, self.tile.m());
        let (tiles_w, th) = (g.w.div_ceil(m), g.h.div_ceil(m));
        (self.first..self.first + self.count)
            .flat_map(move |tile_row| (0..tiles_w).map(move |tx| (tile_row, tx)))
            .enumerate()
            .map(move |(t, (tile_row, tx))| TileRows {
                index: t,
                grid: g,
                n: tile_row / th,
                y0: m * (tile_row % th),
                x0: m * tx,
                first_pixel: self.first_pixel,
            })
    }
}

/// One tile of a [`Task`]: its index in the task and its first output pixel (image `n`, `y0`,
/// `x0`) in `grid`.
struct TileRows {
    index: usize,
    grid: Grid,
    n: usize,
    y0: usize,
    x0: usize,
    first_pixel: usize,
}

impl TileRows {
    /// The pixel row of the patch's input (i, j), row-major (`None`: padding).
    #[inline(always)]
    fn input(&self, i: usize, j: usize) -> Option<usize> {
        let g = self.grid;
        let (y, x) = ((self.y0 + i).wrapping_sub(1), (self.x0 + j).wrapping_sub(1));
        (y < g.h && x < g.w).then(|| (self.n * g.h + y) * g.w + x)
    }

    /// The pixel row of output (i, j), counted from the task's `first_pixel` (`None`: past the
    /// image's edge).
    #[inline(always)]
    fn output(&self, i: usize, j: usize) -> Option<usize> {
        let g = self.grid;
        let (y, x) = (self.y0 + i, self.x0 + j);
        (y < g.h && x < g.w).then(|| (self.n * g.h + y) * g.w + x - self.first_pixel)
    }
}

/// A one-dimensional transform from A values to B, applied to rows and columns of a tile.
trait Transform<const A: usize, const B: usize> {
    fn apply<T: Simd>(x: [T; A]) -> [T; B];
}

/// `Bᵀ d` for F(2×2, 3×3): Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
struct InputF2;

impl Transform<4, 4> for InputF2 {
    #[inline(always)]
    fn apply<T: Simd>(d: [T; 4]) -> [T; 4] {
        [
            d[0].sub(d[2]),
            d[1].add(d[2]),
            d[2].sub(d[1]),
            d[1].sub(d[3]),
        ]
    }
}

/// `Aᵀ m` for F(2×2, 3×3): Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]].
struct OutputF2;

impl Transform<4, 2> for OutputF2 {
    #[inline(always)]
    fn apply<T: Simd>(m: [T; 4]) -> [T; 2] {
        [m[0].add(m[1]).add(m[2]), m[1].sub(m[2]).sub(m[3])]
    }
}

/// `Bᵀ d` for F(4×4, 3×3): Bᵀ = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
/// [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]].
struct InputF4;

impl Transform<6, 6> for InputF4 {
    #[inline(always)]
    fn apply<T: Simd>(d: [T; 6]) -> [T; 6] {
        let (d42, d43) = (d[4].sub(d[2]), d[4].sub(d[3]));
        [
            d[0].mul_add_k(4.0, d[2].mul_add_k(-5.0, d[4])),
            d[1].add(d[2]).mul_add_k(-4.0, d[3].add(d[4])),
            d[1].sub(d[2]).mul_add_k(4.0, d43),
            d[3].sub(d[1]).mul_add_k(2.0, d42),
            d[1].sub(d[3]).mul_add_k(2.0, d42),
            d[1].mul_add_k(4.0, d[3].mul_add_k(-5.0, d[5])),
        ]
    }
}

/// `Aᵀ m` for F(4×4, 3×3): Aᵀ = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
/// [0, 1, -1, 8, -8, 1]].
struct OutputF4;

impl Transform<6, 4> for OutputF4 {
    #[inline(always)]
    fn apply<T: Simd>(m: [T; 6]) -> [T; 4] {
        let (s12, d12) = (m[1].add(m[2]), m[1].sub(m[2]));
        let (s34, d34) = (m[3].add(m[4]), m[3].sub(m[4]));
        [
            m[0].add(s12).add(s34),
            d34.mul_add_k(2.0, d12),
            s34.mul_add_k(4.0, s12),
            d34.mul_add_k(8.0, d12).add(m[5]),
        ]
    }
}

/// `V = Bᵀ d B` for each tile of `task`, from `src` (`c` channels), in vectors of `S`: `V` is
/// laid out [positions][tiles][channels], the planes of each position [`Task::plane`] floats
/// apart.
///
/// # Safety
/// Only from the entry point of `S`'s instruction set (see `isa`).
#[inline(always)]
pub(crate) unsafe fn input<S: Simd>(task: &Task, c: usize, src: Mat, v: &mut [f32]) {
    match task.tile {
        Tile::F2 => input_with::<S, 4, InputF2>(task, c, src, v),
        Tile::F4 => input_with::<S, 6, InputF4>(task, c, src, v),
    }
}

#[inline(always)]
unsafe fn input_with<S: Simd, const A: usize, F: Transform<A, A>>(
    task: &Task,
    c: usize,
    src: Mat,
    v: &mut [f32],
) {
    let plane = task.plane(c);
    assert!(v.len() >= A * A * plane, "winograd: V too short");
    let v = v.as_mut_ptr();
    // Padding reads zeros from here, so the loads below need no branches.
    let zeros = vec![0.0f32; c];
    for tile in task.tiles_in_order() {
        let t = tile.index;
        let mut rows = [zeros.as_ptr(); MAX_POSITIONS];
        for i in 0..A {
            for j in 0..A {
                if let Some(r) = tile.input(i, j) {
                    rows[A * i + j] = src.data[r * src.ld..][..c].as_ptr();
                }
            }
        }
        for c0 in (0..c).step_by(S::LANES) {
            let live = c - c0;
            // SAFETY (loads and stores): lanes c0..c0 + live.min(LANES) lie inside each row of
            // c values (sliced above, or `zeros`), and inside V's [positions][plane] (asserted
            // above).
            // Columns as they are loaded, then rows as they are stored: the patch never needs
            // to sit in registers whole.
            let mut cols = [[S::zero(); A]; A];
            for j in 0..A {
                let col: [S; A] =
                    std::array::from_fn(|i| S::load_upto(rows[A * i + j].add(c0), live));
                for (row, x) in cols.iter_mut().zip(F::apply(col)) {
                    row[j] = x;
                }
            }
            for (i, row) in cols.into_iter().enumerate() {
                for (j, x) in F::apply(row).into_iter().enumerate() {
                    let p = A * i + j;
                    x.store_upto(v.add(p * plane + t * c + c0), live);
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` for each tile of `task`, written to the pixels of `out` (rows `ld` apart) that
/// exist, in vectors of `S`; `M` laid out as `V` in [`input`].
///
/// # Safety
/// Only from the entry point of `S`'s instruction set (see `isa`).
#[inline(always)]
pub(crate) unsafe fn output<S: Simd>(task: &Task, c: usize, m: &[f32], out: (&mut [f32], usize)) {
    match task.tile {
        Tile::F2 => output_with::<S, 4, 2, OutputF2>(task, c, m, out),
        Tile::F4 => output_with::<S, 6, 4, OutputF4>(task, c, m, out),
    }
}

#[inline(always)]
unsafe fn output_with<S: Simd, const A: usize, const B: usize, F: Transform<A, B>>(
    task: &Task,
    c: usize,
    m: &[f32],
    (out, ld): (&mut [f32], usize),
) {
    let plane = task.plane(c);
    assert!(m.len() >= A * A * plane, "winograd: M too short");
    for tile in task.tiles_in_order() {
        let t = tile.index;
        let mut dst = [None; MAX_OUTPUTS];
        for i in 0..B {
            for j in 0..B {
                if let Some(row) = tile.output(i, j) {
                    let row: &mut [f32] = &mut out[row * ld..][..c];
                    dst[B * i + j] = Some(row.as_mut_ptr());
                }
            }
        }
        for c0 in (0..c).step_by(S::LANES) {
            let live = c - c0;
            // SAFETY (loads and stores): lanes c0..c0 + live.min(LANES) lie inside M's
            // [positions][plane] (asserted above) and inside each destination row of c values
            // (sliced above).
            // As in `input_with`: columns as they are loaded, rows as they are stored.
            let mut cols = [[S::zero(); A]; B];
            for j in 0..A {
                let col: [S; A] = std::array::from_fn(|i| {
                    let p = A * i + j;
                    S::load_upto(m.as_ptr().add(p * plane + t * c + c0), live)
                });
                for (row, x) in cols.iter_mut().zip(F::apply(col)) {
                    row[j] = x;
                }
            }
            for (i, row) in cols.into_iter().enumerate() {
                for (j, y) in F::apply(row).into_iter().enumerate() {
                    if let Some(at) = dst[B * i + j] {
                        y.store_upto(at.add(c0), live);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both tile sizes, both code paths, against the definition of the convolution: odd sizes
    /// (partial tiles at the edges), channel counts that are not multiples of 16, strided rows.
    #[test]
    fn every_tile_and_path_matches_the_direct_convolution() {
        let (c_in, c_out, ld, dst_ld) = (19, 20, 23, 26);
        let grid = Grid { n: 2, h: 7, w: 5 };
        let value = |i: usize, k: usize| ((i * k % 17) as f32 - 8.0) / 8.0;
        let src: Vec<f32> = (0..grid.pixels() * ld).map(|i| value(i, 7)).collect();
        let weight: Vec<f32> = (0..c_out * c_in * 9).map(|i| value(i, 5) / 4.0).collect();
        let mut want = vec![0.0f64; grid.pixels() * c_out];
        for n in 0..grid.n {
            for y in 0..grid.h {
                for x in 0..grid.w {
                    let row = (n * grid.h + y) * grid.w + x;
                    for co in 0..c_out {
                        let mut s = 0.0f64;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = ((y + ky).wrapping_sub(1), (x + kx).wrapping_sub(1));
                                if iy >= grid.h || ix >= grid.w {
                                    continue;
                                }
                                let r = (n * grid.h + iy) * grid.w + ix;
                                for ci in 0..c_in {
                                    let w = weight[((co * c_in + ci) * 3 + ky) * 3 + kx];
                                    s += f64::from(src[r * ld + ci]) * f64::from(w);
                                }
                            }
                        }
                        want[row * c_out + co] = s;
                    }
                }
            }
        }
        for tile in [Tile::F2, Tile::F4] {
            let conv = Winograd::new(tile, &weight, (c_out, c_in), Precision::F32);
            for kernels in Kernels::all() {
                let mut dst = vec![f32::NAN; grid.pixels() * dst_ld];
                let out = MatMut {
                    data: &mut dst,
                    ld: dst_ld,
                };
                conv.run(kernels, Mat { data: &src, ld }, grid, out);
                for (row, out) in dst.chunks_exact(dst_ld).enumerate() {
                    for co in 0..c_out {
                        let (got, w) = (out[co], want[row * c_out + co]);
                        assert!(
                            (f64::from(got) - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{tile:?} {:?} pixel {row} channel {co}: {got} vs {w}",
                            kernels.isa()
                        );
                    }
                    assert!(
                        out[c_out..].iter().all(|v| v.is_nan()),
                        "{tile:?}: wrote past c_out"
                    );
                }
            }
        }
    }
}
