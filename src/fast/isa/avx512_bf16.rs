//! AVX-512 BF16: products over bf16 pairs with `vdpbf16ps` (32 multiplications per instruction,
//! twice AVX-512F's `vfmadd`), accumulated in f32; the rounding of f32 to bf16 pairs with
//! `vcvtne2ps2bf16`. Everything else runs the AVX-512F kernels.

use std::arch::x86_64::*;

use super::avx512::{lanes, mask};
use crate::fast::mat::Affine;
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

/// `src`, through `map` where given (`x·scale + shift`, then the ReLU if it has one: as
/// `Affine::each` computes it, a product then a sum), rounded to the nearest bf16 (ties to
/// even) in pairs: 32 values per instruction, the tail read and written under masks (so an
/// odd count is padded with a zero). One pass: the mapped row is never stored in f32.
///
/// # Safety
/// The CPU runs AVX-512 BF16; `dst.len() == src.len().div_ceil(2)`; `map` has `src.len()`
/// channels.
#[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
pub(super) unsafe fn round(src: &[f32], map: Option<&Affine>, dst: &mut [u32]) {
    // SAFETY: the caller's contract: AVX-512 BF16, `dst.len() == src.len().div_ceil(2)` and a map of `src.len()` channels; masked-off lanes are neither read nor written.
    unsafe {
        let (k, p, q) = (src.len(), src.as_ptr(), dst.as_mut_ptr());
        let value = |i: usize| {
            let x = lanes(p, k, i);
            let Some((scale, shift, relu)) = map.map(Affine::parts) else {
                return x;
            };
            let y = _mm512_add_ps(
                _mm512_mul_ps(x, lanes(scale.as_ptr(), k, i)),
                lanes(shift.as_ptr(), k, i),
            );
            // `max` gives its second operand, 0, for a NaN, as `f32::max` does.
            match relu {
                true => _mm512_max_ps(y, _mm512_setzero_ps()),
                false => y,
            }
        };
        for first in (0..k).step_by(32) {
            let live = k - first;
            let (lo, hi) = (value(first), value(first + 16));
            let pairs = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            match live >= 32 {
                true => _mm512_storeu_si512(q.add(first / 2).cast(), pairs),
                false => {
                    _mm512_mask_storeu_epi32(q.add(first / 2).cast(), mask(live.div_ceil(2)), pairs)
                }
            }
        }
    }
}
