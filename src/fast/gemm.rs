//! The one matrix product of the fast path: `dst[m × n] = lhs[m × k] · rhs[k × n]`, pixels as
//! rows, with the right-hand side (a layer's weights) packed once at load into column panels.
//!
//! A register-blocked kernel, written once over [`Simd`], reads the activations in place (one
//! broadcast per row and step of `k`) and the packed weights as whole vectors, so nothing is
//! copied per call; an optional per-column scale-shift(-clamp) is applied as results leave the
//! registers. Each instruction set instantiates it with its own block shape (`isa/`).
//!
//! In bf16 ([`Precision::Bf16`]) the weights are packed as pairs of bf16 values (two rows of
//! `k` in one 32-bit word) and the left-hand side is rounded to bf16 pairs as it is gathered
//! into a scratch copy; the same kernel then takes one step per pair with a dot-product
//! instruction, accumulating in f32.
//!
//! In int8 ([`Precision::Int8`]) the weights are quantised once, symmetric per column (int8,
//! ±127, one f32 scale per column), and packed as quads (four rows of `k` in one word); each row
//! of the left-hand side is quantised to uint8 as it is gathered, with one scale per row from
//! its largest value ([`quantize_row`]). Products of quads accumulate exactly in i32; the
//! results are scaled back to f32 (row scale × column scale) before the epilogue.

use std::cell::RefCell;

use super::isa::{Dot, Kernels, Precision, Simd};
use super::kernels::{Affine, Mat, MatMut};
use super::{padded, with_scratch};

/// Columns of one packed panel: two AVX-512 vectors of f32, four AVX2 ones.
pub(crate) const PANEL: usize = 32;

/// A per-column map `x·scale + shift` (then `max(·, 0)` if `relu`) applied to the product.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epilogue<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub relu: bool,
}

/// A right-hand side [k × n], stored as consecutive row-major panels of [`PANEL`] columns (the
/// last one zero-padded), so that each step of `k` reads whole vectors.
#[derive(Clone, Debug)]
pub(crate) struct Packed {
    k: usize,
    n: usize,
    values: Values,
}

/// The values of a [`Packed`], one row of panel after another per step of the product.
#[derive(Clone, Debug)]
enum Values {
    /// One row of `k` per step.
    F32(Vec<f32>),
    /// Rows `2s` and `2s + 1` per step `s`, rounded to bf16 and paired in one word (see
    /// [`bf16_pair`]), zero-padded to a multiple of [`TILE_STEPS`] steps.
    Bf16(Vec<u32>),
    /// Rows `4s..4s + 4` per step `s`, quantised to int8 and packed in one word (the first row
    /// in the low byte), zero-padded to a multiple of [`TILE_STEPS`] steps; and each column's
    /// scale (a whole number of panels of them).
    Int8 { quads: Vec<u32>, scales: Vec<f32> },
}

/// Steps of a bf16 product are a multiple of this (padded with zeros): the depth of a tile of
/// AMX (16 pairs, 64 bytes per row).
pub(crate) const TILE_STEPS: usize = 16;

/// A bf16 product's left-hand side holds a multiple of this many rows (the last ones unused):
/// the rows the AMX kernel reads at once.
pub(crate) const TILE_ROWS: usize = 32;

/// Steps of a bf16 product of depth `k`.
fn bf16_steps(k: usize) -> usize {
    k.div_ceil(2).next_multiple_of(TILE_STEPS)
}

/// Steps of an int8 product of depth `k`.
fn int8_steps(k: usize) -> usize {
    k.div_ceil(4).next_multiple_of(TILE_STEPS)
}

/// The scale of a column of weights whose largest magnitude is `max`: ±127 spans it (1 for a
/// column of zeros).
pub(crate) fn weight_scale(max: f32) -> f32 {
    if max > 0.0 {
        max / 127.0
    } else {
        1.0
    }
}

/// The scale of a row of non-negative inputs whose largest value is `max`, and its inverse,
/// by which the row is multiplied before rounding: 255 spans it (1 for a row of zeros).
/// [`quantize_row`] and each instruction set's quantiser use exactly these.
#[inline(always)]
pub(crate) fn row_scale(max: f32) -> (f32, f32) {
    if max > 0.0 {
        (max / 255.0, 255.0 / max)
    } else {
        (1.0, 1.0)
    }
}

/// A row of non-negative values quantised as the int8 products' left-hand side is: the scale
/// from the row's largest value ([`row_scale`]), each value times its inverse rounded to the
/// nearest integer (ties to even, as `vcvtps2dq`), clamped to 0..=255. The plain definition
/// that the kernels are tested against.
#[cfg(test)]
pub(crate) fn quantize_row(row: &[f32]) -> (f32, Vec<u8>) {
    let max = row.iter().fold(0.0f32, |m, &x| m.max(x));
    let (scale, inverse) = row_scale(max);
    let q = row
        .iter()
        .map(|&x| (x.max(0.0) * inverse).round_ties_even().clamp(0.0, 255.0) as u8)
        .collect();
    (scale, q)
}

impl Packed {
    /// Packs, in `precision`, the matrix whose element (row `r`, column `c`) is `at(r, c)`.
    pub(crate) fn new(
        precision: Precision,
        k: usize,
        n: usize,
        at: impl Fn(usize, usize) -> f32,
    ) -> Self {
        let values = match precision {
            Precision::F32 => Values::F32(panels(k, n, at)),
            Precision::Bf16 => Values::Bf16(panels(bf16_steps(k), n, |s, c| {
                let at = |r| if r < k { at(r, c) } else { 0.0 };
                bf16_pair(at(2 * s), at(2 * s + 1))
            })),
            Precision::Int8 => {
                let scales: Vec<f32> = (0..n.div_ceil(PANEL) * PANEL)
                    .map(|c| match c < n {
                        true => weight_scale((0..k).fold(0.0f32, |m, r| m.max(at(r, c).abs()))),
                        false => 1.0,
                    })
                    .collect();
                let q = |r: usize, c: usize| match r < k {
                    true => (at(r, c) / scales[c])
                        .round_ties_even()
                        .clamp(-127.0, 127.0) as i8,
                    false => 0,
                };
                let quads = panels(int8_steps(k), n, |s, c| {
                    u32::from_le_bytes(std::array::from_fn(|i| q(4 * s + i, c) as u8))
                });
                Values::Int8 { quads, scales }
            }
        };
        Self { k, n, values }
    }

    /// Number of columns.
    pub(crate) fn cols(&self) -> usize {
        self.n
    }

    /// The precision the values are stored in.
    pub(crate) fn precision(&self) -> Precision {
        match self.values {
            Values::F32(_) => Precision::F32,
            Values::Bf16(_) => Precision::Bf16,
            Values::Int8 { .. } => Precision::Int8,
        }
    }

    /// An int8 matrix's quads, its columns' scales (a whole number of panels of them) and its
    /// steps (see [`Values::Int8`]).
    pub(crate) fn int8_parts(&self) -> (&[u32], &[f32], usize) {
        match &self.values {
            Values::Int8 { quads, scales } => (quads, scales, int8_steps(self.k)),
            _ => panic!("int8_parts of a matrix packed in {}", self.precision()),
        }
    }

    /// Number of panels.
    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }
}

/// The panels of a matrix of `steps` rows (steps of the product) and `n` columns whose element
/// (step `s`, column `c`) is `at(s, c)`.
fn panels<T: Copy + Default>(steps: usize, n: usize, at: impl Fn(usize, usize) -> T) -> Vec<T> {
    let mut data = vec![T::default(); n.div_ceil(PANEL) * steps * PANEL];
    for (p, panel) in data.chunks_exact_mut((steps * PANEL).max(1)).enumerate() {
        for (s, row) in panel.chunks_exact_mut(PANEL).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                let c = p * PANEL + j;
                if c < n {
                    *v = at(s, c);
                }
            }
        }
    }
    data
}

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits: the rounding of
/// `vcvtne2ps2bf16`.
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        // Quiet, whatever the payload's low bits.
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// Two values rounded to bf16 in one word, `even` in the low half: the order in which
/// `vdpbf16ps` multiplies pairs.
pub(crate) fn bf16_pair(even: f32, odd: f32) -> u32 {
    u32::from(bf16_bits(odd)) << 16 | u32::from(bf16_bits(even))
}

/// Per-thread room for a left-hand side in reduced precision: its words (bf16 pairs or uint8
/// quads) and its rows' scales.
#[derive(Default)]
struct Reduced {
    words: Vec<u32>,
    scales: Vec<f32>,
}

thread_local! {
    static REDUCED: RefCell<Reduced> = RefCell::new(Reduced::default());
}

/// Grows `v` to at least `len` values.
fn at_least<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// [`product`] of `act(lhs)`: the map applied to each row of the left-hand side as it is
/// gathered (into scratch, or straight into uint8 for an int8 product).
pub(crate) fn product_activated(
    kernels: Kernels,
    m: usize,
    (lhs, act): (Mat, &Affine),
    rhs: &Packed,
    dst: MatMut,
    epilogue: Option<Epilogue>,
) {
    assert_eq!(
        act.channels(),
        rhs.k,
        "product_activated: map and depth differ"
    );
    product_of(kernels, m, (lhs, Some(act)), rhs, dst, epilogue);
}

/// The int8 product: each row of `act(lhs)` quantised ([`Kernels::quantize_u8`]), then the
/// panels; `lhs` checked by [`product_of`].
fn product_int8(
    kernels: Kernels,
    m: usize,
    (lhs, act): (Mat, Option<&Affine>),
    (rhs, quads, scales): (&Packed, &[u32], &[f32]),
    dst: MatMut,
    epilogue: Option<Epilogue>,
) {
    let (k, steps) = (rhs.k, int8_steps(rhs.k));
    REDUCED.with(|reduced| {
        let reduced = &mut *reduced.borrow_mut();
        let rows = m.next_multiple_of(TILE_ROWS);
        at_least(&mut reduced.words, rows * steps);
        at_least(&mut reduced.scales, rows);
        let words = reduced.words[..rows * steps].chunks_exact_mut(steps);
        for ((r, row), scale) in words.take(m).enumerate().zip(&mut reduced.scales) {
            let src = &lhs.data[r * lhs.ld..][..k];
            *scale = kernels.quantize_u8(src, act, row);
        }
        // Rows past `m` are read by tiles, never stored: their values do not matter.
        let lhs = Mat {
            data: &reduced.words[..rows * steps],
            ld: steps,
        };
        let row_scales = &reduced.scales[..m];
        let scales = Some(Scales {
            rows: row_scales,
            cols: scales,
        });
        panel_by_panel(
            m,
            (lhs, steps),
            (rhs, quads),
            dst,
            (epilogue, scales),
            |job| kernels.product_panel_int8(job),
        );
    });
}

/// The whole product, panel after panel, then `epilogue`'s map (given for all of rhs's
/// columns); `dst`'s rows must hold rhs's columns. A bf16 right-hand side needs `kernels` made
/// for bf16 ([`Kernels::precision`]).
pub(crate) fn product(
    kernels: Kernels,
    m: usize,
    lhs: Mat,
    rhs: &Packed,
    dst: MatMut,
    epilogue: Option<Epilogue>,
) {
    product_of(kernels, m, (lhs, None), rhs, dst, epilogue);
}

/// [`product`] of `act(lhs)`, or of `lhs` without a map: the one place that checks the
/// left-hand side and picks the way of the right-hand side's precision. A map is applied as
/// the rows are quantised for int8, else into scratch before the float product.
fn product_of(
    kernels: Kernels,
    m: usize,
    (lhs, act): (Mat, Option<&Affine>),
    rhs: &Packed,
    dst: MatMut,
    epilogue: Option<Epilogue>,
) {
    let k = rhs.k;
    if m == 0 {
        return;
    }
    assert!(k <= lhs.ld, "product: lhs rows too short");
    assert!(
        lhs.data.len() >= (m - 1) * lhs.ld + k,
        "product: lhs too short"
    );
    match (&rhs.values, act) {
        (Values::Int8 { quads, scales }, act) => {
            product_int8(kernels, m, (lhs, act), (rhs, quads, scales), dst, epilogue)
        }
        (_, Some(act)) => {
            let ld = padded(k);
            with_scratch(m * ld, |gathered| {
                for (r, row) in gathered.chunks_exact_mut(ld).enumerate() {
                    act.apply(kernels, &lhs.data[r * lhs.ld..], row);
                }
                let gathered = Mat { data: gathered, ld };
                product_of(kernels, m, (gathered, None), rhs, dst, epilogue);
            })
        }
        (Values::F32(data), None) => {
            panel_by_panel(m, (lhs, k), (rhs, data), dst, (epilogue, None), |job| {
                kernels.product_panel(job)
            })
        }
        (Values::Bf16(data), None) => {
            let steps = bf16_steps(k);
            REDUCED.with(|reduced| {
                let words = &mut reduced.borrow_mut().words;
                let len = m.next_multiple_of(TILE_ROWS) * steps;
                at_least(words, len);
                for (r, row) in words.chunks_exact_mut(steps).take(m).enumerate() {
                    let (rounded, padding) = row.split_at_mut(k.div_ceil(2));
                    kernels.round_bf16(&lhs.data[r * lhs.ld..][..k], rounded);
                    padding.fill(0);
                }
                // Rows past `m` are read by tiles, never stored: their values do not matter.
                let lhs = Mat {
                    data: &words[..len],
                    ld: steps,
                };
                panel_by_panel(m, (lhs, steps), (rhs, data), dst, (epilogue, None), |job| {
                    kernels.product_panel_bf16(job)
                });
            });
        }
    }
}

/// Runs `run` on each panel of `rhs` (whose values are `data`), the left-hand side `lhs` having
/// `steps` values per row (one per step of the product); an int8 product gives the scales of
/// its rows and of all of rhs's columns.
fn panel_by_panel<T: Copy>(
    m: usize,
    (lhs, steps): (Mat<T>, usize),
    (rhs, data): (&Packed, &[T]),
    dst: MatMut,
    (epilogue, scales): (Option<Epilogue>, Option<Scales>),
    run: impl Fn(PanelJob<T>),
) {
    for p in 0..rhs.panels() {
        let panel = &data[p * steps * PANEL..][..steps * PANEL];
        let cols = PANEL.min(rhs.n - p * PANEL);
        let first = p * PANEL;
        assert!(first + cols <= dst.ld, "product: dst rows too short");
        assert!(
            dst.data.len() >= (m - 1) * dst.ld + first + cols,
            "product: dst too short"
        );
        let epilogue = epilogue.map(|e| Epilogue {
            scale: &e.scale[first..first + cols],
            shift: &e.shift[first..first + cols],
            relu: e.relu,
        });
        run(PanelJob {
            m,
            k: steps,
            lhs,
            panel,
            cols,
            dst: MatMut {
                data: &mut dst.data[first..],
                ld: dst.ld,
            },
            epilogue,
            scales: scales.map(|s| Scales {
                rows: s.rows,
                cols: &s.cols[first..first + PANEL],
            }),
        });
    }
}

/// One panel's product, its bounds checked by [`product`]: `dst[m × cols] = lhs[m × k] ·
/// panel[k × cols]`, then the epilogue (for the panel's columns). `k` counts steps: values of
/// `T`, each an f32 or a bf16 pair.
pub(crate) struct PanelJob<'a, T = f32> {
    m: usize,
    k: usize,
    lhs: Mat<'a, T>,
    panel: &'a [T],
    cols: usize,
    dst: MatMut<'a>,
    epilogue: Option<Epilogue<'a>>,
    /// For an int8 product: the scales of its `m` rows and of the panel's columns, by which
    /// the i32 results are multiplied before the epilogue.
    scales: Option<Scales<'a>>,
}

/// The scales of an int8 product's rows and of its columns.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scales<'a> {
    rows: &'a [f32],
    cols: &'a [f32],
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
    ) -> Block<T> {
        assert!(r < self.m && first < self.cols, "block outside the job");
        let live = width.min(self.cols - first);
        let epilogue = self
            .epilogue
            .map(|e| (e.scale[first..].as_ptr(), e.shift[first..].as_ptr(), e.relu));
        let scales = self
            .scales
            .map(|s| (s.rows[r..].as_ptr(), s.cols[first..].as_ptr()));
        Block {
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
pub(crate) struct Block<T = f32> {
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
    /// For int8: the scales from the block's first row and from its first column.
    scales: Option<(*const f32, *const f32)>,
}

/// Cuts a [`PanelJob`] into register blocks of up to the first listed rows × the first listed
/// vectors of `$simd`, and runs each by [`block`] monomorphised for its shape (one per listed
/// rows × vectors), so that the accumulators stay in registers. Expanded inside each instruction
/// set's entry point, with its target features: [`block`] is compiled inside a function that has
/// them, so that the vector operations are inlined before the accumulators are given registers.
macro_rules! product_panel {
    ($job:expr, $simd:ty, $features:literal, $rows:tt, $vectors:tt) => {
        #[target_feature(enable = $features)]
        unsafe fn kernel<T: Copy, const R: usize, const V: usize>(
            block: &$crate::fast::gemm::Block<T>,
        ) where
            $simd: $crate::fast::isa::Dot<T>,
        {
            $crate::fast::gemm::block::<$simd, T, R, V>(block)
        }
        $crate::fast::gemm::product_panel!(@blocks $job, $simd, $rows, $vectors);
    };
    ($job:expr, $simd:ty, $rows:tt, $vectors:tt) => {
        unsafe fn kernel<T: Copy, const R: usize, const V: usize>(
            block: &$crate::fast::gemm::Block<T>,
        ) where
            $simd: $crate::fast::isa::Dot<T>,
        {
            $crate::fast::gemm::block::<$simd, T, R, V>(block)
        }
        $crate::fast::gemm::product_panel!(@blocks $job, $simd, $rows, $vectors);
    };
    (@blocks $job:expr, $simd:ty, [$mr:literal $($rows:literal)*], $vectors:tt) => {
        let mut job = $job;
        let lanes = <$simd as $crate::fast::isa::Simd>::LANES;
        let width = $crate::fast::gemm::product_panel!(@first $vectors) * lanes;
        let (m, cols) = job.extent();
        // Rows outermost, so that a block's rows of the left-hand side are read again from L1.
        for r in (0..m).step_by($mr) {
            for first in (0..cols).step_by(width) {
                let block = job.block(r, first, $mr, width, lanes);
                match block.rows {
                    $mr => $crate::fast::gemm::product_panel!(@vectors block, $mr, $vectors),
                    $(
                        $rows => $crate::fast::gemm::product_panel!(@vectors block, $rows, $vectors),
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
            $( $v => kernel::<_, $r, $v>(&$block), )*
            _ => unreachable!("a register block of more vectors than the kernel has"),
        }
    };
}
pub(crate) use product_panel;

/// R rows × V vectors of columns, accumulated over all of `k` in registers, then the epilogue and
/// the stores of the block's live columns.
///
/// # Safety
/// `block` comes from [`PanelJob::block`], with R its rows and V its vectors.
#[inline(always)]
pub(crate) unsafe fn block<S: Dot<T>, T: Copy, const R: usize, const V: usize>(block: &Block<T>) {
    let (a, lda) = (block.a, block.lda);
    let mut acc = [[S::zero(); V]; R];
    for kk in 0..block.k {
        // The panel's rows are zero-padded to PANEL columns: whole vectors are always there.
        let bp = block.b.add(kk * PANEL);
        let bv: [S::Operand; V] = std::array::from_fn(|v| S::load_operand(bp.add(v * S::LANES)));
        for (r, row) in acc.iter_mut().enumerate() {
            let x = S::splat_operand(*a.add(r * lda + kk));
            for (v, s) in row.iter_mut().enumerate() {
                *s = s.dot(x, bv[v]);
            }
        }
    }
    finish(block, R, V, |r, v| acc[r][v]);
}

/// The block's `rows` × `vectors` results, `acc(row, vector)`, through the epilogue to their live
/// columns of `dst`.
///
/// # Safety
/// As [`block`]; `rows` and `vectors` at most the block's.
#[inline(always)]
pub(crate) unsafe fn finish<S: Simd, T>(
    block: &Block<T>,
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
        let epilogue = block.epilogue.map(|(s, t, relu)| {
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
                    x = x.max(S::zero());
                }
            }
            x.store_upto(c.add(r * ldc + first), live);
        }
    }
}

impl Block<u32> {
    /// The left-hand side's first row and its stride, the panel at the block's first column
    /// (rows [`PANEL`] apart) and the steps, for a kernel that reads them in tiles: the
    /// left-hand side holds [`TILE_ROWS`] rows from the block's first, and the steps are a
    /// multiple of [`TILE_STEPS`] (see [`product`]).
    pub(crate) fn operands(&self) -> (*const u32, usize, *const u32, usize) {
        (self.a, self.lda, self.b, self.k)
    }

    /// For an int8 block: the scales of its rows (from the first) and of its columns (from the
    /// first, a whole number of vectors of them readable).
    pub(crate) fn scales(&self) -> (*const f32, *const f32) {
        self.scales.expect("an int8 block has scales")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast::isa::Isa;

    fn reference(m: usize, k: usize, n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| a[r * k + i] * b[i * n + c]).sum();
            }
        }
        out
    }

    #[test]
    fn every_shape_and_epilogue_matches_the_definition() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (13, 7, 12),
            (25, 30, 33),
            (12, 128, 32),
            (40, 3, 100),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
                .collect();
            let scale: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 / 10.0).collect();
            let shift: Vec<f32> = (0..n).map(|i| i as f32 / 3.0 - 2.0).collect();
            let packed = Packed::new(Precision::F32, k, n, |r, c| b[r * n + c]);
            let want = reference(m, k, n, &a, &b);
            for kernels in Kernels::all() {
                let mut got = vec![f32::NAN; m * (n + 3)];
                let lhs = Mat { data: &a, ld: k };
                let dst = MatMut {
                    data: &mut got,
                    ld: n + 3,
                };
                product(kernels, m, lhs, &packed, dst, None);
                let epi = Epilogue {
                    scale: &scale,
                    shift: &shift,
                    relu: true,
                };
                let mut act = vec![f32::NAN; m * n];
                let dst = MatMut {
                    data: &mut act,
                    ld: n,
                };
                product(kernels, m, lhs, &packed, dst, Some(epi));
                for r in 0..m {
                    for c in 0..n {
                        let w = want[r * n + c];
                        assert!((got[r * (n + 3) + c] - w).abs() <= 1e-4 * (1.0 + w.abs()));
                        let wa = (w * scale[c] + shift[c]).max(0.0);
                        assert!((act[r * n + c] - wa).abs() <= 1e-4 * (1.0 + wa.abs()));
                    }
                    assert!(got[r * (n + 3) + n..][..3].iter().all(|v| v.is_nan()));
                }
            }
        }
    }

    /// Shapes (m, k, n) for the reduced-precision products: depths around the pairs (2), quads
    /// (4) and a tile's 64 bytes, rows around the register block (12) and the tiles (16, 32),
    /// columns around the panels (32) and vectors (16).
    const REDUCED_SHAPES: [(usize, usize, usize); 7] = [
        (1, 1, 1),
        (13, 7, 12),
        (25, 30, 33),
        (12, 129, 32),
        (17, 64, 16),
        (40, 3, 100),
        (70, 300, 64),
    ];

    /// The rows of `a` (`k` values each) in rows 5 values longer, filled with NaN: a left-hand
    /// side of which only the first `k` values of each row may be read. Returns it and its
    /// row stride.
    fn longer_rows(a: &[f32], k: usize) -> (Vec<f32>, usize) {
        let ld = k + 5;
        let rows = a.chunks_exact(k).flat_map(|row| {
            row.iter()
                .copied()
                .chain(std::iter::repeat_n(f32::NAN, ld - k))
        });
        (rows.collect(), ld)
    }

    /// Rounds through bf16 as the packing and the kernels do.
    fn through_bf16(x: f32) -> f32 {
        f32::from_bits(u32::from(bf16_bits(x)) << 16)
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even_and_the_kernel_agrees() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: ties go to the even 1.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(-2.0), 0xc000);
        assert!(through_bf16(f32::NAN).is_nan());
        assert_eq!(through_bf16(f32::INFINITY), f32::INFINITY);
        let Some(kernels) = Kernels::with_precision(Isa::Avx512, Precision::Bf16) else {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return;
        };
        for len in [0usize, 1, 2, 15, 16, 17, 31, 32, 33, 70] {
            let src: Vec<f32> = (0..len)
                .map(|i| (i as f32 * 0.37 - 3.0) * (1.0 + 1.0 / 256.0))
                .collect();
            let mut got = vec![u32::MAX; len.div_ceil(2)];
            kernels.round_bf16(&src, &mut got);
            let want: Vec<u32> = src
                .chunks(2)
                .map(|p| bf16_pair(p[0], p.get(1).copied().unwrap_or(0.0)))
                .collect();
            assert_eq!(got, want, "length {len}");
        }
    }

    #[test]
    fn bf16_products_equal_the_definition_on_rounded_inputs() {
        let all = Kernels::all_in(Precision::Bf16);
        if all.is_empty() {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
        }
        for &(m, k, n) in &REDUCED_SHAPES {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.1) / 5.3)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.2) / 4.7)
                .collect();
            let ra: Vec<f32> = a.iter().map(|&x| through_bf16(x)).collect();
            let rb: Vec<f32> = b.iter().map(|&x| through_bf16(x)).collect();
            let want = reference(m, k, n, &ra, &rb);
            let packed = Packed::new(Precision::Bf16, k, n, |r, c| b[r * n + c]);
            assert_eq!(packed.precision(), Precision::Bf16);
            let scale: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 / 10.0).collect();
            let shift: Vec<f32> = (0..n).map(|i| i as f32 / 3.0 - 2.0).collect();
            let epi = Epilogue {
                scale: &scale,
                shift: &shift,
                relu: true,
            };
            // The rows of the left-hand side are longer than k: only k values are read.
            let (wide, ld) = longer_rows(&a, k);
            for &kernels in &all {
                // Rows of dst longer than n: the columns past n are not written.
                let mut got = vec![f32::NAN; m * (n + 3)];
                let dst = MatMut {
                    data: &mut got,
                    ld: n + 3,
                };
                product(kernels, m, Mat { data: &wide, ld }, &packed, dst, Some(epi));
                for r in 0..m {
                    for c in 0..n {
                        let w = (want[r * n + c] * scale[c] + shift[c]).max(0.0);
                        let g = got[r * (n + 3) + c];
                        assert!(
                            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{kernels:?} {m}×{k}×{n} ({r}, {c}): {g} vs {w}"
                        );
                    }
                    assert!(got[r * (n + 3) + n..][..3].iter().all(|v| v.is_nan()));
                }
            }
        }
    }

    /// The weights as the int8 packing quantises them: per column, ±127 over its largest
    /// magnitude.
    fn quantized_weights(k: usize, n: usize, b: &[f32]) -> (Vec<i32>, Vec<f32>) {
        let scales: Vec<f32> = (0..n)
            .map(|c| weight_scale((0..k).fold(0.0f32, |m, r| m.max(b[r * n + c].abs()))))
            .collect();
        let q = (0..k * n)
            .map(|i| {
                (b[i] / scales[i % n])
                    .round_ties_even()
                    .clamp(-127.0, 127.0) as i32
            })
            .collect();
        (q, scales)
    }

    #[test]
    fn int8_rows_quantise_as_defined_and_products_are_exact_in_integers() {
        let all = Kernels::all_in(Precision::Int8);
        if all.is_empty() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
        }
        for &(m, k, n) in &REDUCED_SHAPES {
            // Non-negative inputs with a zero row (its scale is 1) and a row of one value.
            let a: Vec<f32> = (0..m * k)
                .map(|i| match i / k {
                    1 => 0.0,
                    2 => 1.5,
                    _ => ((i * 7 % 13) as f32 - 3.1).max(0.0) / 5.3,
                })
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.2) / 4.7)
                .collect();
            let (qb, col_scales) = quantized_weights(k, n, &b);
            let packed = Packed::new(Precision::Int8, k, n, |r, c| b[r * n + c]);
            assert_eq!(packed.precision(), Precision::Int8);
            // The plain integer product of the quantised rows and weights, in i64.
            let rows: Vec<(f32, Vec<u8>)> = a.chunks_exact(k).map(quantize_row).collect();
            let exact = |r: usize, c: usize| -> i64 {
                let q = &rows[r].1;
                (0..k)
                    .map(|i| i64::from(q[i]) * i64::from(qb[i * n + c]))
                    .sum()
            };
            let (wide, ld) = longer_rows(&a, k);
            for &kernels in &all {
                let mut quads = vec![u32::MAX; k.div_ceil(4) + 3];
                for (r, (scale, q)) in rows.iter().enumerate() {
                    let got = kernels.quantize_u8(&a[r * k..][..k], None, &mut quads);
                    assert_eq!(got, *scale, "{kernels:?} row {r} of {k}: scale");
                    let bytes: Vec<u8> = quads.iter().flat_map(|w| w.to_le_bytes()).collect();
                    assert_eq!(&bytes[..k], &q[..], "{kernels:?} row {r} of {k}");
                    assert!(bytes[k..].iter().all(|&b| b == 0), "{kernels:?}: padding");
                }
                let mut got = vec![f32::NAN; m * (n + 3)];
                let dst = MatMut {
                    data: &mut got,
                    ld: n + 3,
                };
                product(kernels, m, Mat { data: &wide, ld }, &packed, dst, None);
                for r in 0..m {
                    for c in 0..n {
                        // The kernels' own order of roundings: i32 to f32, times the product
                        // of the two scales.
                        let want = exact(r, c) as f32 * (rows[r].0 * col_scales[c]);
                        let g = got[r * (n + 3) + c];
                        assert_eq!(g, want, "{kernels:?} {m}×{k}×{n} ({r}, {c})");
                    }
                    assert!(got[r * (n + 3) + n..][..3].iter().all(|v| v.is_nan()));
                }
            }
        }
    }

    #[test]
    fn int8_products_of_activated_rows_approach_the_f32_product() {
        let all = Kernels::all_in(Precision::Int8);
        let (m, k, n) = (37, 150, 40);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 17) as f32 - 8.3) / 9.1)
            .collect();
        let act = Affine::new(
            (0..k).map(|i| 0.5 + (i % 7) as f32 / 10.0).collect(),
            (0..k).map(|i| (i % 5) as f32 / 10.0 - 0.2).collect(),
            true,
        );
        let a: Vec<f32> = x
            .chunks_exact(k)
            .flat_map(|row| {
                let mut out = vec![0.0; k];
                act.each(row, &mut out, |d, v| *d = v);
                out
            })
            .collect();
        let want = reference(m, k, n, &a, &b);
        let packed = Packed::new(Precision::Int8, k, n, |r, c| b[r * n + c]);
        let scale: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 / 10.0).collect();
        let shift: Vec<f32> = (0..n).map(|i| i as f32 / 3.0 - 2.0).collect();
        let epi = Epilogue {
            scale: &scale,
            shift: &shift,
            relu: true,
        };
        let largest = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for &kernels in &all {
            let mut got = vec![f32::NAN; m * n];
            let dst = MatMut {
                data: &mut got,
                ld: n,
            };
            let lhs = (Mat { data: &x, ld: k }, &act);
            product_activated(kernels, m, lhs, &packed, dst, Some(epi));
            for r in 0..m {
                for c in 0..n {
                    let w = (want[r * n + c] * scale[c] + shift[c]).max(0.0);
                    let g = got[r * n + c];
                    // Each factor within half a step of its 255 or 127 steps.
                    assert!(
                        (g - w).abs() <= 0.02 * largest * scale[c],
                        "{kernels:?} ({r}, {c}): {g} vs {w}"
                    );
                }
            }
        }
    }
}
