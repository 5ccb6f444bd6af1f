//! AVX-512 VNNI: int8 products with `vpdpbusd` (64 multiply-adds of uint8 by int8 per
//! instruction, four per 32-bit lane, summed exactly into i32), and the quantisation of a row to
//! uint8. Everything else runs the AVX-512F kernels.

use std::arch::x86_64::*;

use super::avx512::{lanes, mask};
use crate::fast::mat::Affine;
use crate::fast::ukernel::direct::{TapJob, ROWS};
use crate::fast::ukernel::gemm::{self, PanelJob, PANEL};
use crate::fast::ukernel::reduced::INPUT_LEVELS;
use crate::fast::ukernel::QuadDot;

/// Exact i32 sums back to f32: times their columns' scales (16 from `cols`).
///
/// # Safety
/// The CPU runs AVX-512F; `cols..cols + 16` is readable.
#[inline(always)]
pub(super) unsafe fn rescale(sums: __m512i, cols: *const f32) -> __m512 {
    // SAFETY: the caller's contract: AVX-512F, and 16 readable column scales.
    unsafe { _mm512_mul_ps(_mm512_cvtepi32_ps(sums), _mm512_loadu_ps(cols)) }
}

/// Four uint8 × int8 products per lane with `vpdpbusd`, 16 lanes.
impl QuadDot<u32> for __m512i {
    type Out = __m512;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller vouches for the CPU (AVX-512F).
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    unsafe fn load(p: *const u32) -> Self {
        // SAFETY: the caller vouches for the CPU (AVX-512F) and for 16 readable words.
        unsafe { _mm512_loadu_si512(p.cast()) }
    }
    #[inline(always)]
    unsafe fn splat(x: u32) -> Self {
        // SAFETY: the caller vouches for the CPU (AVX-512F).
        unsafe { _mm512_set1_epi32(x as i32) }
    }
    #[inline(always)]
    unsafe fn dot(self, a: Self, b: Self) -> Self {
        // SAFETY: the caller vouches for the CPU (AVX-512 VNNI).
        unsafe { _mm512_dpbusd_epi32(self, a, b) }
    }
    #[inline(always)]
    unsafe fn scaled(self, cols: *const f32) -> __m512 {
        // SAFETY: the caller's contract: 16 readable column scales.
        unsafe { rescale(self, cols) }
    }
}

/// The int8 panel product in blocks of 12 rows × 2 vectors: 24 accumulators, 2 panel vectors
/// and a broadcast in 32 zmm registers.
///
/// # Safety
/// The CPU runs AVX-512 VNNI; the job is an int8 one (its scales given).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
pub(super) unsafe fn product_panel(job: PanelJob<u32>) {
    gemm::product_panel!(
        job,
        __m512i,
        "avx512f,avx512bw,avx512vnni,avx2,fma",
        quads [12 11 10 9 8 7 6 5 4 3 2 1],
        [2 1]
    );
}

/// `levels(src)` as uint8 levels, as `ukernel::reduced::level` defines them, four to a word of
/// `dst` (the first in the low byte), the words past them zero: one pass, the map giving each
/// channel's level directly (its static step folded in).
///
/// # Safety
/// The CPU runs AVX-512 VNNI; `dst` holds `src.len().div_ceil(4)` words and `levels` maps
/// `src.len()` channels.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
pub(super) unsafe fn quantize(src: &[f32], levels: &Affine, dst: &mut [u32]) {
    // SAFETY: the caller's contract: AVX-512 VNNI; `dst` holds `src.len().div_ceil(4)` words and `levels` maps `src.len()` channels, so every access below stays inside them (masked lanes past the ends are not touched).
    unsafe {
        let (k, p) = (src.len(), src.as_ptr());
        // Every byte of the words: the padding past the row is written as zeros by the same stores.
        let bytes = std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), 4 * dst.len());
        let (scale, shift, _) = levels.parts();
        let (s, t) = (scale.as_ptr(), shift.as_ptr());
        // Past the row's end x, s and t are 0: level 0.
        quantize_bytes(bytes, |i| {
            _mm512_fmadd_ps(lanes(p, k, i), lanes(s, k, i), lanes(t, k, i))
        });
    }
}

/// Every byte of `dst` from the values `at(i)` (lanes i..i + 16): `max(·, 0)` clamped at
/// [`INPUT_LEVELS`] and rounded to the nearest integer (ties to even, the default rounding
/// mode), NaN to 0.
#[inline(always)]
unsafe fn quantize_bytes(dst: &mut [u8], at: impl Fn(usize) -> __m512) {
    // SAFETY: the CPU runs AVX-512F (the caller's contract); the stores are masked to `dst`'s length.
    unsafe {
        let (len, out) = (dst.len(), dst.as_mut_ptr().cast::<i8>());
        let top = _mm512_set1_ps(f32::from(INPUT_LEVELS));
        // Capped at the top before the conversion, which gives i32::MIN for a value past i32's
        // range; `min` gives its second operand for a NaN, which converts to i32::MIN too. The
        // packs below saturate the negative ones (i32::MIN included) to 0: no `max` is needed.
        let level = |i: usize| _mm512_cvtps_epi32(_mm512_min_ps(top, at(i)));
        let mut i = 0;
        // 64 values a store: the packs interleave the four vectors' 128-bit lanes, the
        // permutation puts their words back in order.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        while i + 64 <= len {
            let low = _mm512_packus_epi32(level(i), level(i + 16));
            let high = _mm512_packus_epi32(level(i + 32), level(i + 48));
            let bytes = _mm512_permutexvar_epi32(order, _mm512_packus_epi16(low, high));
            _mm512_storeu_si512(out.add(i).cast(), bytes);
            i += 64;
        }
        // The tail's conversion saturates as unsigned: negative levels are made 0 first.
        while i < len {
            let q = _mm512_max_epi32(level(i), _mm512_setzero_si512());
            _mm512_mask_cvtusepi32_storeu_epi8(out.add(i), mask(len - i), q);
            i += 16;
        }
    }
}

/// Values already in levels as uint8 (see `ukernel::reduced::level`), into `dst` (as long as
/// `x`).
///
/// # Safety
/// The CPU runs AVX-512F; `dst.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
pub(super) unsafe fn to_levels(x: &[f32], dst: &mut [u8]) {
    // SAFETY: the caller's contract: AVX-512F and `dst.len() == x.len()`.
    unsafe {
        let (k, p) = (x.len(), x.as_ptr());
        quantize_bytes(dst, |i| lanes(p, k, i));
    }
}

/// Rows `r0..r0 + R` × V vectors of a 3×3 convolution's block at position `j`, panel `p`,
/// over every tap's steps, into `acc_out`.
///
/// # Safety
/// The CPU runs AVX-512 VNNI; `j` is one of the job's blocks and `r0 + R ≤ ROWS`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
unsafe fn conv_block<const R: usize, const V: usize>(
    job: &TapJob,
    (j, r0, p): (usize, usize, usize),
    (depth, offsets): (usize, &[isize]),
    acc_out: &mut [[__m512i; 2]; ROWS],
) {
    // SAFETY: the caller's contract: AVX-512 VNNI, `j` one of the job's blocks and `r0 + R ≤ ROWS`: `TapJob::input` checked that the block's rows at every tap's offset lie inside the bordered input, and the panel holds 16 steps per offset.
    unsafe {
        let (a, b) = (job.input(j).add(r0 * depth), job.panel(p));
        let mut acc = [[_mm512_setzero_si512(); V]; R];
        for (q, &offset) in offsets.iter().enumerate() {
            let a = a.offset(offset);
            for s in 0..16 {
                let bp = b.add((q * 16 + s) * PANEL);
                let bv: [__m512i; V] =
                    std::array::from_fn(|v| _mm512_loadu_si512(bp.add(v * 16).cast()));
                for (r, row) in acc.iter_mut().enumerate() {
                    let x =
                        _mm512_set1_epi32(a.add(r * depth + 4 * s).cast::<i32>().read_unaligned());
                    for (v, sum) in row.iter_mut().enumerate() {
                        *sum = _mm512_dpbusd_epi32(*sum, x, bv[v]);
                    }
                }
            }
        }
        for r in 0..R {
            for v in 0..V {
                acc_out[r0 + r][v] = acc[r][v];
            }
        }
    }
}

/// `conv_block` for a run of `rows` rows, one of the listed counts.
macro_rules! by_rows {
    ($rows:expr, $job:expr, $block:expr, $operands:expr, $acc:expr, [$($r:literal)*]) => {
        match $rows {
            $($r => conv_block::<$r, 2>($job, $block, $operands, $acc),)*
            _ => unreachable!("runs of at most 12 rows"),
        }
    };
}

/// A 3×3 convolution's job (see [`TapJob`]) in register blocks of up to 12 rows × 2 vectors,
/// over the runs of each block's rows that are outputs: the positions on the padding (two in
/// each bordered row, two rows between images: a third of the positions at 8×8) are skipped.
///
/// # Safety
/// The CPU runs AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
pub(super) unsafe fn direct(job: TapJob) {
    // SAFETY: the caller's contract: AVX-512 VNNI; each block and panel comes from the job, and
    // each run lies in its block's rows.
    unsafe {
        let mut job = job;
        let (depth, offsets) = job.offsets();
        let operands = (depth, offsets.as_slice());
        let mut acc = [[_mm512_setzero_si512(); 2]; ROWS];
        for j in job.blocks() {
            let rows = job.rows(j);
            for p in 0..job.panels() {
                for (start, end) in rows.output_runs() {
                    for r0 in (start..end).step_by(12) {
                        let block = (j, r0, p);
                        by_rows!(
                            (end - r0).min(12),
                            &job,
                            block,
                            operands,
                            &mut acc,
                            [12 11 10 9 8 7 6 5 4 3 2 1]
                        );
                    }
                }
                let cols = job.col_scales(p);
                job.store(&rows, p, 2, |r, v| rescale(acc[r][v], cols.add(v * 16)));
            }
        }
    }
}
