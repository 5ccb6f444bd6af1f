//! 3×3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(2×2, 3×3): each 2×2
//! block of outputs costs 16 multiplications per input channel instead of 36.
//!
//! With `d` a 4×4 input patch and `g` a 3×3 kernel, the 2×2 outputs are `Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A`.
//! The kernel transform `U = G g Gᵀ` is done once, in f64; per tile the input transform
//! `V = Bᵀ d B` and the output transform take only additions, and the 16 element-wise products,
//! summed over channels, are 16 matrix products `[tiles × c_in]·[c_in × c_out]`. The products
//! are exact in real arithmetic; in f32 the transforms add a few roundings per value (measured
//! by the parity tests: well inside their 1e-4 on the logits).

use rayon::prelude::*;

use super::gemm::{product, Packed};
use super::kernels::Grid;
use super::{part_size, with_scratch};

/// Tiles one task transforms and multiplies at once: 16 transformed copies of them stay in a
/// core's L2 cache.
const TILES_PER_TASK: usize = 48;

/// Channels one step of the transforms handles (one AVX-512 vector).
const LANES: usize = 16;

/// Positions in a transformed 4×4 tile.
const POSITIONS: usize = 16;

/// A 3×3, stride-1, padding-1 convolution in the Winograd domain.
#[derive(Clone, Debug)]
pub(crate) struct Winograd {
    c_in: usize,
    c_out: usize,
    /// `U` at each of the 16 positions, as [c_in × c_out].
    kernels: Vec<Packed>,
}

impl Winograd {
    /// From a PyTorch weight `[c_out, c_in, 3, 3]`, flattened.
    pub(crate) fn new(weight: &[f32], c_out: usize, c_in: usize) -> Self {
        const G: [[f64; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        // u[(co·c_in + ci)·16 + p] = (G g Gᵀ)[p] for kernel g = weight[co][ci].
        let mut u = vec![0.0f32; c_out * c_in * POSITIONS];
        for (g, out) in weight.chunks_exact(9).zip(u.chunks_exact_mut(POSITIONS)) {
            for i in 0..4 {
                for j in 0..4 {
                    let mut s = 0.0f64;
                    for (a, row) in g.chunks_exact(3).enumerate() {
                        for (b, &w) in row.iter().enumerate() {
                            s += G[i][a] * f64::from(w) * G[j][b];
                        }
                    }
                    out[4 * i + j] = s as f32;
                }
            }
        }
        let kernels = (0..POSITIONS)
            .map(|p| Packed::new(c_in, c_out, |ci, co| u[(co * c_in + ci) * POSITIONS + p]))
            .collect();
        Self {
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

    /// Convolves `src` (rows `ld` apart, over `grid`) into columns `0..c_out` of `dst` (rows
    /// `dst_ld` apart), one pixel per row, as the PyTorch convolution does.
    pub(crate) fn run(
        &self,
        (src, ld, grid): (&[f32], usize, Grid),
        dst: &mut [f32],
        dst_ld: usize,
    ) {
        let tiles_w = grid.w.div_ceil(2);
        let tile_rows = grid.n * grid.h.div_ceil(2);
        let per_task = part_size(tile_rows, (TILES_PER_TASK / tiles_w).max(1));
        // A row of tiles covers whole rows of pixels, so a run of them owns a contiguous
        // range of `dst`.
        let mut jobs = Vec::with_capacity(tile_rows.div_ceil(per_task));
        let mut rest = dst;
        let mut first = 0;
        while first < tile_rows {
            let count = per_task.min(tile_rows - first);
            let pixel_rows = self.pixel_rows(grid, first, first + count);
            let (mine, others) = rest.split_at_mut((pixel_rows.len() * dst_ld).min(rest.len()));
            let task = Task {
                grid,
                first,
                count,
                first_pixel: pixel_rows.start,
            };
            jobs.push((task, mine));
            rest = others;
            first += count;
        }
        jobs.into_par_iter().for_each(|(task, out)| {
            let tiles = task.tiles();
            let (v_len, m_len) = (
                POSITIONS * tiles * self.c_in,
                POSITIONS * tiles * self.c_out,
            );
            with_scratch(v_len + m_len, |scratch| {
                let (v, m) = scratch.split_at_mut(v_len);
                transforms::input(&task, self.c_in, (src, ld), v);
                for (p, kernel) in self.kernels.iter().enumerate() {
                    let a = &v[p * tiles * self.c_in..][..tiles * self.c_in];
                    let c = &mut m[p * tiles * self.c_out..][..tiles * self.c_out];
                    product(tiles, a, self.c_in, kernel, c, self.c_out, None);
                }
                transforms::output(&task, self.c_out, m, (out, dst_ld));
            });
        });
    }

    /// Pixel rows covered by tile rows `from..to` (tile row `r` = image `r / ⌈h/2⌉`, rows
    /// `2·(r mod ⌈h/2⌉)` and the next, where it exists).
    fn pixel_rows(&self, grid: Grid, from: usize, to: usize) -> std::ops::Range<usize> {
        let th = grid.h.div_ceil(2);
        let start = |r: usize| ((r / th) * grid.h + (2 * (r % th)).min(grid.h)) * grid.w;
        start(from)..if to.is_multiple_of(th) {
            (to / th) * grid.h * grid.w
        } else {
            start(to)
        }
    }
}

/// The tiles of one task: tile rows `first..first + count` of `grid`, whose output pixels start
/// at pixel row `first_pixel`.
struct Task {
    grid: Grid,
    first: usize,
    count: usize,
    first_pixel: usize,
}

impl Task {
    fn tiles(&self) -> usize {
        self.count * self.grid.w.div_ceil(2)
    }

    /// For each tile in order: the pixel rows of its 4×4 input patch (`None`: padding) and
    /// those of its 2×2 outputs, counted from `first_pixel` (`None`: past the image's edge).
    fn each(&self, mut f: impl FnMut(usize, &[Option<usize>; 16], &[Option<usize>; 4])) {
        let (g, tiles_w, th) = (self.grid, self.grid.w.div_ceil(2), self.grid.h.div_ceil(2));
        let pixel =
            |n: usize, y: usize, x: usize| (y < g.h && x < g.w).then(|| (n * g.h + y) * g.w + x);
        let mut t = 0;
        for tile_row in self.first..self.first + self.count {
            let (n, ty) = (tile_row / th, tile_row % th);
            for tx in 0..tiles_w {
                let mut inputs = [None; POSITIONS];
                for (p, row) in inputs.iter_mut().enumerate() {
                    let y = (2 * ty + p / 4).wrapping_sub(1);
                    *row = pixel(n, y, (2 * tx + p % 4).wrapping_sub(1));
                }
                let mut outputs = [None; 4];
                for (q, row) in outputs.iter_mut().enumerate() {
                    *row = pixel(n, 2 * ty + q / 2, 2 * tx + q % 2).map(|r| r - self.first_pixel);
                }
                f(t, &inputs, &outputs);
                t += 1;
            }
        }
    }
}

/// The per-tile transforms of one task: AVX-512 vectors of 16 channels where the CPU has them,
/// plain lane loops elsewhere. `V` and `M` are laid out [16 positions][tiles][channels].
mod transforms {
    use super::{Task, LANES, POSITIONS};
    #[cfg(target_arch = "x86_64")]
    use crate::fast::gemm::avx512;

    /// `V = Bᵀ d B` for each tile of `task`, from `src` (`c` channels, rows `ld` apart).
    pub(super) fn input(task: &Task, c: usize, src: (&[f32], usize), v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: AVX-512F is present.
            return unsafe { vector::input(task, c, src, v) };
        }
        let n_tiles = task.tiles();
        let (src, ld) = src;
        task.each(|t, inputs, _| {
            for c0 in (0..c).step_by(LANES) {
                let width = LANES.min(c - c0);
                let mut d = [[0.0f32; LANES]; POSITIONS];
                for (lanes, row) in d.iter_mut().zip(inputs) {
                    if let Some(row) = row {
                        lanes[..width].copy_from_slice(&src[row * ld + c0..][..width]);
                    }
                }
                let out = super::transform_input(&d);
                for (p, lanes) in out.iter().enumerate() {
                    v[(p * n_tiles + t) * c + c0..][..width].copy_from_slice(&lanes[..width]);
                }
            }
        });
    }

    /// `Y = Aᵀ M A` for each tile of `task`, written to the pixels of `out` (rows `ld` apart)
    /// that exist.
    pub(super) fn output(task: &Task, c: usize, m: &[f32], out: (&mut [f32], usize)) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: AVX-512F is present.
            return unsafe { vector::output(task, c, m, out) };
        }
        let n_tiles = task.tiles();
        let (out, ld) = out;
        task.each(|t, _, outputs| {
            for c0 in (0..c).step_by(LANES) {
                let width = LANES.min(c - c0);
                let mut lanes = [[0.0f32; LANES]; POSITIONS];
                for (p, l) in lanes.iter_mut().enumerate() {
                    l[..width].copy_from_slice(&m[(p * n_tiles + t) * c + c0..][..width]);
                }
                let y = super::transform_output(&lanes);
                for (values, row) in y.iter().zip(outputs) {
                    if let Some(row) = row {
                        out[row * ld + c0..][..width].copy_from_slice(&values[..width]);
                    }
                }
            }
        });
    }

    /// The transforms with AVX-512 vectors, 16 channels at a time (masked at the end).
    #[cfg(target_arch = "x86_64")]
    mod vector {
        use super::{Task, LANES, POSITIONS};
        use std::arch::x86_64::*;

        /// Mask of the first `live` of 16 lanes.
        #[inline(always)]
        fn mask(live: usize) -> __mmask16 {
            if live >= LANES {
                !0
            } else {
                (1 << live) - 1
            }
        }

        /// See `super::input`; the caller has checked AVX-512F.
        #[target_feature(enable = "avx512f")]
        pub(in super::super) unsafe fn input(
            task: &Task,
            c: usize,
            (src, ld): (&[f32], usize),
            v: &mut [f32],
        ) {
            let n_tiles = task.tiles();
            assert!(v.len() >= POSITIONS * n_tiles * c, "winograd: V too short");
            let v = v.as_mut_ptr();
            // Padding reads zeros from here, so the loads below need no branches.
            let zeros = vec![0.0f32; c];
            task.each(|t, inputs, _| {
                let mut rows = [zeros.as_ptr(); POSITIONS];
                for (row, input) in rows.iter_mut().zip(inputs) {
                    if let Some(r) = input {
                        *row = src[r * ld..][..c].as_ptr();
                    }
                }
                for c0 in (0..c).step_by(LANES) {
                    let k = mask(c - c0);
                    // SAFETY (loads and stores): lanes c0.. under mask `k` lie inside each
                    // row of c values (sliced above, or `zeros`), and inside V's
                    // [16][n_tiles][c] (asserted above).
                    let mut d = [_mm512_setzero_ps(); POSITIONS];
                    for (x, row) in d.iter_mut().zip(&rows) {
                        *x = _mm512_maskz_loadu_ps(k, row.add(c0));
                    }
                    // Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] on the
                    // columns, then on the rows.
                    let mut e = [_mm512_setzero_ps(); POSITIONS];
                    for j in 0..4 {
                        e[j] = _mm512_sub_ps(d[j], d[8 + j]);
                        e[4 + j] = _mm512_add_ps(d[4 + j], d[8 + j]);
                        e[8 + j] = _mm512_sub_ps(d[8 + j], d[4 + j]);
                        e[12 + j] = _mm512_sub_ps(d[4 + j], d[12 + j]);
                    }
                    for i in 0..4 {
                        let r = &e[4 * i..4 * i + 4];
                        let out = [
                            _mm512_sub_ps(r[0], r[2]),
                            _mm512_add_ps(r[1], r[2]),
                            _mm512_sub_ps(r[2], r[1]),
                            _mm512_sub_ps(r[1], r[3]),
                        ];
                        for (j, x) in out.into_iter().enumerate() {
                            let p = 4 * i + j;
                            _mm512_mask_storeu_ps(v.add((p * n_tiles + t) * c + c0), k, x);
                        }
                    }
                }
            });
        }

        /// See `super::output`; the caller has checked AVX-512F.
        #[target_feature(enable = "avx512f")]
        pub(in super::super) unsafe fn output(
            task: &Task,
            c: usize,
            m: &[f32],
            (out, ld): (&mut [f32], usize),
        ) {
            let n_tiles = task.tiles();
            assert!(m.len() >= POSITIONS * n_tiles * c, "winograd: M too short");
            task.each(|t, _, outputs| {
                let mut dst = [None; 4];
                for (at, row) in dst.iter_mut().zip(outputs) {
                    if let Some(row) = row {
                        let row: &mut [f32] = &mut out[row * ld..][..c];
                        *at = Some(row.as_mut_ptr());
                    }
                }
                for c0 in (0..c).step_by(LANES) {
                    let k = mask(c - c0);
                    // SAFETY (loads and stores): lanes c0.. under mask `k` lie inside M's
                    // [16][n_tiles][c] (asserted above) and inside each destination row of c
                    // values (sliced above).
                    let mut x = [_mm512_setzero_ps(); POSITIONS];
                    for (p, x) in x.iter_mut().enumerate() {
                        *x = _mm512_maskz_loadu_ps(k, m.as_ptr().add((p * n_tiles + t) * c + c0));
                    }
                    // Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]] on the columns, then on the rows.
                    let mut f = [_mm512_setzero_ps(); 8];
                    for j in 0..4 {
                        f[j] = _mm512_add_ps(_mm512_add_ps(x[j], x[4 + j]), x[8 + j]);
                        f[4 + j] = _mm512_sub_ps(_mm512_sub_ps(x[4 + j], x[8 + j]), x[12 + j]);
                    }
                    for i in 0..2 {
                        let r = &f[4 * i..4 * i + 4];
                        let y = [
                            _mm512_add_ps(_mm512_add_ps(r[0], r[1]), r[2]),
                            _mm512_sub_ps(_mm512_sub_ps(r[1], r[2]), r[3]),
                        ];
                        for (j, value) in y.into_iter().enumerate() {
                            if let Some(at) = dst[2 * i + j] {
                                _mm512_mask_storeu_ps(at.add(c0), k, value);
                            }
                        }
                    }
                }
            });
        }
    }
}

/// `Bᵀ d B` lane by lane, `d` in row-major order of the 4×4 patch.
#[inline(always)]
fn transform_input(d: &[[f32; LANES]; POSITIONS]) -> [[f32; LANES]; POSITIONS] {
    // Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], applied to columns then rows.
    let mut e = [[0.0f32; LANES]; POSITIONS];
    let mut out = [[0.0f32; LANES]; POSITIONS];
    for l in 0..LANES {
        for j in 0..4 {
            let col = |i: usize| d[4 * i + j][l];
            e[j][l] = col(0) - col(2);
            e[4 + j][l] = col(1) + col(2);
            e[8 + j][l] = col(2) - col(1);
            e[12 + j][l] = col(1) - col(3);
        }
        for i in 0..4 {
            let row = |j: usize| e[4 * i + j][l];
            out[4 * i][l] = row(0) - row(2);
            out[4 * i + 1][l] = row(1) + row(2);
            out[4 * i + 2][l] = row(2) - row(1);
            out[4 * i + 3][l] = row(1) - row(3);
        }
    }
    out
}

/// `Aᵀ M A` lane by lane: the 2×2 outputs in row-major order.
#[inline(always)]
fn transform_output(m: &[[f32; LANES]; POSITIONS]) -> [[f32; LANES]; 4] {
    // Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]], applied to columns then rows.
    let mut out = [[0.0f32; LANES]; 4];
    for l in 0..LANES {
        let mut f = [[0.0f32; 4]; 2];
        for j in 0..4 {
            let col = |i: usize| m[4 * i + j][l];
            f[0][j] = col(0) + col(1) + col(2);
            f[1][j] = col(1) - col(2) - col(3);
        }
        for (i, row) in f.iter().enumerate() {
            out[2 * i][l] = row[0] + row[1] + row[2];
            out[2 * i + 1][l] = row[1] - row[2] - row[3];
        }
    }
    out
}
