//! AVX-512F: 16-lane vectors, masked loads and stores for remainders.

use std::arch::x86_64::*;

use super::Simd;
use crate::fast::gemm::{self, PanelJob};
use crate::fast::kernels::{Affine, Mat};
use crate::fast::winograd::{self, Task};

/// Mask of the first `live` of 16 lanes.
#[inline(always)]
fn mask(live: usize) -> __mmask16 {
    if live >= 16 {
        !0
    } else {
        (1 << live) - 1
    }
}

impl Simd for __m512 {
    const LANES: usize = 16;

    // SAFETY (each method): only reached from the entry points below, which require AVX-512F;
    // the pointer contracts are the trait's.
    #[inline(always)]
    fn zero() -> Self {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    fn splat(x: f32) -> Self {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        unsafe { _mm512_add_ps(self, o) }
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        unsafe { _mm512_sub_ps(self, o) }
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        unsafe { _mm512_fmadd_ps(self, b, c) }
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        unsafe { _mm512_max_ps(self, o) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, live: usize) -> Self {
        _mm512_maskz_loadu_ps(mask(live), p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self)
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, live: usize) {
        _mm512_mask_storeu_ps(p, mask(live), self)
    }
    // A masked access costs as much as a full one: no branch on the count.
    #[inline(always)]
    unsafe fn load_upto(p: *const f32, live: usize) -> Self {
        Self::load_first(p, live)
    }
    #[inline(always)]
    unsafe fn store_upto(self, p: *mut f32, live: usize) {
        self.store_first(p, live)
    }
}

/// The panel product in blocks of 12 rows × 2 vectors: 24 accumulators, 2 panel vectors and a
/// broadcast in 32 zmm registers.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn product_panel(job: PanelJob) {
    gemm::product_panel!(job, __m512, "avx512f,avx2,fma", [12 11 10 9 8 7 6 5 4 3 2 1], [2 1]);
}

#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn winograd_input(task: &Task, c: usize, src: Mat, v: &mut [f32]) {
    winograd::input::<__m512>(task, c, src, v)
}

#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn winograd_output(task: &Task, c: usize, m: &[f32], out: (&mut [f32], usize)) {
    winograd::output::<__m512>(task, c, m, out)
}

/// The map, vectorised by the compiler for AVX-512.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn affine(
    map: &Affine,
    src: &[f32],
    dst: &mut [f32],
    store: impl Fn(&mut f32, f32),
) {
    map.each(src, dst, store)
}
