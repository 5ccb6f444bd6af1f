//! 3×3 convolutions (stride 1, padding 1) in int8, tap by tap over their input's uint8 levels
//! in a grid with a border of zeros: nothing is gathered into patches and nothing is
//! transformed.
//!
//! The input is a [`Bordered`] grid: each image one pixel larger on every side, zeros around,
//! each pixel's channels as static uint8 levels (a step per channel, which the kernel's
//! weights carry), written there by the product before the convolution as its results leave
//! the registers. Laid out flat, pixel after pixel and image after image, output position `j`
//! of that grid reads tap (dy, dx) at position `j + (dy − 1)·(w + 2) + (dx − 1)`: for any run of
//! consecutive positions each tap is a run of consecutive rows, which a tile of AMX (or a
//! register block) loads as it is. AMX's tiles compute the positions on the padding too and
//! throw them away (a sixth more work at 32×32, more on small maps: 56 % more at 8×8); AVX-512
//! VNNI's register blocks cover only the runs of positions that are outputs. The products of
//! the taps and channels accumulate exactly in i32, then are scaled back by the output
//! channel's scale.

use crate::fast::isa::Kernels;
use crate::fast::mat::{Grid, MatMut};
use crate::fast::memory::{aligned, part_size, split_disjoint};
use crate::fast::ops::gemm::Packed;
use crate::fast::team;
use crate::fast::ukernel::direct::{BorderedGrid, TapJob, ROWS};
use crate::fast::ukernel::reduced::{Format, INPUT_LEVELS};

/// Most output positions per task: their results (32 channels) and input rows stay in L2.
const MAX_ROWS_PER_TASK: usize = 512;

/// The bordered uint8 input of a batch's 3×3 convolutions (see the module's documentation):
/// `depth` bytes per position, the border and the bytes past each pixel's channels zero.
pub(crate) struct Bordered<'a> {
    bytes: &'a mut [u8],
    geometry: BorderedGrid,
    depth: usize,
}

impl<'a> Bordered<'a> {
    /// The bordered grid of `grid` with `depth` bytes per position in `room` (grown as
    /// needed), all zero.
    pub(crate) fn zeroed(room: &'a mut Vec<u8>, grid: Grid, depth: usize) -> Self {
        let geometry = BorderedGrid::new(grid);
        // On a cache line: each position's `depth` bytes (a multiple of 64) are whole lines.
        let bytes = aligned(room, geometry.len() * depth);
        bytes.fill(0);
        Self {
            bytes,
            geometry,
            depth,
        }
    }

    /// The grid cut for the tasks that write pixel rows `first..first + m` for each tile of
    /// `tile` rows: each tile's first row, its rows, and its part of the bytes, which begins at
    /// that row's position (the first part at the start) and ends where the next part begins.
    pub(crate) fn by_tiles(&mut self, tile: usize) -> Vec<((usize, usize), PixelRows<'_>)> {
        let (geometry, depth) = (self.geometry, self.depth);
        let rows = geometry.grid.pixels();
        let starts: Vec<usize> = (0..rows)
            .step_by(tile.max(1))
            .map(|first| match first {
                0 => 0,
                first => geometry.position(first),
            })
            .collect();
        let parts = starts.iter().enumerate().map(|(i, &start)| {
            let end = starts.get(i + 1).map_or(geometry.len(), |&e| e);
            ((i * tile, start), (end - start) * depth)
        });
        split_disjoint(self.bytes, parts)
            .into_iter()
            .map(|((first, start), bytes)| {
                let m = tile.min(rows - first);
                let part = PixelRows {
                    bytes,
                    geometry,
                    depth,
                    start,
                };
                ((first, m), part)
            })
            .collect()
    }
}

/// A part of a [`Bordered`] grid that one task writes: from position `start`.
pub(crate) struct PixelRows<'a> {
    bytes: &'a mut [u8],
    geometry: BorderedGrid,
    depth: usize,
    start: usize,
}

impl PixelRows<'_> {
    /// The bytes of output pixel `p`'s channels (`depth` of them), which lie in this part.
    pub(crate) fn pixel(&mut self, p: usize) -> &mut [u8] {
        let at = (self.geometry.position(p) - self.start) * self.depth;
        &mut self.bytes[at..][..self.depth]
    }
}

/// A 3×3, stride-1, padding-1 convolution computed in int8.
#[derive(Clone, Debug)]
pub(crate) struct TapConv {
    c_in: usize,
    /// Bytes per bordered pixel: `c_in` rounded up to a tile's row (64 bytes).
    depth: usize,
    /// The kernel as [9·depth × c_out], rows in (tap, channel) order, quantised to int8.
    kernel: Packed,
}

impl TapConv {
    /// From a PyTorch weight `[c_out, c_in, 3, 3]`, flattened, for inputs in levels of `steps`
    /// (one per input channel: the weights carry them), quantised to int8 with `levels` steps
    /// either side of zero (see [`Format::Int8`]).
    pub(crate) fn new(
        weight: &[f32],
        (c_out, c_in): (usize, usize),
        steps: &[f32],
        levels: i8,
    ) -> Self {
        assert_eq!(steps.len(), c_in, "TapConv: a step per input channel");
        let depth = c_in.next_multiple_of(64);
        let format = Format::Int8 {
            levels,
            inputs: INPUT_LEVELS,
        };
        let kernel = Packed::new(format, 9 * depth, c_out, |r, co| {
            let (tap, ci) = (r / depth, r % depth);
            match ci < c_in {
                true => weight[(co * c_in + ci) * 9 + tap] * steps[ci],
                false => 0.0,
            }
        });
        Self {
            c_in,
            depth,
            kernel,
        }
    }

    pub(crate) fn c_in(&self) -> usize {
        self.c_in
    }

    pub(crate) fn c_out(&self) -> usize {
        self.kernel.cols()
    }

    /// Bytes per position of its [`Bordered`] input.
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// Convolves `input` (its levels written) into columns `0..c_out` of `dst`, one pixel per
    /// row.
    pub(crate) fn run(&self, kernels: Kernels, input: &Bordered, dst: MatMut) {
        let geometry = input.geometry;
        if geometry.grid.pixels() == 0 {
            return;
        }
        assert_eq!(input.depth, self.depth, "TapConv: input of another depth");
        let (quads, col_scales, steps) = self.kernel.int8_parts();
        let (first, end) = geometry.outputs();
        let per_task = part_size(end - first, MAX_ROWS_PER_TASK).next_multiple_of(ROWS);
        let parts = (first..end).step_by(per_task).map(|start| {
            let stop = (start + per_task).min(end);
            let rows = geometry.interior_before(stop) - geometry.interior_before(start);
            ((start, stop), rows * dst.ld)
        });
        let jobs: Vec<TapJob> = split_disjoint(dst.data, parts)
            .into_iter()
            .map(|((start, stop), mine)| TapJob {
                bordered: input.bytes,
                depth: self.depth,
                geometry,
                first: start,
                count: stop - start,
                quads,
                steps,
                cols: self.c_out(),
                col_scales,
                out: MatMut {
                    data: mine,
                    ld: dst.ld,
                },
                out_first: geometry.interior_before(start),
            })
            .collect();
        team::for_each(jobs, |job: TapJob| kernels.direct_int8(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast::isa::Precision;
    use crate::fast::ukernel::reduced::{quantize_weight, weight_scale};

    /// The convolution of the levels `q` (`c_in` per pixel) by the kernel times each input
    /// channel's step, quantised to ±`levels` in integers and scaled as the kernels scale it,
    /// by the output channel's scale.
    fn reference(
        grid: Grid,
        (c_in, c_out): (usize, usize),
        (q, w, steps): (&[u8], &[f32], &[f32]),
        levels: i8,
    ) -> Vec<f32> {
        let (h, wd) = (grid.h, grid.w);
        let scaled = |co: usize, ci: usize, t: usize| w[(co * c_in + ci) * 9 + t] * steps[ci];
        let col: Vec<f32> = (0..c_out)
            .map(|co| {
                let max = (0..c_in * 9).fold(0.0f32, |m, i| m.max(scaled(co, i / 9, i % 9).abs()));
                weight_scale(max, levels)
            })
            .collect();
        let qw = |co: usize, ci: usize, t: usize| {
            i64::from(quantize_weight(scaled(co, ci, t), col[co], levels))
        };
        let mut out = vec![0.0; grid.pixels() * c_out];
        for n in 0..grid.n {
            for y in 0..h {
                for xx in 0..wd {
                    for co in 0..c_out {
                        let mut sum = 0i64;
                        for t in 0..9 {
                            let (iy, ix) =
                                ((y + t / 3).wrapping_sub(1), (xx + t % 3).wrapping_sub(1));
                            if iy < h && ix < wd {
                                let p = (n * h + iy) * wd + ix;
                                for ci in 0..c_in {
                                    sum += i64::from(q[p * c_in + ci]) * qw(co, ci, t);
                                }
                            }
                        }
                        out[((n * h + y) * wd + xx) * c_out + co] = sum as f32 * col[co];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_size_and_unit_equals_the_integer_convolution() {
        let all: Vec<Kernels> = Kernels::all_in(Precision::Int8)
            .into_iter()
            .filter(|k| k.int8_taps())
            .collect();
        if all.is_empty() {
            eprintln!("skipped: this CPU has no int8 3×3 convolution (AVX-512 VNNI or AMX)");
        }
        // Maps narrower and wider than a block's rows (runs of outputs of every length up to
        // a register block's 12 and past it), channels around a tile's 64 bytes and a panel's
        // 32 columns, several images (blocks straddle them), written in tiles of rows that
        // straddle image rows and images.
        for &(n, h, w, c_in, c_out, tile) in &[
            (1, 1, 1, 3, 5, 1),
            (2, 4, 4, 48, 12, 5),
            (3, 7, 5, 64, 32, 16),
            (1, 9, 13, 70, 33, 40),
            (2, 16, 16, 128, 32, 100),
            (3, 5, 11, 8, 7, 7),
            (2, 3, 26, 16, 40, 9),
            // Rows of 32 and 8 outputs: the tiles' halves start at each row's first output, and
            // the jobs split rows.
            (2, 9, 32, 64, 32, 50),
            (3, 8, 8, 64, 32, 24),
        ] {
            let grid = Grid { n, h, w };
            // Every level from 0 to 255.
            let q: Vec<u8> = (0..grid.pixels() * c_in)
                .map(|i| (i * 7 % 256) as u8)
                .collect();
            let wt: Vec<f32> = (0..c_out * c_in * 9)
                .map(|i| ((i * 5 % 19) as f32 - 9.2) / 7.0)
                .collect();
            let steps: Vec<f32> = (0..c_in).map(|i| 0.01 + (i % 9) as f32 * 0.003).collect();
            for &kernels in &all {
                let format = kernels.format(Precision::Int8);
                let Format::Int8 { levels, .. } = format else {
                    panic!("{kernels:?}: int8 packed as {format:?}");
                };
                let want = reference(grid, (c_in, c_out), (&q, &wt, &steps), levels);
                let conv = TapConv::new(&wt, (c_out, c_in), &steps, levels);
                let mut room = vec![7u8; 3];
                let mut input = Bordered::zeroed(&mut room, grid, conv.depth());
                for ((first, m), mut part) in input.by_tiles(tile) {
                    for p in first..first + m {
                        part.pixel(p)[..c_in].copy_from_slice(&q[p * c_in..][..c_in]);
                    }
                }
                let ld = c_out + 3;
                let mut got = vec![f32::NAN; grid.pixels() * ld];
                let dst = MatMut { data: &mut got, ld };
                conv.run(kernels, &input, dst);
                for p in 0..grid.pixels() {
                    for co in 0..c_out {
                        assert_eq!(
                            got[p * ld + co],
                            want[p * c_out + co],
                            "{kernels:?} {n}×{h}×{w}, {c_in}→{c_out}: pixel {p}, channel {co}"
                        );
                    }
                    assert!(got[p * ld + c_out..][..3].iter().all(|v| v.is_nan()));
                }
            }
        }
    }
}
