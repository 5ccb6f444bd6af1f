//! The transforms of Winograd's minimal filtering F(m×m, 3×3) over the tiles of one task: `V =
//! Bᵀ d B` from the input, `Y = Aᵀ M A` to the output, written once over [`Simd`]. The driver
//! (`ops/winograd.rs`) transforms the kernels, cuts the work into [`Task`]s and multiplies.

use super::Simd;
use crate::fast::mat::{spread_stride, Grid, Mat};

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
    pub(crate) fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Inputs per side.
    pub(crate) fn a(self) -> usize {
        self.m() + 2
    }

    pub(crate) fn positions(self) -> usize {
        self.a() * self.a()
    }

    /// Row `i` of G.
    pub(crate) fn g(self, i: usize) -> [f64; 3] {
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

/// The tiles of one task: tile rows `first..first + count` of `grid`, whose output pixels start
/// at pixel row `first_pixel`.
#[derive(Clone, Copy)]
pub(crate) struct Task {
    pub(crate) tile: Tile,
    pub(crate) grid: Grid,
    pub(crate) first: usize,
    pub(crate) count: usize,
    pub(crate) first_pixel: usize,
}

impl Task {
    pub(crate) fn tiles(&self) -> usize {
        self.count * self.grid.w.div_ceil(self.tile.m())
    }

    /// Floats between the [tiles × c] planes of V or M, one per position: padded so that the
    /// planes a tile's transform writes (or reads) together do not share L1 cache sets.
    pub(crate) fn plane(&self, c: usize) -> usize {
        spread_stride(self.tiles() * c)
    }

    /// The pixel rows the task's tiles cover (tile row `r` = image `r / ⌈h/m⌉`, pixel rows
    /// `m·(r mod ⌈h/m⌉)` and the m − 1 next, where they exist).
    pub(crate) fn pixel_rows(&self) -> std::ops::Range<usize> {
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
/// The CPU runs `S`'s instruction set (only from its entry point: see `isa`).
#[inline(always)]
pub(crate) unsafe fn input<S: Simd>(task: &Task, c: usize, src: Mat, v: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe {
        match task.tile {
            Tile::F2 => input_with::<S, 4, InputF2>(task, c, src, v),
            Tile::F4 => input_with::<S, 6, InputF4>(task, c, src, v),
        }
    }
}

/// # Safety
/// As [`input`].
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
            // Columns as they are loaded, then rows as they are stored: the patch never needs
            // to sit in registers whole.
            // SAFETY: the CPU runs `S`'s instruction set (the caller's contract).
            let mut cols = [[unsafe { S::zero() }; A]; A];
            for j in 0..A {
                // SAFETY: lanes c0..c0 + live.min(LANES) lie inside each row of c values (sliced
                // above, or `zeros`).
                let col: [S; A] =
                    std::array::from_fn(|i| unsafe { S::load_upto(rows[A * i + j].add(c0), live) });
                for (row, x) in cols.iter_mut().zip(F::apply(col)) {
                    row[j] = x;
                }
            }
            for (i, row) in cols.into_iter().enumerate() {
                for (j, x) in F::apply(row).into_iter().enumerate() {
                    let p = A * i + j;
                    // SAFETY: lanes c0..c0 + live.min(LANES) of tile t at position p lie inside
                    // V's [positions][plane] (asserted above).
                    unsafe { x.store_upto(v.add(p * plane + t * c + c0), live) };
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` for each tile of `task`, written to the pixels of `out` (rows `ld` apart) that
/// exist, in vectors of `S`; `M` laid out as `V` in [`input`].
///
/// # Safety
/// The CPU runs `S`'s instruction set (only from its entry point: see `isa`).
#[inline(always)]
pub(crate) unsafe fn output<S: Simd>(task: &Task, c: usize, m: &[f32], out: (&mut [f32], usize)) {
    // SAFETY: the caller's contract.
    unsafe {
        match task.tile {
            Tile::F2 => output_with::<S, 4, 2, OutputF2>(task, c, m, out),
            Tile::F4 => output_with::<S, 6, 4, OutputF4>(task, c, m, out),
        }
    }
}

/// # Safety
/// As [`output`].
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
            // As in `input_with`: columns as they are loaded, rows as they are stored.
            // SAFETY: the CPU runs `S`'s instruction set (the caller's contract).
            let mut cols = [[unsafe { S::zero() }; A]; B];
            for j in 0..A {
                let col: [S; A] = std::array::from_fn(|i| {
                    let p = A * i + j;
                    // SAFETY: lanes c0..c0 + live.min(LANES) of tile t at position p lie inside
                    // M's [positions][plane] (asserted above).
                    unsafe { S::load_upto(m.as_ptr().add(p * plane + t * c + c0), live) }
                });
                for (row, x) in cols.iter_mut().zip(F::apply(col)) {
                    row[j] = x;
                }
            }
            for (i, row) in cols.into_iter().enumerate() {
                for (j, y) in F::apply(row).into_iter().enumerate() {
                    if let Some(at) = dst[B * i + j] {
                        // SAFETY: lanes c0..c0 + live.min(LANES) lie inside the destination
                        // row of c values (sliced above).
                        unsafe { y.store_upto(at.add(c0), live) };
                    }
                }
            }
        }
    }
}
