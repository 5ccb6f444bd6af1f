//! The int8 3×3 convolution's job as its kernels read it: the bordered uint8 input (see
//! `ops/direct.rs`), the taps' offsets, where each block of [`ROWS`] positions goes, and the
//! stores of its results. Only the x86-64 kernels read it.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use super::gemm::PANEL;
use super::Simd;
use crate::fast::mat::{Grid, MatMut};

/// Output positions one kernel block covers: two tiles of [`HALF`] rows.
pub(crate) const ROWS: usize = 32;

/// The positions of one half of a block: a tile's rows.
pub(crate) const HALF: usize = 16;

/// The bordered grids of a batch (each image with a border of one zero pixel), laid out flat: each image's `(h + 2) × (w + 2)` positions, then
/// room for the last block's reads past the last image.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BorderedGrid {
    pub(crate) grid: Grid,
    /// Positions per row of a bordered grid.
    pub(crate) pw: usize,
    /// Positions per bordered image.
    pub(crate) image: usize,
}

impl BorderedGrid {
    pub(crate) fn new(grid: Grid) -> Self {
        let pw = grid.w + 2;
        Self {
            grid,
            pw,
            image: (grid.h + 2) * pw,
        }
    }

    /// Positions, the room after the last image included: a block of [`ROWS`] outputs from the
    /// last one reads up to `pw + 1` further.
    pub(crate) fn len(&self) -> usize {
        self.grid.n * self.image + ROWS + self.pw + 1
    }

    /// The range of positions to compute: from the first image's first output to the last
    /// one's last.
    pub(crate) fn outputs(&self) -> (usize, usize) {
        let Grid { n, h, w } = self.grid;
        (self.pw + 1, (n - 1) * self.image + h * self.pw + w + 1)
    }

    /// The position of output pixel `p` (counted over the images, row by row).
    pub(crate) fn position(&self, p: usize) -> usize {
        let (n, y, x) = self.grid.position(p);
        n * self.image + (y + 1) * self.pw + x + 1
    }

    /// The first output position at or after `p`, if any.
    fn next_output(&self, p: usize) -> Option<usize> {
        let Grid { n, h, w } = self.grid;
        let (image, q) = (p / self.image, p % self.image);
        let (py, px) = (q / self.pw, q % self.pw);
        let at = |image: usize, py: usize, px: usize| image * self.image + py * self.pw + px;
        let next = match (py, px) {
            (0, _) => at(image, 1, 1),
            (py, _) if py > h => at(image + 1, 1, 1),
            (py, 0) => at(image, py, 1),
            (py, px) if px > w && py == h => at(image + 1, 1, 1),
            (py, px) if px > w => at(image, py + 1, 1),
            _ => p,
        };
        (next / self.image < n).then_some(next)
    }

    /// The offset, in positions, of tap (dy, dx) for dy, dx in 0..3.
    fn tap(&self, dy: usize, dx: usize) -> isize {
        (dy as isize - 1) * self.pw as isize + dx as isize - 1
    }

    /// Output pixels at positions before `j`.
    pub(crate) fn interior_before(&self, j: usize) -> usize {
        let Grid { h, w, .. } = self.grid;
        let (image, q) = (j / self.image, j % self.image);
        let (py, px) = (q / self.pw, q % self.pw);
        let within = match py {
            0 => 0,
            py if py > h => h * w,
            py => (py - 1) * w + px.saturating_sub(1).min(w),
        };
        image * h * w + within
    }
}

/// The rows of one block of a [`TapJob`]: each one's row of the job's output, if it has one.
pub(crate) struct BlockRows {
    pub out: [Option<usize>; ROWS],
}

impl BlockRows {
    /// The runs `start..end` of consecutive rows that have an output: what a kernel that can
    /// skip the padding computes.
    pub(crate) fn output_runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut r = 0;
        std::iter::from_fn(move || {
            while r < ROWS && self.out[r].is_none() {
                r += 1;
            }
            let start = r;
            while r < ROWS && self.out[r].is_some() {
                r += 1;
            }
            (start < r).then_some((start, r))
        })
    }
}

/// The outputs at positions `first..first + count` of one [`TapConv`], its bounds checked at
/// construction, as the instruction sets' kernels read it.
pub(crate) struct TapJob<'a> {
    pub(crate) bordered: &'a [u8],
    pub(crate) depth: usize,
    pub(crate) geometry: BorderedGrid,
    pub(crate) first: usize,
    pub(crate) count: usize,
    pub(crate) quads: &'a [u32],
    pub(crate) steps: usize,
    pub(crate) cols: usize,
    pub(crate) col_scales: &'a [f32],
    pub(crate) out: MatMut<'a>,
    /// The output pixel of the first output in `first..`: `out`'s first row.
    pub(crate) out_first: usize,
}

impl TapJob<'_> {
    /// The first positions of the job's blocks of [`ROWS`] (the last one may run past the
    /// job: its extra rows are read, never stored).
    pub(crate) fn blocks(&self) -> std::iter::StepBy<std::ops::Range<usize>> {
        (self.first..self.first + self.count).step_by(ROWS)
    }

    /// Bytes per bordered pixel (a multiple of 64), and the byte offset of each step of 64 bytes
    /// of each tap, in the order of the kernel's steps (tap after tap).
    pub(crate) fn offsets(&self) -> (usize, Vec<isize>) {
        let depth = self.depth;
        let taps = (0..3).flat_map(|dy| (0..3).map(move |dx| (dy, dx)));
        let offsets = taps
            .flat_map(|(dy, dx)| {
                let tap = self.geometry.tap(dy, dx) * depth as isize;
                (0..depth / 64).map(move |s| tap + 64 * s as isize)
            })
            .collect();
        (depth, offsets)
    }

    /// The bordered input at the start of position `j`, a block of which (rows `j..j + ROWS`) may
    /// be read at any tap's offset (a half of [`TapJob::tile_blocks`] too: it starts before
    /// the job's end).
    pub(crate) fn input(&self, j: usize) -> *const u8 {
        let reach = self.geometry.pw + 1;
        assert!(j >= reach && (j + ROWS + reach) * self.depth <= self.bordered.len());
        self.bordered[j * self.depth..].as_ptr()
    }

    /// Panels of the kernel, and the quads of panel `p` (steps of [`PANEL`] columns, 16 steps
    /// of 64 bytes for each offset of [`TapJob::offsets`]).
    pub(crate) fn panels(&self) -> usize {
        self.cols.div_ceil(PANEL)
    }

    pub(crate) fn panel(&self, p: usize) -> *const u32 {
        self.quads[p * self.steps * PANEL..][..self.steps * PANEL].as_ptr()
    }

    /// Where the rows of the block at position `j` go: each one's row of `out` (`None` for a
    /// position on the padding or past the job).
    pub(crate) fn rows(&self, j: usize) -> BlockRows {
        self.tile_rows((j, Some(j + HALF)))
    }

    /// The blocks of two tiles of [`HALF`] consecutive positions each, for a kernel whose two
    /// halves of a block may start anywhere (AMX: one tile load each): each half starts at the
    /// first output position after the one before, so that no half starts on the padding. At
    /// 32 and 16 pixels a row the halves cover the rows' outputs exactly; at 8 and 4 they
    /// cover a row's two border positions between outputs, but never the rows between images.
    /// The last block may have no second half.
    pub(crate) fn tile_blocks(&self) -> impl Iterator<Item = (usize, Option<usize>)> + '_ {
        let g = self.geometry;
        let end = self.first + self.count;
        let start = move |p: usize| g.next_output(p).filter(|&p| p < end);
        let mut next = start(self.first);
        std::iter::from_fn(move || {
            let first = next?;
            let second = start(first + HALF);
            next = second.and_then(|s| start(s + HALF));
            Some((first, second))
        })
    }

    /// Where the rows of the block whose halves start at positions `halves` go (see
    /// [`TapJob::tile_blocks`]): each one's row of `out` (`None` for a position on the padding
    /// or past the job). Counted along the positions, with one division per half rather than
    /// some per row.
    pub(crate) fn tile_rows(&self, (first, second): (usize, Option<usize>)) -> BlockRows {
        let (g, Grid { n, h, w }) = (self.geometry, self.geometry.grid);
        let end = self.first + self.count;
        let mut rows = BlockRows { out: [None; ROWS] };
        for (half, start) in [Some(first), second].into_iter().enumerate() {
            let Some(start) = start else {
                continue;
            };
            // Run by run along a bordered row: the outputs of a row are consecutive.
            let (mut image, q) = (start / g.image, start % g.image);
            let (mut py, mut px) = (q / g.pw, q % g.pw);
            let mut r = 0;
            while r < HALF && start + r < end && image < n {
                let left = (HALF - r).min(end - start - r);
                let step = if (1..=h).contains(&py) && (1..=w).contains(&px) {
                    let run = left.min(w + 1 - px);
                    let first = (image * h + py - 1) * w + px - 1 - self.out_first;
                    for (j, out) in rows.out[half * HALF + r..][..run].iter_mut().enumerate() {
                        *out = Some(first + j);
                    }
                    run
                } else {
                    // On the border: up to the next row's first output, or the row's end.
                    let next = if (1..=h).contains(&py) && px == 0 {
                        1
                    } else {
                        g.pw
                    };
                    left.min(next - px)
                };
                r += step;
                px += step;
                if px == g.pw {
                    (px, py) = (0, py + 1);
                    if py == h + 2 {
                        (py, image) = (0, image + 1);
                    }
                }
            }
        }
        rows
    }

    /// The scales of panel `p`'s columns (a whole panel of them).
    pub(crate) fn col_scales(&self, p: usize) -> *const f32 {
        self.col_scales[p * PANEL..][..PANEL].as_ptr()
    }

    /// Stores the rows of a block (see [`TapJob::rows`]) that are outputs of the job: for
    /// panel `p`, `vectors` vectors of `S::LANES` columns, `result(r, v)` for row `r`, vector
    /// `v`.
    #[inline(always)]
    pub(crate) fn store<S: Simd>(
        &mut self,
        rows: &BlockRows,
        p: usize,
        vectors: usize,
        result: impl Fn(usize, usize) -> S,
    ) {
        let first_col = p * PANEL;
        let live = PANEL.min(self.cols - first_col);
        for (r, out) in rows.out.iter().enumerate() {
            let Some(row) = *out else {
                continue;
            };
            let dst = &mut self.out.data[row * self.out.ld + first_col..][..live];
            for v in 0..vectors.min(live.div_ceil(S::LANES)) {
                let first = v * S::LANES;
                // SAFETY: the vector exists, so the CPU runs its instruction set; the lanes
                // written, `live - first` capped at LANES, lie inside `dst` (sliced above).
                unsafe { result(r, v).store_upto(dst[first..].as_mut_ptr(), live - first) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job over all of `grid`'s outputs (its kernel's parts empty: only the positions matter).
    fn whole_job(geometry: BorderedGrid, out: &mut [f32]) -> TapJob<'_> {
        let (first, end) = geometry.outputs();
        TapJob {
            bordered: &[],
            depth: 64,
            geometry,
            first,
            count: end - first,
            quads: &[],
            steps: 0,
            cols: 1,
            col_scales: &[],
            out: MatMut { data: out, ld: 1 },
            out_first: 0,
        }
    }

    #[test]
    fn tile_halves_cover_every_output_once_and_at_16_and_32_wide_nothing_else() {
        for (n, h, w) in [
            (2, 32, 32),
            (3, 16, 16),
            (2, 8, 8),
            (3, 4, 4),
            (2, 5, 7),
            (1, 1, 1),
        ] {
            let grid = Grid { n, h, w };
            let geometry = BorderedGrid::new(grid);
            let mut out = vec![0.0; grid.pixels()];
            let job = whole_job(geometry, &mut out);
            let (mut seen, mut computed) = (vec![0; grid.pixels()], 0);
            for halves in job.tile_blocks() {
                // Each half starts at an output.
                for start in [Some(halves.0), halves.1].into_iter().flatten() {
                    assert_eq!(geometry.next_output(start), Some(start), "{grid:?}");
                    computed += HALF;
                }
                for pixel in job.tile_rows(halves).out.into_iter().flatten() {
                    seen[pixel] += 1;
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "{grid:?}: {seen:?}");
            if w % HALF == 0 {
                assert_eq!(
                    computed,
                    grid.pixels(),
                    "{grid:?}: the halves computed the border"
                );
            }
        }
    }
}
