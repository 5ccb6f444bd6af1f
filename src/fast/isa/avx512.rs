//! AVX-512F: 16-lane vectors, masked loads and stores for remainders.

use std::arch::x86_64::*;

use crate::fast::mat::{Affine, Mat};
use crate::fast::ukernel::gemm::{self, PanelJob};
use crate::fast::ukernel::winograd::{self, Task};
use crate::fast::ukernel::Simd;

/// Mask of the first `live` of 16 lanes (all of them from 16 on): the one the AVX-512 modules
/// load and store remainders with.
#[inline(always)]
pub(super) fn mask(live: usize) -> __mmask16 {
    if live >= 16 {
        !0
    } else {
        (1 << live) - 1
    }
}

/// Lanes `i..i + 16` of the `k` values from `p`, zero past the `k`th (`i` may be past it:
/// masked-off lanes are not read): a plain load where all 16 lie below `k`, with no mask to
/// work out, else a masked one. How the AVX-512 modules read a row of a length they do not
/// know beforehand.
///
/// # Safety
/// The CPU runs AVX-512F; `p` holds `k` values.
#[inline(always)]
pub(super) unsafe fn lanes(p: *const f32, k: usize, i: usize) -> __m512 {
    // SAFETY: the caller's contract: a plain load reads lanes below `k` only, and masked lanes at or past the `k`th are not read.
    unsafe {
        match i + 16 <= k {
            true => _mm512_loadu_ps(p.add(i)),
            false => _mm512_maskz_loadu_ps(mask(k.saturating_sub(i)), p.wrapping_add(i)),
        }
    }
}

impl Simd for __m512 {
    const LANES: usize = 16;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller vouches that the CPU runs AVX-512F.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: the caller vouches that the CPU runs AVX-512F.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: `self` exists, so the CPU runs AVX-512F.
        unsafe { _mm512_add_ps(self, o) }
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: `self` exists, so the CPU runs AVX-512F.
        unsafe { _mm512_sub_ps(self, o) }
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: `self` exists, so the CPU runs AVX-512F.
        unsafe { _mm512_fmadd_ps(self, b, c) }
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        // SAFETY: `self` exists, so the CPU runs AVX-512F.
        unsafe { _mm512_max_ps(self, o) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller vouches for the CPU and for the pointer (the trait's contract).
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, live: usize) -> Self {
        // SAFETY: the caller vouches for the CPU and for the pointer (the trait's contract).
        unsafe { _mm512_maskz_loadu_ps(mask(live), p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller vouches for the CPU and for the pointer (the trait's contract).
        unsafe { _mm512_storeu_ps(p, self) }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, live: usize) {
        // SAFETY: the caller vouches for the CPU and for the pointer (the trait's contract).
        unsafe { _mm512_mask_storeu_ps(p, mask(live), self) }
    }
    // A masked access costs as much as a full one: no branch on the count.
    #[inline(always)]
    unsafe fn load_upto(p: *const f32, live: usize) -> Self {
        // SAFETY: the caller's contract is `load_first`'s.
        unsafe { Self::load_first(p, live) }
    }
    #[inline(always)]
    unsafe fn store_upto(self, p: *mut f32, live: usize) {
        // SAFETY: the caller's contract is `store_first`'s.
        unsafe { self.store_first(p, live) }
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
    // SAFETY: this function runs only where the CPU has AVX-512F (the caller's contract).
    unsafe { winograd::input::<__m512>(task, c, src, v) }
}

#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn winograd_output(task: &Task, c: usize, m: &[f32], out: (&mut [f32], usize)) {
    // SAFETY: this function runs only where the CPU has AVX-512F (the caller's contract).
    unsafe { winograd::output::<__m512>(task, c, m, out) }
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
