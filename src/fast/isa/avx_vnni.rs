//! AVX-VNNI: int8 products with the VEX-encoded `vpdpbusd` on 256-bit registers (32
//! multiply-adds of uint8 by int8 per instruction, four per 32-bit lane, summed exactly into
//! i32), on CPUs without AVX-512 (Intel client CPUs since Alder Lake, AMD Zen 5) and on Xeons
//! since Sapphire Rapids when the kernels are capped at AVX2. Unlike AVX2's pair sums the sums
//! never pass through 16 bits, so the weights keep ±127 levels and the inputs 255, as with
//! AVX-512 VNNI. The rows are quantised to uint8 by the AVX2 kernel; the 3×3 convolutions run
//! by Winograd's method in f32, as with AVX2's int8 (see `Kernels::int8_taps`).

use std::arch::x86_64::*;

use super::avx2_int8::rescale;
use crate::fast::ukernel::gemm::{self, PanelJob};
use crate::fast::ukernel::QuadDot;

/// Four uint8 × int8 products per lane with the VEX-encoded `vpdpbusd`, 8 lanes.
impl QuadDot<u32> for __m256i {
    type Out = __m256;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller vouches for the CPU (AVX2).
        unsafe { _mm256_setzero_si256() }
    }
    #[inline(always)]
    unsafe fn load(p: *const u32) -> Self {
        // SAFETY: the caller vouches for the CPU (AVX2) and for 8 readable words.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[inline(always)]
    unsafe fn splat(x: u32) -> Self {
        // SAFETY: the caller vouches for the CPU (AVX2).
        unsafe { _mm256_set1_epi32(x as i32) }
    }
    #[inline(always)]
    unsafe fn dot(self, a: Self, b: Self) -> Self {
        // SAFETY: the caller vouches for the CPU (AVX-VNNI).
        unsafe { _mm256_dpbusd_avx_epi32(self, a, b) }
    }
    #[inline(always)]
    unsafe fn scaled(self, cols: *const f32) -> __m256 {
        // SAFETY: the caller's contract: 8 readable column scales.
        unsafe { rescale(self, cols) }
    }
}

/// The int8 panel product in blocks of 6 rows × 2 vectors of 8: 12 accumulators, 2 panel
/// vectors and a broadcast in 16 ymm registers.
///
/// # Safety
/// The CPU runs AVX-VNNI; the job is an int8 one (its scales given).
#[target_feature(enable = "avxvnni,avx2,fma")]
pub(super) unsafe fn product_panel(job: PanelJob<u32>) {
    gemm::product_panel!(
        job,
        __m256i,
        "avxvnni,avx2,fma",
        quads [6 5 4 3 2 1],
        [2 1]
    );
}
