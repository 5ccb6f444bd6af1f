//! WebAssembly's 128-bit SIMD (`simd128`): 4-lane vectors, which the browser's compiler maps to
//! the CPU's own (SSE or AVX on x86-64, NEON on Arm). A module built with relaxed SIMD as well
//! (`+relaxed-simd`) multiplies and adds in one instruction where the CPU has FMA.
//!
//! WebAssembly has no run-time feature test: a module either holds these instructions (and
//! fails to compile in a browser without them) or not, so this module is compiled only into a
//! build that enables `simd128`.

use std::arch::wasm32::*;

use crate::fast::mat::Mat;
use crate::fast::ukernel::gemm::{self, PanelJob};
use crate::fast::ukernel::winograd::{self, Task};
use crate::fast::ukernel::Simd;

impl Simd for v128 {
    const LANES: usize = 4;

    // The module is built with simd128 enabled throughout (see the module's header), so the
    // value intrinsics are safe to call; only memory access needs `unsafe`.
    #[inline(always)]
    unsafe fn zero() -> Self {
        f32x4_splat(0.0)
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        f32x4_splat(x)
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        f32x4_add(self, o)
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        f32x4_sub(self, o)
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        #[cfg(target_feature = "relaxed-simd")]
        {
            // Fused or not as the CPU has it: the relaxed semantics allow either.
            f32x4_relaxed_madd(self, b, c)
        }
        #[cfg(not(target_feature = "relaxed-simd"))]
        {
            f32x4_add(f32x4_mul(self, b), c)
        }
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        // `pmax` (`o < self ? self : o`) is one instruction on x86; `f32x4_max` propagates NaN
        // with extra work. The kernels take the maximum with 0 after a ReLU's scale-shift,
        // whose operands are finite for finite inputs.
        f32x4_pmax(self, o)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller vouches for four readable values (the trait's contract);
        // `v128_load` needs no alignment.
        unsafe { v128_load(p.cast()) }
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, live: usize) -> Self {
        let mut x = [0.0f32; 4];
        // SAFETY: the caller vouches for `live` readable values; `x` holds four.
        unsafe {
            std::ptr::copy_nonoverlapping(p, x.as_mut_ptr(), live.min(4));
            v128_load(x.as_ptr().cast())
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller vouches for four writable values (the trait's contract).
        unsafe { v128_store(p.cast(), self) }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, live: usize) {
        let mut x = [0.0f32; 4];
        // SAFETY: the caller vouches for `live` writable values; `x` holds four.
        unsafe {
            v128_store(x.as_mut_ptr().cast(), self);
            std::ptr::copy_nonoverlapping(x.as_ptr(), p, live.min(4));
        }
    }
}

/// The panel product in blocks of 4 rows × 3 vectors (12 of the panel's 32 columns): 12
/// accumulators, 3 panel vectors and a broadcast, within the 16 vector registers that the
/// browser's compiler has on x86-64.
///
/// # Safety
/// None beyond [`PanelJob`]'s invariants (the module runs simd128 or does not load).
pub(super) unsafe fn product_panel(job: PanelJob) {
    gemm::product_panel!(job, v128, [4 3 2 1], [3 2 1]);
}

/// # Safety
/// As [`product_panel`].
pub(super) unsafe fn winograd_input(task: &Task, c: usize, src: Mat, v: &mut [f32]) {
    // SAFETY: the module runs simd128 (see the module's header).
    unsafe { winograd::input::<v128>(task, c, src, v) }
}

/// # Safety
/// As [`product_panel`].
pub(super) unsafe fn winograd_output(task: &Task, c: usize, m: &[f32], out: (&mut [f32], usize)) {
    // SAFETY: the module runs simd128 (see the module's header).
    unsafe { winograd::output::<v128>(task, c, m, out) }
}
