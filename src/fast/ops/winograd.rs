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

use crate::fast::isa::Kernels;
use crate::fast::mat::{Grid, Mat, MatMut};
use crate::fast::memory::{part_size, split_disjoint, with_scratch};
use crate::fast::ops::gemm::{product, Packed};
use crate::fast::team;
use crate::fast::ukernel::reduced::Format;
use crate::fast::ukernel::winograd::{Task, Tile};

/// Tiles one task transforms and multiplies at once: their transformed copies stay in a core's
/// L2 cache (48 tiles × 36 positions × 128 channels of F(4×4): 864 KiB).
const TILES_PER_TASK: usize = 48;

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
    /// From a PyTorch weight `[c_out, c_in, 3, 3]`, flattened; `U` packed in `format` (f32 or
    /// bf16).
    pub(crate) fn new(
        tile: Tile,
        weight: &[f32],
        (c_out, c_in): (usize, usize),
        format: Format,
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
                Packed::new(format, c_in, c_out, |ci, co| {
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
        let tasks = (0..tile_rows).step_by(per_task).map(|first| {
            let task = Task {
                tile: self.tile,
                grid,
                first,
                count: per_task.min(tile_rows - first),
                first_pixel: 0,
            };
            let pixel_rows = task.pixel_rows();
            let first_pixel = pixel_rows.start;
            (
                Task {
                    first_pixel,
                    ..task
                },
                pixel_rows.len() * dst_ld,
            )
        });
        let jobs = split_disjoint(dst.data, tasks);
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
            let conv = Winograd::new(tile, &weight, (c_out, c_in), Format::F32);
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
                            "{tile:?} {kernels:?} pixel {row} channel {co}: {got} vs {w}"
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
