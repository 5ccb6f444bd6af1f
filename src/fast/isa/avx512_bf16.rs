//! AVX-512 BF16: products over bf16 pairs with `vdpbf16ps` (32 multiplications per instruction,
//! twice AVX-512F's `vfmadd`), accumulated in f32; the rounding of f32 to bf16 pairs with
//! `vcvtne2ps2bf16`. Everything else runs the AVX-512F kernels.

use std::arch::x86_64::*;

use super::avx512::mask;
use crate::fast::ukernel::gemm::{self, PanelJob};
use crate::fast::ukernel::Dot;

/// Lanes 2i and 2i + 1 of an `__m512bh` are the pair of lane i of the f32 accumulator.
impl Dot<u32> for __m512 {
    type Operand = __m512bh;

    #[inline(always)]
    unsafe fn load_operand(p: *const u32) -> __m512bh {
        // SAFETY: the caller vouches for the CPU (AVX-512 BF16) and for 16 readable words.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast())) }
    }
    #[inline(always)]
    unsafe fn splat_operand(x: u32) -> __m512bh {
        // SAFETY: the caller vouches for the CPU (AVX-512 BF16).
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(x as i32)) }
    }
    #[inline(always)]
    fn dot(self, a: __m512bh, b: __m512bh) -> Self {
        // SAFETY: the operands exist, so the CPU runs AVX-512 BF16.
        unsafe { _mm512_dpbf16_ps(self, a, b) }
    }
}

/// The panel product over bf16 pairs, in blocks of 12 rows × 2 vectors as for f32.
#[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
pub(super) unsafe fn product_panel(job: PanelJob<u32>) {
    gemm::product_panel!(
        job,
        __m512,
        "avx512f,avx512bf16,avx2,fma",
        [12 11 10 9 8 7 6 5 4 3 2 1],
        [2 1]
    );
}

/// `src` rounded to the nearest bf16 (ties to even) in pairs: 32 values per instruction, the
/// tail read and written under masks (so an odd count is padded with a zero).
///
/// # Safety
/// The CPU runs AVX-512 BF16; `dst.len() == src.len().div_ceil(2)`.
#[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
pub(super) unsafe fn round(src: &[f32], dst: &mut [u32]) {
    // SAFETY: the caller's contract: AVX-512 BF16 and `dst.len() == src.len().div_ceil(2)`; masked-off lanes are neither read nor written.
    unsafe {
        let (p, q) = (src.as_ptr(), dst.as_mut_ptr());
        for first in (0..src.len()).step_by(32) {
            let live = src.len() - first;
            // Masked-off lanes are neither read nor written: the pointers may pass the ends.
            let lo = _mm512_maskz_loadu_ps(mask(live), p.wrapping_add(first));
            let hi =
                _mm512_maskz_loadu_ps(mask(live.saturating_sub(16)), p.wrapping_add(first + 16));
            let pairs = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi32(q.add(first / 2).cast(), mask(live.div_ceil(2)), pairs);
        }
    }
}
