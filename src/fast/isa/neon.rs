//! NEON (Advanced SIMD) on 64-bit Arm: 4-lane vectors in 32 registers, fused multiply-adds, and
//! the product by one lane (`vfmaq_laneq_f32`) for the register blocks of the packed product.

use std::arch::aarch64::*;

use crate::fast::mat::Mat;
use crate::fast::ukernel::gemm::{self, PanelJob};
use crate::fast::ukernel::winograd::{self, Task};
use crate::fast::ukernel::{LaneDot, Simd};

impl Simd for float32x4_t {
    const LANES: usize = 4;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller vouches that the CPU runs NEON.
        unsafe { vdupq_n_f32(0.0) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: the caller vouches that the CPU runs NEON.
        unsafe { vdupq_n_f32(x) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: `self` exists, so the CPU runs NEON.
        unsafe { vaddq_f32(self, o) }
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: `self` exists, so the CPU runs NEON.
        unsafe { vsubq_f32(self, o) }
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: `self` exists, so the CPU runs NEON.
        unsafe { vfmaq_f32(c, self, b) }
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        // `vmaxnmq_f32`: the number where one lane is NaN, as `f32::max` (the portable kernels).
        // SAFETY: `self` exists, so the CPU runs NEON.
        unsafe { vmaxnmq_f32(self, o) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller vouches for the CPU and for the pointer (the trait's contract).
        unsafe { vld1q_f32(p) }
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, live: usize) -> Self {
        // No masked loads: the live values through a zeroed array.
        let mut x = [0.0f32; 4];
        // SAFETY: the caller vouches for `live` readable values and for the CPU; `x` holds four.
        unsafe {
            std::ptr::copy_nonoverlapping(p, x.as_mut_ptr(), live.min(4));
            vld1q_f32(x.as_ptr())
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller vouches for the CPU and for the pointer (the trait's contract).
        unsafe { vst1q_f32(p, self) }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, live: usize) {
        let mut x = [0.0f32; 4];
        // SAFETY: the caller vouches for `live` writable values and for the CPU; `x` holds four.
        unsafe {
            vst1q_f32(x.as_mut_ptr(), self);
            std::ptr::copy_nonoverlapping(x.as_ptr(), p, live.min(4));
        }
    }
}

impl LaneDot<f32> for float32x4_t {
    #[inline(always)]
    fn dot_lane<const L: i32>(self, a: Self, b: Self) -> Self {
        // SAFETY: `self` exists, so the CPU runs NEON; `block_by_lanes` takes L from 0..4.
        unsafe { vfmaq_laneq_f32::<L>(self, b, a) }
    }
}

/// The panel product in blocks of 4 rows × 4 vectors (16 of the panel's 32 columns), four
/// steps at a time: 16 accumulators, 4 panel vectors and the 4 rows' steps in NEON's 32
/// registers, each step's value taken from its lane.
///
/// # Safety
/// The CPU runs NEON; otherwise [`PanelJob`]'s invariants.
#[target_feature(enable = "neon")]
pub(super) unsafe fn product_panel(job: PanelJob) {
    gemm::product_panel!(job, float32x4_t, "neon", by_lanes [4 3 2 1], [4 3 2 1]);
}

/// # Safety
/// As [`product_panel`].
#[target_feature(enable = "neon")]
pub(super) unsafe fn winograd_input(task: &Task, c: usize, src: Mat, v: &mut [f32]) {
    // SAFETY: this function runs only where the CPU has NEON (the caller's contract).
    unsafe { winograd::input::<float32x4_t>(task, c, src, v) }
}

/// # Safety
/// As [`product_panel`].
#[target_feature(enable = "neon")]
pub(super) unsafe fn winograd_output(task: &Task, c: usize, m: &[f32], out: (&mut [f32], usize)) {
    // SAFETY: this function runs only where the CPU has NEON (the caller's contract).
    unsafe { winograd::output::<float32x4_t>(task, c, m, out) }
}
