//! The register blocks of the packed product: a [`PanelJob`] (one panel of a product, its
//! bounds checked by the driver in `ops/gemm.rs`) cut into blocks of rows × vectors whose
//! accumulators stay in registers ([`product_panel!`], [`block`]), and their epilogue
//! ([`finish`]). Written once over [`Dot`]; each instruction set expands them for itself.
//!
//! The layout they read is defined here: the right-hand side in panels of [`PANEL`] columns, one
//! row of a panel per step of the product (an f32, a pair of bf16 values or a quad of int8 ones).

#[cfg(target_arch = "aarch64")]
use super::LaneDot;
use super::{Dot, QuadDot, Simd};
use crate::fast::mat::{Epilogue, Mat, MatMut};

/// Columns of one packed panel: two AVX-512 vectors of f32, four AVX2 ones.
pub(crate) const PANEL: usize = 32;

/// Steps of a bf16 product are a multiple of this (padded with zeros): the depth of a tile of
/// AMX (16 pairs, 64 bytes per row).
pub(crate) const TILE_STEPS: usize = 16;

/// A bf16 product's left-hand side holds a multiple of this many rows (the last ones unused):
/// the rows the AMX kernel reads at once.
pub(crate) const TILE_ROWS: usize = 32;

/// One panel's product, its bounds checked by [`product`]: `dst[m × cols] = lhs[m × k] ·
/// panel[k × cols]`, then the epilogue (for the panel's columns). `k` counts steps: values of
/// `T`, each an f32 or a bf16 pair.
pub(crate) struct PanelJob<'a, T = f32> {
    pub(crate) m: usize,
    pub(crate) k: usize,
    pub(crate) lhs: Mat<'a, T>,
    pub(crate) panel: &'a [T],
    pub(crate) cols: usize,
    pub(crate) dst: MatMut<'a>,
    pub(crate) epilogue: Option<Epilogue<'a>>,
    /// For an int8 product: the scales of the panel's columns (a whole panel of them), by
    /// which the i32 results are multiplied before the epilogue. The rows need none: their
    /// static steps are folded into the weights.
    pub(crate) scales: Option<&'a [f32]>,
}

impl<T> PanelJob<'_, T> {
    /// Rows and columns of the job.
    pub(crate) fn extent(&self) -> (usize, usize) {
        (self.m, self.cols)
    }

    /// The register block of at most `mr` rows × `vectors` vectors of `lanes` at row `r` and
    /// column `first` (`r < m`, `first < cols`).
    #[inline(always)]
    pub(crate) fn block(
        &mut self,
        r: usize,
        first: usize,
        mr: usize,
        width: usize,
        lanes: usize,
    ) -> RegisterBlock<T> {
        assert!(r < self.m && first < self.cols, "block outside the job");
        let live = width.min(self.cols - first);
        let epilogue = self
            .epilogue
            .map(|e| (e.scale[first..].as_ptr(), e.shift[first..].as_ptr(), e.relu));
        let scales = self.scales.map(|cols| cols[first..].as_ptr());
        RegisterBlock {
            rows: mr.min(self.m - r),
            vectors: live.div_ceil(lanes),
            k: self.k,
            a: self.lhs.data[r * self.lhs.ld..].as_ptr(),
            lda: self.lhs.ld,
            b: self.panel[first..].as_ptr(),
            c: self.dst.data[r * self.dst.ld + first..].as_mut_ptr(),
            ldc: self.dst.ld,
            live,
            epilogue,
            scales,
        }
    }
}

/// One register block of a [`PanelJob`]: `rows` rows × `live` columns (in `vectors` vectors),
/// over all of `k`, as raw pointers into the job's checked slices.
pub(crate) struct RegisterBlock<T = f32> {
    pub rows: usize,
    pub vectors: usize,
    k: usize,
    a: *const T,
    lda: usize,
    /// The block's first column in the panel, whose rows are [`PANEL`] apart.
    b: *const T,
    c: *mut f32,
    ldc: usize,
    live: usize,
    /// Scale and shift at the block's first column, and the clamp.
    epilogue: Option<(*const f32, *const f32, bool)>,
    /// For int8: the scales from the block's first column.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    scales: Option<*const f32>,
}

/// Cuts a [`PanelJob`] into register blocks of up to the first listed rows × the first listed
/// vectors of `$simd`, and runs each by [`block`] monomorphised for its shape (one per listed
/// rows × vectors), so that the accumulators stay in registers. Expanded inside each instruction
/// set's entry point, with its target features: [`block`] is compiled inside a function that has
/// them, so that the vector operations are inlined before the accumulators are given registers.
/// With `by_lanes` before the rows, each block runs by `block_by_lanes` instead.
macro_rules! product_panel {
    ($job:expr, $simd:ty, $($features:literal,)? [$($rows:literal)*], $vectors:tt) => {
        $crate::fast::ukernel::gemm::product_panel!(
            @kernel block Dot, $job, $simd, $($features,)? [$($rows)*], $vectors
        );
    };
    // The blocks of `block_by_lanes`, for a vector type with a product by one lane.
    ($job:expr, $simd:ty, $($features:literal,)? by_lanes [$($rows:literal)*], $vectors:tt) => {
        $crate::fast::ukernel::gemm::product_panel!(
            @kernel block_by_lanes LaneDot, $job, $simd, $($features,)? [$($rows)*], $vectors
        );
    };
    // The blocks of `quad_block`, for an int8 product: `$simd` a `QuadDot<u32>`.
    ($job:expr, $simd:ty, $($features:literal,)? quads [$($rows:literal)*], $vectors:tt) => {
        $(#[target_feature(enable = $features)])?
        unsafe fn kernel<T: Copy, const R: usize, const V: usize>(
            block: &$crate::fast::ukernel::gemm::RegisterBlock<T>,
        ) where
            $simd: $crate::fast::ukernel::QuadDot<T>,
        {
            // SAFETY: the caller's contract is the block function's.
            unsafe { $crate::fast::ukernel::gemm::quad_block::<$simd, T, R, V>(block) }
        }
        $crate::fast::ukernel::gemm::product_panel!(
            @blocks $job, <$simd as $crate::fast::ukernel::QuadDot<u32>>::Out, [$($rows)*], $vectors
        );
    };
    (@kernel $block:ident $dot:ident, $job:expr, $simd:ty, $($features:literal,)? [$($rows:literal)*], $vectors:tt) => {
        $(#[target_feature(enable = $features)])?
        unsafe fn kernel<T: Copy, const R: usize, const V: usize>(
            block: &$crate::fast::ukernel::gemm::RegisterBlock<T>,
        ) where
            $simd: $crate::fast::ukernel::$dot<T>,
        {
            // SAFETY: the caller's contract is the block function's.
            unsafe { $crate::fast::ukernel::gemm::$block::<$simd, T, R, V>(block) }
        }
        $crate::fast::ukernel::gemm::product_panel!(@blocks $job, $simd, [$($rows)*], $vectors);
    };
    (@blocks $job:expr, $simd:ty, [$mr:literal $($rows:literal)*], $vectors:tt) => {
        let mut job = $job;
        let lanes = <$simd as $crate::fast::ukernel::Simd>::LANES;
        let width = $crate::fast::ukernel::gemm::product_panel!(@first $vectors) * lanes;
        let (m, cols) = job.extent();
        // Rows outermost, so that a block's rows of the left-hand side are read again from L1.
        for r in (0..m).step_by($mr) {
            for first in (0..cols).step_by(width) {
                let block = job.block(r, first, $mr, width, lanes);
                match block.rows {
                    $mr => $crate::fast::ukernel::gemm::product_panel!(@vectors block, $mr, $vectors),
                    $(
                        $rows => $crate::fast::ukernel::gemm::product_panel!(@vectors block, $rows, $vectors),
                    )*
                    _ => unreachable!("a register block of more rows than the kernel has"),
                }
            }
        }
    };
    (@first [$first:literal $($rest:literal)*]) => {
        $first
    };
    (@vectors $block:ident, $r:literal, [$($v:literal)*]) => {
        match $block.vectors {
            // SAFETY: the block comes from the job, with these rows and vectors; the entry point
            // this expands in runs only on CPUs with its instruction set.
            $( $v => unsafe { kernel::<_, $r, $v>(&$block) }, )*
            _ => unreachable!("a register block of more vectors than the kernel has"),
        }
    };
}
pub(crate) use product_panel;

/// R rows × V vectors of columns, accumulated over all of `k` in registers, then the epilogue and
/// the stores of the block's live columns.
///
/// # Safety
/// The CPU runs `S`'s instruction set; `block` comes from [`PanelJob::block`], with R its rows
/// and V its vectors.
#[inline(always)]
pub(crate) unsafe fn block<S: Dot<T>, T: Copy, const R: usize, const V: usize>(
    block: &RegisterBlock<T>,
) {
    // SAFETY: the CPU runs `S`'s instruction set (the caller's contract).
    let mut acc = [[unsafe { S::zero() }; V]; R];
    // SAFETY: as this function's.
    unsafe {
        accumulate(block, 0..block.k, &mut acc);
        finish(block, R, V, |r, v| acc[r][v]);
    }
}

/// As [`block`] for an int8 product: R rows × V vectors of i32 sums over all steps, scaled to
/// f32 by their columns' scales (the rows need none: their static steps are folded into the
/// weights), then the epilogue.
///
/// # Safety
/// As [`block`]; the block is an int8 one (its scales given).
#[inline(always)]
pub(crate) unsafe fn quad_block<Q: QuadDot<T>, T: Copy, const R: usize, const V: usize>(
    block: &RegisterBlock<T>,
) {
    let lanes = <Q::Out as Simd>::LANES;
    let (a, lda) = (block.a, block.lda);
    // SAFETY: the CPU runs `Q`'s instruction set (the caller's contract).
    let mut acc = [[unsafe { Q::zero() }; V]; R];
    for s in 0..block.k {
        // SAFETY: as in `accumulate`.
        unsafe {
            let bp = block.b.add(s * PANEL);
            let bv: [Q; V] = std::array::from_fn(|v| Q::load(bp.add(v * lanes)));
            for (r, row) in acc.iter_mut().enumerate() {
                let x = Q::splat(*a.add(r * lda + s));
                for (v, sum) in row.iter_mut().enumerate() {
                    *sum = sum.dot(x, bv[v]);
                }
            }
        }
    }
    // Scaled into a new array, which the epilogue reads: had it read `acc`, the accumulators
    // would be kept in memory through the loop (a store after every `vpdpbusd`).
    let cols = block.scales.expect("an int8 block has scales");
    // SAFETY: the scales cover a whole panel of columns from the block's first.
    let scaled: [[Q::Out; V]; R] = std::array::from_fn(|r| {
        std::array::from_fn(|v| unsafe { acc[r][v].scaled(cols.add(v * lanes)) })
    });
    // SAFETY: as this function's.
    unsafe { finish(block, R, V, |r, v| scaled[r][v]) };
}

/// As [`block`], for a vector type of four lanes with a product by one lane: four steps of
/// each row are read as one operand, and each step takes its value from that operand's lane
/// (the steps past a multiple of four as [`block`] takes them). The operands of the rows stay
/// in registers too: R + V + R·V of them.
///
/// # Safety
/// As [`block`].
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub(crate) unsafe fn block_by_lanes<S: LaneDot<T>, T: Copy, const R: usize, const V: usize>(
    block: &RegisterBlock<T>,
) {
    const {
        assert!(
            S::LANES == 4,
            "a product by lanes takes four steps at a time"
        )
    };
    let (a, lda) = (block.a, block.lda);
    let whole = block.k - block.k % 4;
    // SAFETY: the CPU runs `S`'s instruction set (the caller's contract).
    let mut acc = [[unsafe { S::zero() }; V]; R];
    for kk in (0..whole).step_by(4) {
        // SAFETY: steps kk..kk + 4 ≤ k of the block's R rows lie inside the left-hand side,
        // and rows kk..kk + 4 of its panel inside the packed weights (see `accumulate`).
        unsafe {
            let rows: [S::Operand; R] =
                std::array::from_fn(|r| S::load_operand(a.add(r * lda + kk)));
            let bp = block.b.add(kk * PANEL);
            lane_step::<S, T, R, V, 0>(&mut acc, &rows, bp);
            lane_step::<S, T, R, V, 1>(&mut acc, &rows, bp.add(PANEL));
            lane_step::<S, T, R, V, 2>(&mut acc, &rows, bp.add(2 * PANEL));
            lane_step::<S, T, R, V, 3>(&mut acc, &rows, bp.add(3 * PANEL));
        }
    }
    // SAFETY: as this function's.
    unsafe {
        accumulate(block, whole..block.k, &mut acc);
        finish(block, R, V, |r, v| acc[r][v]);
    }
}

/// One step of [`block_by_lanes`]: the panel's row at `bp` times lane `L` of each row's operand.
///
/// # Safety
/// `bp..bp + V·LANES` is readable; the CPU runs `S`'s instruction set.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn lane_step<S: LaneDot<T>, T: Copy, const R: usize, const V: usize, const L: i32>(
    acc: &mut [[S; V]; R],
    rows: &[S::Operand; R],
    bp: *const T,
) {
    // SAFETY: the caller's contract.
    let bv: [S::Operand; V] =
        std::array::from_fn(|v| unsafe { S::load_operand(bp.add(v * S::LANES)) });
    for (row, &x) in acc.iter_mut().zip(rows) {
        for (s, &b) in row.iter_mut().zip(&bv) {
            *s = s.dot_lane::<L>(x, b);
        }
    }
}

/// The block's `steps` of the product added to `acc`, each row's value broadcast.
///
/// # Safety
/// As [`block`]; `steps` within `0..k`.
#[inline(always)]
unsafe fn accumulate<S: Dot<T>, T: Copy, const R: usize, const V: usize>(
    block: &RegisterBlock<T>,
    steps: std::ops::Range<usize>,
    acc: &mut [[S; V]; R],
) {
    let (a, lda) = (block.a, block.lda);
    for kk in steps {
        // SAFETY: `PanelJob::block` checked that the block's R rows of `k` steps lie inside the
        // left-hand side and its panel inside the packed weights, whose rows are zero-padded to
        // PANEL columns: whole vectors are always there.
        unsafe {
            let bp = block.b.add(kk * PANEL);
            let bv: [S::Operand; V] =
                std::array::from_fn(|v| S::load_operand(bp.add(v * S::LANES)));
            for (r, row) in acc.iter_mut().enumerate() {
                let x = S::splat_operand(*a.add(r * lda + kk));
                for (v, s) in row.iter_mut().enumerate() {
                    *s = s.dot(x, bv[v]);
                }
            }
        }
    }
}

/// The block's `rows` × `vectors` results, `acc(row, vector)`, through the epilogue to their live
/// columns of `dst`.
///
/// # Safety
/// As [`block`]; `rows` and `vectors` at most the block's.
#[inline(always)]
pub(crate) unsafe fn finish<S: Simd, T>(
    block: &RegisterBlock<T>,
    rows: usize,
    vectors: usize,
    acc: impl Fn(usize, usize) -> S,
) {
    let (c, ldc) = (block.c, block.ldc);
    for v in 0..vectors {
        let first = v * S::LANES;
        let live = block.live.saturating_sub(first).min(S::LANES);
        if live == 0 {
            break;
        }
        // SAFETY: the epilogue's scale and shift hold the block's `live` columns from
        // `first` (checked by `PanelJob::block`).
        let epilogue = block.epilogue.map(|(s, t, relu)| unsafe {
            (
                S::load_upto(s.add(first), live),
                S::load_upto(t.add(first), live),
                relu,
            )
        });
        for r in 0..rows {
            let mut x = acc(r, v);
            if let Some((scale, shift, relu)) = epilogue {
                x = x.mul_add(scale, shift);
                if relu {
                    // SAFETY: `x` exists, so the CPU runs `S`'s instruction set.
                    x = x.max(unsafe { S::zero() });
                }
            }
            // SAFETY: row `r` < `rows` of `dst` holds the block's `live` columns from `first`
            // (checked by `PanelJob::block`).
            unsafe { x.store_upto(c.add(r * ldc + first), live) };
        }
    }
}

/// Read by the x86-64 kernels of the reduced precisions only.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl RegisterBlock<u32> {
    /// The left-hand side's first row and its stride, the panel at the block's first column
    /// (rows [`PANEL`] apart) and the steps to run, for a kernel that reads them in tiles: the
    /// left-hand side holds [`TILE_ROWS`] rows from the block's first, and the packed steps are
    /// a multiple of [`TILE_STEPS`] (see [`product`]); the vector kernels run fewer of them
    /// (`isa::Kernels::int8_steps_run`).
    pub(crate) fn operands(&self) -> (*const u32, usize, *const u32, usize) {
        (self.a, self.lda, self.b, self.k)
    }

    /// For an int8 block: the scales of its columns (from the first, a whole number of vectors
    /// of them readable).
    pub(crate) fn col_scales(&self) -> *const f32 {
        self.scales.expect("an int8 block has scales")
    }
}
