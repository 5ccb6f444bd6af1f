//! AVX2 with FMA: 8-lane vectors in 16 registers; remainders through `vmaskmovps`.

use std::arch::x86_64::*;

use crate::fast::mat::{Affine, Mat};
use crate::fast::ukernel::gemm::{self, PanelJob};
use crate::fast::ukernel::winograd::{self, Task};
use crate::fast::ukernel::Simd;

/// Lanes `0..live` set, as `vmaskmovps` reads a mask (the sign bit of each lane).
#[inline(always)]
pub(super) fn mask(live: usize) -> __m256i {
    // SAFETY: only reached from entry points that require AVX2 (this module's and
    // `avx2_int8`'s).
    unsafe {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(live as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }
}

impl Simd for __m256 {
    const LANES: usize = 8;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller vouches that the CPU runs AVX2 and FMA.
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: the caller vouches that the CPU runs AVX2 and FMA.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: `self` exists, so the CPU runs AVX2 and FMA.
        unsafe { _mm256_add_ps(self, o) }
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: `self` exists, so the CPU runs AVX2 and FMA.
        unsafe { _mm256_sub_ps(self, o) }
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: `self` exists, so the CPU runs AVX2 and FMA.
        unsafe { _mm256_fmadd_ps(self, b, c) }
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        // SAFETY: `self` exists, so the CPU runs AVX2 and FMA.
        unsafe { _mm256_max_ps(self, o) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller vouches for the CPU and for the pointer (the trait's contract).
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, live: usize) -> Self {
        // SAFETY: the caller vouches for the CPU and for the pointer (the trait's contract).
        unsafe { _mm256_maskload_ps(p, mask(live)) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller vouches for the CPU and for the pointer (the trait's contract).
        unsafe { _mm256_storeu_ps(p, self) }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, live: usize) {
        // SAFETY: the caller vouches for the CPU and for the pointer (the trait's contract).
        unsafe { _mm256_maskstore_ps(p, mask(live), self) }
    }
}

/// The panel product in blocks of 6 rows × 2 vectors (16 of the panel's 32 columns):
/// 12 accumulators, 2 panel vectors and a broadcast in 16 ymm registers.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn product_panel(job: PanelJob) {
    gemm::product_panel!(job, __m256, "avx2,fma", [6 5 4 3 2 1], [2 1]);
}

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn winograd_input(task: &Task, c: usize, src: Mat, v: &mut [f32]) {
    // SAFETY: this function runs only where the CPU has AVX2 and FMA (the caller's contract).
    unsafe { winograd::input::<__m256>(task, c, src, v) }
}

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn winograd_output(task: &Task, c: usize, m: &[f32], out: (&mut [f32], usize)) {
    // SAFETY: this function runs only where the CPU has AVX2 and FMA (the caller's contract).
    unsafe { winograd::output::<__m256>(task, c, m, out) }
}

/// The map, vectorised by the compiler for AVX2.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn affine(
    map: &Affine,
    src: &[f32],
    dst: &mut [f32],
    store: impl Fn(&mut f32, f32),
) {
    map.each(src, dst, store)
}
