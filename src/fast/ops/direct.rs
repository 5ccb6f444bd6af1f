//! 3×3 convolutions (stride 1, padding 1) in int8, tap by tap over a uint8 copy of the input
//! with a border of zeros: nothing is gathered into patches and nothing is transformed.
//!
//! The input of each image is quantised with one scale (255 over the image's largest value: the
//! inputs come after a ReLU) into a grid one pixel larger on every side, zeros around. Laid out
//! flat, pixel after pixel and image after image, output position `j` of that grid reads tap
//! (dy, dx) at position `j + (dy − 1)·(w + 2) + (dx − 1)`: for any run of consecutive positions
//! each tap is a run of consecutive rows, which a tile of AMX (or a register block) loads as it
//! is. Positions on the padding are computed too and thrown away (a sixth more work at 32×32,
//! more on small maps); the products of the taps and channels accumulate exactly in i32, then
//! are scaled back by the image's scale and the output channel's.

use std::cell::RefCell;

use crate::fast::isa::Kernels;
use crate::fast::mat::{Grid, Mat, MatMut};
use crate::fast::memory::{part_size, split_disjoint};
use crate::fast::ops::gemm::Packed;
use crate::fast::team;
use crate::fast::ukernel::direct::{BorderedGrid, TapJob, ROWS};
use crate::fast::ukernel::reduced::{row_scale, Format, INPUT_LEVELS};

/// Most output positions per task: their results (32 channels) and input rows stay in L2.
const MAX_ROWS_PER_TASK: usize = 512;

thread_local! {
    /// The bordered uint8 input of the last convolution run from this thread, reused.
    static BORDERED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
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
    /// From a PyTorch weight `[c_out, c_in, 3, 3]`, flattened, quantised to int8 with `levels`
    /// steps either side of zero (see [`Format::Int8`]).
    pub(crate) fn new(weight: &[f32], (c_out, c_in): (usize, usize), levels: i8) -> Self {
        let depth = c_in.next_multiple_of(64);
        let format = Format::Int8 {
            levels,
            inputs: INPUT_LEVELS,
        };
        let kernel = Packed::new(format, 9 * depth, c_out, |r, co| {
            let (tap, ci) = (r / depth, r % depth);
            match ci < c_in {
                true => weight[(co * c_in + ci) * 9 + tap],
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

    /// Convolves `src` (over `grid`, values ≥ 0) into columns `0..c_out` of `dst`, one pixel
    /// per row.
    pub(crate) fn run(&self, kernels: Kernels, src: Mat, grid: Grid, dst: MatMut) {
        if grid.pixels() == 0 {
            return;
        }
        let geometry = BorderedGrid::new(grid);
        let depth = self.depth;
        let len = geometry.len();
        BORDERED.with(|bordered| {
            let mut bordered = bordered.borrow_mut();
            if bordered.len() < len * depth {
                bordered.resize(len * depth, 0);
            }
            let (images, slack) =
                bordered[..len * depth].split_at_mut(grid.n * geometry.image * depth);
            slack.fill(0);
            let scales = self.quantize(kernels, src, geometry, images);
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
                    bordered: &bordered[..len * depth],
                    depth,
                    geometry,
                    first: start,
                    count: stop - start,
                    quads,
                    steps,
                    cols: self.c_out(),
                    col_scales,
                    image_scales: &scales,
                    out: MatMut {
                        data: mine,
                        ld: dst.ld,
                    },
                    out_first: geometry.interior_before(start),
                })
                .collect();
            team::for_each(jobs, |job: TapJob| kernels.direct_int8(job));
        });
    }

    /// `src` quantised into the bordered grids `images`, one scale per image (returned), in two
    /// steps that both cut the work by rows, so that every thread has a share even of a single
    /// image: the largest value of each row of pixels, then the quantised rows.
    fn quantize(
        &self,
        kernels: Kernels,
        src: Mat,
        geometry: BorderedGrid,
        images: &mut [u8],
    ) -> Vec<f32> {
        let Grid { n, h, w } = geometry.grid;
        let (c, depth, ld) = (self.c_in, self.depth, src.ld);
        let mut row_max = vec![0.0f32; n * h];
        let per_part = part_size(n * h, MAX_ROWS_PER_TASK / w.max(1) + 1);
        let parts = row_max.chunks_mut(per_part).enumerate().collect();
        team::for_each(parts, |(i, maxima): (usize, &mut [f32])| {
            for (y, max) in (i * per_part..).zip(maxima) {
                let row = &src.data[y * w * ld..];
                *max = if ld == c {
                    kernels.max_f32(&row[..w * c])
                } else {
                    (0..w)
                        .map(|x| kernels.max_f32(&row[x * ld..][..c]))
                        .fold(0.0, f32::max)
                };
            }
        });
        let (scales, inverses): (Vec<f32>, Vec<f32>) = row_max
            .chunks(h)
            .map(|image| row_scale(image.iter().fold(0.0f32, |m, &v| m.max(v))))
            .unzip();
        // Rows of the bordered grids, image after image.
        let (ph, row_bytes) = (h + 2, geometry.pw * depth);
        let per_part = part_size(n * ph, MAX_ROWS_PER_TASK / geometry.pw + 1);
        let parts = images
            .chunks_mut(per_part * row_bytes)
            .enumerate()
            .collect();
        team::for_each(parts, |(i, rows): (usize, &mut [u8])| {
            for (r, row) in (i * per_part..).zip(rows.chunks_exact_mut(row_bytes)) {
                let (image, py) = (r / ph, r % ph);
                if !(1..=h).contains(&py) {
                    row.fill(0);
                    continue;
                }
                let pixels = &src.data[(image * h + py - 1) * w * ld..];
                let (left, rest) = row.split_at_mut(depth);
                let (inside, right) = rest.split_at_mut(w * depth);
                left.fill(0);
                right.fill(0);
                for (x, pixel) in inside.chunks_exact_mut(depth).enumerate() {
                    kernels.quantize_scaled(
                        &pixels[x * ld..][..c],
                        inverses[image],
                        &mut pixel[..c],
                    );
                    pixel[c..].fill(0);
                }
            }
        });
        scales
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast::isa::Precision;
    use crate::fast::ukernel::reduced::{quantize_row, quantize_weight, weight_scale};

    /// The convolution of the quantised input by the kernel quantised to ±`levels` in
    /// integers, scaled as the kernels scale it: image `n`'s scale, then output channel `co`'s.
    fn reference(
        grid: Grid,
        (c_in, c_out): (usize, usize),
        (x, w): (&[f32], &[f32]),
        levels: i8,
    ) -> Vec<f32> {
        let (h, wd) = (grid.h, grid.w);
        let col: Vec<f32> = (0..c_out)
            .map(|co| {
                let max = w[co * c_in * 9..][..c_in * 9]
                    .iter()
                    .fold(0.0f32, |m, v| m.max(v.abs()));
                weight_scale(max, levels)
            })
            .collect();
        let qw = |co: usize, ci: usize, t: usize| {
            i64::from(quantize_weight(
                w[(co * c_in + ci) * 9 + t],
                col[co],
                levels,
            ))
        };
        let mut out = vec![0.0; grid.pixels() * c_out];
        for n in 0..grid.n {
            let image = &x[n * h * wd * c_in..][..h * wd * c_in];
            // One scale for the whole image: the definition of a row, applied to all of it.
            let (scale, q) = quantize_row(image);
            for y in 0..h {
                for xx in 0..wd {
                    for co in 0..c_out {
                        let mut sum = 0i64;
                        for t in 0..9 {
                            let (iy, ix) =
                                ((y + t / 3).wrapping_sub(1), (xx + t % 3).wrapping_sub(1));
                            if iy < h && ix < wd {
                                for ci in 0..c_in {
                                    sum += i64::from(q[(iy * wd + ix) * c_in + ci]) * qw(co, ci, t);
                                }
                            }
                        }
                        out[((n * h + y) * wd + xx) * c_out + co] = sum as f32 * (scale * col[co]);
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
        // Maps narrower and wider than a block's rows, channels around a tile's 64 bytes and
        // a panel's 32 columns, several images (blocks straddle them).
        for &(n, h, w, c_in, c_out) in &[
            (1, 1, 1, 3, 5),
            (2, 4, 4, 48, 12),
            (3, 7, 5, 64, 32),
            (1, 9, 13, 70, 33),
            (2, 16, 16, 128, 32),
        ] {
            let grid = Grid { n, h, w };
            let x: Vec<f32> = (0..grid.pixels() * c_in)
                .map(|i| ((i * 7 % 23) as f32 - 6.0).max(0.0) / 3.0 + (i / (h * w * c_in)) as f32)
                .collect();
            let wt: Vec<f32> = (0..c_out * c_in * 9)
                .map(|i| ((i * 5 % 19) as f32 - 9.2) / 7.0)
                .collect();
            for &kernels in &all {
                let format = kernels.format(Precision::Int8);
                let Format::Int8 { levels, .. } = format else {
                    panic!("{kernels:?}: int8 packed as {format:?}");
                };
                let want = reference(grid, (c_in, c_out), (&x, &wt), levels);
                let conv = TapConv::new(&wt, (c_out, c_in), levels);
                let ld = c_out + 3;
                let mut got = vec![f32::NAN; grid.pixels() * ld];
                let dst = MatMut { data: &mut got, ld };
                conv.run(kernels, Mat { data: &x, ld: c_in }, grid, dst);
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
