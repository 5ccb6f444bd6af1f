//! The micro-kernels, written once over [`Simd`] (a vector of f32 lanes) and [`Dot`] (one step
//! of a product): the register blocks of the packed product (`gemm`), the Winograd transforms
//! (`winograd`), the int8 3×3 convolution's blocks (`direct`), and the number formats of the
//! reduced precisions (`reduced`). Each instruction set under `isa/` instantiates them with its
//! own vector type, inside functions compiled for it; nothing here tests CPU features or cuts
//! work between threads (the drivers in `ops/` do).

pub(crate) mod direct;
pub(crate) mod gemm;
pub(crate) mod reduced;
pub(crate) mod winograd;

/// One step of a product over values of `T`, for a vector of f32 accumulators: an f32 per row
/// and column (every instruction set), or a pair of bf16 values (AVX-512 BF16).
pub(crate) trait Dot<T>: Simd {
    /// A vector of the panel's values for `LANES` columns.
    type Operand: Copy;
    /// # Safety
    /// `p..p + LANES` must be readable.
    unsafe fn load_operand(p: *const T) -> Self::Operand;
    /// One row's value, for every column.
    /// # Safety
    /// The CPU runs the instruction set of `Self` (see [`Simd`]).
    unsafe fn splat_operand(x: T) -> Self::Operand;
    /// `self + a·b`, summed over each lane's values.
    fn dot(self, a: Self::Operand, b: Self::Operand) -> Self;
}

/// One step of an int8 product over quads of `T` (four uint8 values of a row beside four int8
/// ones of a column in each 32-bit lane, their products summed exactly into the lane's i32), for
/// a vector of i32 accumulators whose results leave as the f32 vector [`QuadDot::Out`]: AVX-512
/// VNNI's and AVX-VNNI's `vpdpbusd`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) trait QuadDot<T>: Copy {
    /// The f32 vector of as many lanes, which takes the scaled sums.
    type Out: Simd;
    /// # Safety
    /// The CPU runs the instruction set of `Self`.
    unsafe fn zero() -> Self;
    /// # Safety
    /// `p..p + LANES` must be readable.
    unsafe fn load(p: *const T) -> Self;
    /// One row's quad, for every column.
    /// # Safety
    /// The CPU runs the instruction set of `Self`.
    unsafe fn splat(x: T) -> Self;
    /// `self + a·b`, the four products of each lane's quads summed.
    /// # Safety
    /// The CPU runs the instruction set of the product (an integer vector type is shared by
    /// instruction sets with and without it).
    unsafe fn dot(self, a: Self, b: Self) -> Self;
    /// The sums in f32, times their columns' scales (`LANES` readable from `cols`).
    /// # Safety
    /// `cols..cols + LANES` must be readable.
    unsafe fn scaled(self, cols: *const f32) -> Self::Out;
}

/// A [`Dot`] with a product by one lane (NEON's `vfmaq_laneq_f32`): a register block reads
/// `LANES` (four) steps of a row as one operand and takes each step's value from its lane,
/// instead of broadcasting every value from memory (`gemm::block_by_lanes`). Only NEON has it.
#[cfg(target_arch = "aarch64")]
pub(crate) trait LaneDot<T>: Dot<T> {
    /// `self + a[L]·b`: lane `L` of `a` (steps of one row) times `b` (the panel's columns).
    fn dot_lane<const L: i32>(self, a: Self::Operand, b: Self::Operand) -> Self;
}

impl<S: Simd> Dot<f32> for S {
    type Operand = S;
    #[inline(always)]
    unsafe fn load_operand(p: *const f32) -> S {
        // SAFETY: the caller's contract is `load`'s.
        unsafe { S::load(p) }
    }
    #[inline(always)]
    unsafe fn splat_operand(x: f32) -> S {
        // SAFETY: the caller's contract is `splat`'s.
        unsafe { S::splat(x) }
    }
    #[inline(always)]
    fn dot(self, a: S, b: S) -> S {
        a.mul_add(b, self)
    }
}

/// A vector of f32 lanes: the vocabulary in which the product and the transforms are written,
/// once for every instruction set.
///
/// Making a vector is `unsafe` (the CPU must run its instruction set: the instruction sets'
/// entry points, which `Kernels` calls only on CPUs that have them); arithmetic on vectors is
/// safe, since a vector exists only where it was made.
pub(crate) trait Simd: Copy {
    /// f32 values per vector.
    const LANES: usize;
    /// # Safety
    /// The CPU runs the vector type's instruction set.
    unsafe fn zero() -> Self;
    /// # Safety
    /// The CPU runs the vector type's instruction set.
    unsafe fn splat(x: f32) -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    /// `self·b + c`, fused where the instruction set has FMA.
    fn mul_add(self, b: Self, c: Self) -> Self;
    fn max(self, o: Self) -> Self;
    /// # Safety
    /// `p..p + LANES` must be readable.
    unsafe fn load(p: *const f32) -> Self;
    /// The first `live` (< `LANES`) values from `p`, the other lanes zero.
    /// # Safety
    /// `p..p + live` must be readable.
    unsafe fn load_first(p: *const f32, live: usize) -> Self;
    /// # Safety
    /// `p..p + LANES` must be writable.
    unsafe fn store(self, p: *mut f32);
    /// The first `live` (< `LANES`) lanes to `p`.
    /// # Safety
    /// `p..p + live` must be writable.
    unsafe fn store_first(self, p: *mut f32, live: usize);

    /// `self·k + o`.
    #[inline(always)]
    fn mul_add_k(self, k: f32, o: Self) -> Self {
        // SAFETY: `self` exists, so the CPU runs its instruction set.
        self.mul_add(unsafe { Self::splat(k) }, o)
    }

    /// The first `live` values from `p` (all lanes when `live ≥ LANES`), the others zero.
    /// # Safety
    /// `p..p + live.min(LANES)` must be readable.
    #[inline(always)]
    unsafe fn load_upto(p: *const f32, live: usize) -> Self {
        // SAFETY: the caller's contract covers `live.min(LANES)` values.
        unsafe {
            if live >= Self::LANES {
                Self::load(p)
            } else {
                Self::load_first(p, live)
            }
        }
    }

    /// The first `live` lanes to `p` (all lanes when `live ≥ LANES`).
    /// # Safety
    /// `p..p + live.min(LANES)` must be writable.
    #[inline(always)]
    unsafe fn store_upto(self, p: *mut f32, live: usize) {
        // SAFETY: the caller's contract covers `live.min(LANES)` values.
        unsafe {
            if live >= Self::LANES {
                self.store(p)
            } else {
                self.store_first(p, live)
            }
        }
    }
}
