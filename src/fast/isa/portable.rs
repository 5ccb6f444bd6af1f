//! Plain Rust over arrays of four f32: the compiler turns them into the target's baseline
//! vectors (SSE2 on x86-64, NEON on 64-bit Arm), so this runs on every CPU.

use crate::fast::mat::Mat;
use crate::fast::ukernel::gemm::{self, PanelJob};
use crate::fast::ukernel::winograd::{self, Task};
use crate::fast::ukernel::Simd;

/// Four f32 lanes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct F32x4([f32; 4]);

impl F32x4 {
    #[inline(always)]
    fn map(self, o: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        Self(std::array::from_fn(|i| f(self.0[i], o.0[i])))
    }
}

impl Simd for F32x4 {
    const LANES: usize = 4;

    // Plain arrays: making one needs nothing of the CPU.
    #[inline(always)]
    unsafe fn zero() -> Self {
        Self([0.0; 4])
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Self([x; 4])
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.map(o, |a, b| a + b)
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self.map(o, |a, b| a - b)
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // Not fused: a fused multiply-add without the instruction is a slow library call.
        Self(std::array::from_fn(|i| self.0[i] * b.0[i] + c.0[i]))
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        self.map(o, f32::max)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller vouches for four readable values.
        Self(unsafe { p.cast::<[f32; 4]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, live: usize) -> Self {
        let mut x = [0.0; 4];
        // SAFETY: the caller vouches for `live` readable values; `x` holds four.
        unsafe { std::ptr::copy_nonoverlapping(p, x.as_mut_ptr(), live.min(4)) };
        Self(x)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller vouches for four writable values.
        unsafe { p.cast::<[f32; 4]>().write_unaligned(self.0) }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, live: usize) {
        // SAFETY: the caller vouches for `live` writable values; `self` holds four.
        unsafe { std::ptr::copy_nonoverlapping(self.0.as_ptr(), p, live.min(4)) };
    }
}

/// The panel product in blocks of 4 rows × 2 vectors (8 of the panel's 32 columns):
/// 8 accumulators, 2 panel vectors and a broadcast, within SSE2's 16 registers.
///
/// # Safety
/// None beyond [`PanelJob`]'s invariants; `unsafe` only because the blocks use raw pointers.
pub(super) unsafe fn product_panel(job: PanelJob) {
    gemm::product_panel!(job, F32x4, [4 3 2 1], [2 1]);
}

/// # Safety
/// As [`product_panel`].
pub(super) unsafe fn winograd_input(task: &Task, c: usize, src: Mat, v: &mut [f32]) {
    // SAFETY: this function runs only where the CPU has nothing beyond the baseline (the caller's contract).
    unsafe { winograd::input::<F32x4>(task, c, src, v) }
}

/// # Safety
/// As [`product_panel`].
pub(super) unsafe fn winograd_output(task: &Task, c: usize, m: &[f32], out: (&mut [f32], usize)) {
    // SAFETY: this function runs only where the CPU has nothing beyond the baseline (the caller's contract).
    unsafe { winograd::output::<F32x4>(task, c, m, out) }
}
