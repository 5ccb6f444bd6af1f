//! int8 products on AVX2 without VNNI: `vpmaddubsw` multiplies 32 uint8 × int8 pairs and sums
//! neighbours into i16 (saturating); two steps' sums are added in i16, and `vpmaddwd` by ones
//! sums those into i32: the eight products of two quads in each 32-bit lane, as two
//! `vpdpbusd` give them. The weights keep ±63 levels
//! ([`PAIRED_INT8_LEVELS`](crate::fast::ukernel::reduced::PAIRED_INT8_LEVELS)) and the inputs
//! 127 ([`PAIRED_INPUT_LEVELS`](crate::fast::ukernel::reduced::PAIRED_INPUT_LEVELS)), so that
//! no 16-bit sum reaches the i16 limit: every sum is exact, with three multiplying instructions
//! per two steps where one `vpmaddwd` per step would take four. The rows are quantised to
//! uint8 as on AVX-512, eight lanes at a time (also for AVX-VNNI's products, to their 255
//! levels).
//!
//! Only the 1×1 products: the 3×3 convolutions run by Winograd's method in f32 beside them
//! (see `Kernels::int8_taps`).

use std::arch::x86_64::*;

use super::avx2::mask;
use crate::fast::mat::Affine;
use crate::fast::ukernel::gemm::{self, PanelJob, RegisterBlock, PANEL, TILE_STEPS};

/// Rows of a register block: 4 rows × 2 vectors of i32 sums, 2 panel vectors, a broadcast, the
/// ones and a product in 16 ymm registers.
const BLOCK_ROWS: usize = 4;

/// Columns of a register block: two vectors of 8.
const BLOCK_COLS: usize = 16;

// The kernel takes the steps two at a time (`Kernels::int8_steps_run` gives it an even count);
// the packing pads them to a multiple of TILE_STEPS, so the pair past an odd count is zeros.
const _: () = assert!(TILE_STEPS.is_multiple_of(2));

/// `acc` plus the eight products of each lane's quads of `a0`, `a1` (uint8, within
/// [`PAIRED_INPUT_LEVELS`]) by those of `b0`, `b1` (int8, within ±63): the two steps' pair sums
/// added in 16 bits (each lane at most 4 · 127 · 63 = 32004: exact), then widened once.
///
/// # Safety
/// The CPU runs AVX2.
#[inline(always)]
unsafe fn dot2(
    acc: __m256i,
    (a0, a1): (__m256i, __m256i),
    (b0, b1): (__m256i, __m256i),
    ones: __m256i,
) -> __m256i {
    // SAFETY: the caller's contract: AVX2.
    unsafe {
        let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(a0, b0), _mm256_maddubs_epi16(a1, b1));
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones))
    }
}

/// Exact i32 sums back to f32: times their columns' scales (8 from `cols`).
///
/// # Safety
/// The CPU runs AVX2; `cols..cols + 8` is readable.
#[inline(always)]
pub(super) unsafe fn rescale(sums: __m256i, cols: *const f32) -> __m256 {
    // SAFETY: the caller's contract: AVX2, and 8 readable column scales.
    unsafe { _mm256_mul_ps(_mm256_cvtepi32_ps(sums), _mm256_loadu_ps(cols)) }
}

/// R rows × V vectors of i32 sums over all steps, then scaled to f32 by their columns' scales
/// and through the epilogue.
///
/// # Safety
/// The CPU runs AVX2; `block` comes from an int8 [`PanelJob`] packed with ±63 levels, with R
/// its rows and V its vectors.
#[target_feature(enable = "avx2,fma")]
unsafe fn block<const R: usize, const V: usize>(block: &RegisterBlock<u32>) {
    // SAFETY: the caller's contract: AVX2, and a block of an int8 job, whose R rows of steps lie inside the left-hand side, whose panel's rows are zero-padded to PANEL columns, and whose scales cover its rows and a whole panel of columns.
    unsafe {
        let (a, lda, b, steps) = block.operands();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); V]; R];
        // Steps two at a time (an even number of them, checked above).
        for s in (0..steps).step_by(2) {
            let bp = b.add(s * PANEL);
            let bv: [(__m256i, __m256i); V] = std::array::from_fn(|v| {
                let first = bp.add(v * 8);
                (
                    _mm256_loadu_si256(first.cast()),
                    _mm256_loadu_si256(first.add(PANEL).cast()),
                )
            });
            for (r, row) in acc.iter_mut().enumerate() {
                let a = a.add(r * lda + s);
                let x = (
                    _mm256_set1_epi32(*a as i32),
                    _mm256_set1_epi32(*a.add(1) as i32),
                );
                for (v, sum) in row.iter_mut().enumerate() {
                    *sum = dot2(*sum, x, bv[v], ones);
                }
            }
        }
        // Scaled into a new array, which the epilogue reads (see `avx512_vnni::block`).
        let cols = block.col_scales();
        let scaled: [[__m256; V]; R] =
            std::array::from_fn(|r| std::array::from_fn(|v| rescale(acc[r][v], cols.add(v * 8))));
        gemm::finish(block, R, V, |r, v| scaled[r][v]);
    }
}

/// The int8 panel product in blocks of [`BLOCK_ROWS`] rows × [`BLOCK_COLS`] columns, rows
/// outermost so that a block's rows are read again from L1 for the panel's other half.
///
/// # Safety
/// The CPU runs AVX2; the job is an int8 one (its scales given) packed with ±63 levels.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn product_panel(job: PanelJob<u32>) {
    let mut job = job;
    let (m, cols) = job.extent();
    for r in (0..m).step_by(BLOCK_ROWS) {
        for first in (0..cols).step_by(BLOCK_COLS) {
            let block = job.block(r, first, BLOCK_ROWS, BLOCK_COLS, 8);
            // SAFETY: the caller's contract: AVX2 and an int8 job; the block comes from it, with these rows and vectors.
            unsafe {
                match (block.rows, block.vectors) {
                    (4, 2) => self::block::<4, 2>(&block),
                    (4, 1) => self::block::<4, 1>(&block),
                    (3, 2) => self::block::<3, 2>(&block),
                    (3, 1) => self::block::<3, 1>(&block),
                    (2, 2) => self::block::<2, 2>(&block),
                    (2, 1) => self::block::<2, 1>(&block),
                    (1, 2) => self::block::<1, 2>(&block),
                    (1, 1) => self::block::<1, 1>(&block),
                    _ => unreachable!("a register block of a shape the kernel lacks"),
                }
            }
        }
    }
}

/// `levels(src)` as uint8 levels up to `inputs`, as `ukernel::reduced::level` defines them,
/// four to a word of `dst` (the first in the low byte), the words past them zero: one pass, the
/// map giving each channel's level directly (its static step folded in).
///
/// # Safety
/// The CPU runs AVX2; `dst` holds `src.len().div_ceil(4)` words and `levels` maps `src.len()`
/// channels.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize(src: &[f32], levels: &Affine, inputs: u8, dst: &mut [u32]) {
    // SAFETY: the caller's contract: AVX2; `dst` holds `src.len().div_ceil(4)` words and `levels` maps `src.len()` channels, so every access below stays inside them (masked lanes past the ends are not touched).
    unsafe {
        let (k, p) = (src.len(), src.as_ptr());
        // Every byte of the words: the padding past the row is written as zeros.
        let bytes = std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), 4 * dst.len());
        let (scale, shift, _) = levels.parts();
        let (s, t) = (scale.as_ptr(), shift.as_ptr());
        quantize_bytes(bytes, k, inputs, |i| {
            _mm256_fmadd_ps(lanes(p, k, i), lanes(s, k, i), lanes(t, k, i))
        });
    }
}

/// Lanes `i..i + 8` of the `k` values from `p`, zero past the `k`th (`i` may be past it:
/// masked-off lanes are not read).
#[inline(always)]
unsafe fn lanes(p: *const f32, k: usize, i: usize) -> __m256 {
    // SAFETY: the caller's `p` holds `k` values; a whole vector is read only inside them, and
    // otherwise lanes at or past the `k`th are masked off and not read.
    unsafe {
        if i + 8 <= k {
            // `vmaskmovps` costs several times a plain load on AMD's cores: only for the tail.
            _mm256_loadu_ps(p.add(i))
        } else {
            _mm256_maskload_ps(p.wrapping_add(i), mask(k.saturating_sub(i)))
        }
    }
}

/// The bytes of `dst` from the values `at(i)` (lanes i..i + 8) for the first `live`, zero after
/// them: `max(·, 0)` clamped at `inputs` and rounded to the nearest integer (ties to even, the
/// default rounding mode), NaN to 0.
#[inline(always)]
unsafe fn quantize_bytes(dst: &mut [u8], live: usize, inputs: u8, at: impl Fn(usize) -> __m256) {
    // SAFETY: the CPU runs AVX2 (the caller's contract); the stores are cut to `dst`'s length.
    unsafe {
        let live = live.min(dst.len());
        let top = _mm256_set1_ps(f32::from(inputs));
        // Capped at the top before the conversion, which gives i32::MIN for a value past i32's
        // range; `min` gives its second operand for a NaN, which converts to i32::MIN too. The
        // packs below saturate the negative ones (i32::MIN included) to 0: no `max` is needed.
        let level = |i: usize| _mm256_cvtps_epi32(_mm256_min_ps(top, at(i)));
        let out = dst.as_mut_ptr();
        let mut i = 0;
        // 32 values a store: the packs interleave the vectors' 128-bit halves, the permutation
        // puts them back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        while i + 32 <= live {
            let low = _mm256_packus_epi32(level(i), level(i + 8));
            let high = _mm256_packus_epi32(level(i + 16), level(i + 24));
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(low, high), order);
            _mm256_storeu_si256(out.add(i).cast(), bytes);
            i += 32;
        }
        while i < live {
            // Each 128-bit half packs its four values into its low four bytes.
            let q = level(i);
            let bytes = _mm256_packus_epi16(_mm256_packus_epi32(q, q), _mm256_setzero_si256());
            let low = _mm_cvtsi128_si32(_mm256_castsi256_si128(bytes)) as u32;
            let high = _mm_cvtsi128_si32(_mm256_extracti128_si256(bytes, 1)) as u32;
            let eight = u64::from(high) << 32 | u64::from(low);
            // Lanes past `live` are zero: writing them is writing the padding.
            if i + 8 <= dst.len() {
                out.add(i).cast::<u64>().write_unaligned(eight);
            } else {
                let n = dst.len() - i;
                dst[i..].copy_from_slice(&eight.to_le_bytes()[..n]);
            }
            i += 8;
        }
        let written = i.min(dst.len());
        dst[written..].fill(0);
    }
}
