//! AVX-512 VNNI: int8 products with `vpdpbusd` (64 multiply-adds of uint8 by int8 per
//! instruction, four per 32-bit lane, summed exactly into i32), and the quantisation of a row to
//! uint8. Everything else runs the AVX-512F kernels.

use std::arch::x86_64::*;

use crate::fast::gemm::{self, Block, PanelJob, PANEL};
use crate::fast::kernels::Affine;

/// Mask of the first `live` of 16 lanes.
#[inline(always)]
fn mask(live: usize) -> __mmask16 {
    if live >= 16 {
        !0
    } else {
        (1 << live) - 1
    }
}

/// R rows × V vectors of i32 accumulators over all steps, then scaled to f32 (row scale ×
/// column scale) and through the epilogue.
///
/// # Safety
/// The CPU runs AVX-512 VNNI; `block` comes from an int8 [`PanelJob`], with R its rows and V
/// its vectors.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
unsafe fn block<const R: usize, const V: usize>(block: &Block<u32>) {
    let (a, lda, b, steps) = block.operands();
    let mut acc = [[_mm512_setzero_si512(); V]; R];
    for s in 0..steps {
        // The panel's rows are zero-padded to PANEL columns: whole vectors are always there.
        let bp = b.add(s * PANEL);
        let bv: [__m512i; V] = std::array::from_fn(|v| _mm512_loadu_si512(bp.add(v * 16).cast()));
        for (r, row) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_epi32(*a.add(r * lda + s) as i32);
            for (v, sum) in row.iter_mut().enumerate() {
                *sum = _mm512_dpbusd_epi32(*sum, x, bv[v]);
            }
        }
    }
    let (rows, cols) = block.scales();
    gemm::finish(block, R, V, |r, v| {
        let x = _mm512_cvtepi32_ps(acc[r][v]);
        let scale = _mm512_mul_ps(
            _mm512_set1_ps(*rows.add(r)),
            _mm512_loadu_ps(cols.add(v * 16)),
        );
        _mm512_mul_ps(x, scale)
    });
}

/// Runs `block` for a block's shape: R rows (from the list) × 1 or 2 vectors.
macro_rules! by_shape {
    ($block:expr, [$($r:literal)*]) => {
        match ($block.rows, $block.vectors) {
            $(
                ($r, 2) => block::<$r, 2>(&$block),
                ($r, 1) => block::<$r, 1>(&$block),
            )*
            _ => unreachable!("a register block of a shape the kernel lacks"),
        }
    };
}

/// The int8 panel product in blocks of 12 rows × 2 vectors: 24 accumulators, 2 panel vectors
/// and a broadcast in 32 zmm registers.
///
/// # Safety
/// The CPU runs AVX-512 VNNI; the job is an int8 one (its scales given).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
pub(super) unsafe fn product_panel(job: PanelJob<u32>) {
    let mut job = job;
    let (m, _) = job.extent();
    for r in (0..m).step_by(12) {
        let block = job.block(r, 0, 12, PANEL, 16);
        by_shape!(block, [12 11 10 9 8 7 6 5 4 3 2 1]);
    }
}

/// `act(src)` (or `src`) quantised as [`gemm::quantize_row`] defines, four values to a word of
/// `dst` (the first in the low byte), the words past them zero. Returns the row's scale.
///
/// # Safety
/// The CPU runs AVX-512 VNNI; `dst` holds `src.len().div_ceil(4)` words, `tmp` (with `act`)
/// `src.len()` values, and `act` maps `src.len()` channels.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
pub(super) unsafe fn quantize(
    src: &[f32],
    act: Option<&Affine>,
    tmp: &mut [f32],
    dst: &mut [u32],
) -> f32 {
    let k = src.len();
    let x = match act {
        Some(map) => {
            map.each(src, &mut tmp[..k], |d, v| *d = v);
            &tmp[..k]
        }
        None => src,
    };
    let p = x.as_ptr();
    // `max(v, m)` keeps m where v is NaN, as `f32::max` in the definition.
    let mut max = _mm512_setzero_ps();
    for i in (0..k).step_by(16) {
        max = _mm512_max_ps(_mm512_maskz_loadu_ps(mask(k - i), p.add(i)), max);
    }
    let (scale, inverse) = gemm::row_scale(_mm512_reduce_max_ps(max));
    let inverse = _mm512_set1_ps(inverse);
    let bytes = dst.as_mut_ptr().cast::<i8>();
    for i in (0..k).step_by(16) {
        let v = _mm512_max_ps(
            _mm512_maskz_loadu_ps(mask(k - i), p.add(i)),
            _mm512_setzero_ps(),
        );
        // Rounds to nearest, ties to even (the default rounding mode); saturates at 255.
        let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, inverse));
        _mm512_mask_cvtusepi32_storeu_epi8(bytes.add(i), mask(k - i), q);
    }
    // The last word's bytes past `k`, and the words after it.
    let tail = k.div_ceil(4) * 4;
    for i in k..tail {
        *bytes.add(i) = 0;
    }
    dst[k.div_ceil(4)..].fill(0);
    scale
}
