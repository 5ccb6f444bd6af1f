//! Instruction sets: which one the fast path runs, chosen once when a model is compiled, and the
//! one place that dispatches to its kernels.
//!
//! Each instruction set has a module of its own (`avx512`, `avx2`, `portable`) holding its vector
//! type (an implementation of [`Simd`]) and its entry points: the panel product, the Winograd
//! transforms and the scale-shift(-clamp) maps, each the algorithm of `gemm.rs`, `winograd.rs`
//! or `kernels.rs` compiled for that instruction set. The algorithms are written once, over
//! [`Simd`], and never test CPU features themselves: they receive a [`Kernels`] and call it.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_bf16;
#[cfg(target_arch = "x86_64")]
mod avx512_vnni;
mod portable;

use std::fmt;
use std::str::FromStr;
use std::sync::Once;

use super::direct::Conv3Job;
use super::gemm::PanelJob;
use super::kernels::{Affine, Mat};
use super::winograd::Task;
use crate::error::{Error, Result};

/// The environment variable that caps the instruction set, in the manner of oneDNN's
/// `ONEDNN_MAX_CPU_ISA`.
pub const ISA_VARIABLE: &str = "DENSENET_CPU_ISA";

/// The environment variable that keeps the reduced-precision products off AMX tiles where the
/// CPU has them (`0`, `off`, `false` or `no`): they then run with AVX-512 dot products, as on a
/// CPU without AMX.
pub const AMX_VARIABLE: &str = "DENSENET_AMX";

/// Whether [`AMX_VARIABLE`] lets products run on AMX tiles (it does unless set to `0`, `off`,
/// `false` or `no`).
pub fn amx_allowed() -> bool {
    let value = std::env::var(AMX_VARIABLE).unwrap_or_default();
    !matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "0" | "off" | "false" | "no"
    )
}

/// An instruction set the fast path has kernels for, from the least to the most capable.
///
/// ```
/// use densenet::fast::Isa;
/// let isa: Isa = "avx2".parse()?;
/// assert_eq!(isa.to_string(), "avx2");
/// assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
/// assert!(Isa::Portable.is_supported());
/// assert!(Isa::best().is_supported());
/// # Ok::<(), densenet::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust over four-lane arrays: the compiler's baseline vectors (SSE2 on x86-64, NEON
    /// on 64-bit Arm). Runs on every CPU.
    Portable,
    /// AVX2 with FMA: 8-lane vectors in 16 registers (Intel since Haswell, AMD since Zen).
    Avx2,
    /// AVX-512F: 16-lane vectors in 32 registers.
    Avx512,
}

impl Isa {
    /// Every instruction set, least capable first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The name used by [`ISA_VARIABLE`] and `densenet system`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the instruction set's kernels.
    pub fn is_supported(self) -> bool {
        let cpu = CpuFeatures::detect();
        match self {
            Isa::Portable => true,
            Isa::Avx2 => cpu.avx2 && cpu.fma,
            Isa::Avx512 => cpu.avx2 && cpu.fma && cpu.avx512f,
        }
    }

    /// The most capable instruction set this CPU runs.
    pub fn best() -> Isa {
        Isa::ALL
            .into_iter()
            .rev()
            .find(|isa| isa.is_supported())
            .unwrap_or(Isa::Portable)
    }

    /// This instruction set, or the best the CPU runs if it lacks this one.
    pub fn capped(self) -> Isa {
        self.min(Isa::best())
    }

    /// What [`ISA_VARIABLE`] asks for: unset or empty is the best this CPU runs; an unknown value
    /// is an [`Error::Isa`].
    pub fn from_env() -> Result<IsaChoice> {
        let value = std::env::var(ISA_VARIABLE).unwrap_or_default();
        let requested = match value.trim() {
            "" => None,
            v => Some(v.parse::<Isa>().map_err(|_| Error::Isa {
                value: value.clone(),
                reason: format!("{ISA_VARIABLE} expects avx512, avx2 or portable"),
            })?),
        };
        Ok(IsaChoice {
            requested,
            isa: requested.map_or_else(Isa::best, Isa::capped),
        })
    }
}

impl FromStr for Isa {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let name = s.trim().to_ascii_lowercase();
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name() == name)
            .ok_or_else(|| Error::Isa {
                value: s.to_string(),
                reason: "expected avx512, avx2 or portable".into(),
            })
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The precision the fast path's products compute in.
///
/// ```
/// use densenet::fast::{Isa, Precision};
/// let p: Precision = "bf16".parse()?;
/// assert_eq!(p.to_string(), "bf16");
/// assert!(Precision::F32.is_native(Isa::Portable));
/// assert!(!Precision::Bf16.is_native(Isa::Avx2));
/// assert!(!Precision::Int8.is_native(Isa::Avx2));
/// assert_eq!(Precision::Int8.fallback(Isa::Portable), Precision::F32);
/// # Ok::<(), densenet::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 throughout: the default, equal to PyTorch within float rounding.
    #[default]
    F32,
    /// Weights and the products' inputs rounded to bfloat16 (8 bits of mantissa), products
    /// accumulated in f32 (AVX-512 BF16's `vdpbf16ps`); the transforms, the maps between the
    /// products and the classifier stay in f32.
    Bf16,
    /// The convolutions whose inputs come after a ReLU (both of every dense layer's, and the
    /// transitions' where they have the ReLU) in 8-bit integers: their weights quantised once
    /// at load, symmetric per output channel (int8, ±127); their inputs quantised as they are
    /// gathered (uint8, zero point 0, no calibration), with one scale per row (pixel) from that
    /// row's largest value for a 1×1 convolution and one per image for a 3×3 one (which runs
    /// tap by tap over a padded copy, not by Winograd's method); products accumulated exactly
    /// in i32 (AVX-512 VNNI's `vpdpbusd`, or AMX-INT8 tiles) and scaled back to f32 as they
    /// leave the registers. The stem and the transitions without the ReLU compute in bf16
    /// where the CPU has it, else in f32; the classifier in f32.
    Int8,
}

impl Precision {
    /// The name `--precision` takes.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    /// Whether the kernels of `isa` compute in this precision on this CPU: bf16 needs AVX-512
    /// BF16 and the AVX-512 kernels, int8 AVX-512 VNNI (and BW) and the AVX-512 kernels.
    pub fn is_native(self, isa: Isa) -> bool {
        let cpu = CpuFeatures::detect();
        let avx512 = isa == Isa::Avx512 && isa.is_supported();
        match self {
            Precision::F32 => isa.is_supported(),
            Precision::Bf16 => avx512 && cpu.avx512_bf16,
            Precision::Int8 => avx512 && cpu.avx512_vnni && cpu.avx512bw,
        }
    }

    /// The precision that runs when this one is asked of the kernels of `isa`: itself where it
    /// is native, else the next one down that is (int8, then bf16, then f32).
    pub fn fallback(self, isa: Isa) -> Precision {
        [self, Precision::Bf16, Precision::F32]
            .into_iter()
            .filter(|p| p.rank() <= self.rank())
            .find(|p| p.is_native(isa))
            .unwrap_or(Precision::F32)
    }

    /// How far from f32: the order of [`Precision::fallback`].
    fn rank(self) -> u8 {
        match self {
            Precision::F32 => 0,
            Precision::Bf16 => 1,
            Precision::Int8 => 2,
        }
    }

    /// The precision of the products that int8 leaves in floating point on this CPU (the stem,
    /// transitions without the ReLU): bf16 where native to `isa`, else f32. Itself for f32 and
    /// bf16.
    pub fn float_part(self, isa: Isa) -> Precision {
        match self {
            Precision::Int8 => Precision::Bf16.fallback(isa),
            p => p,
        }
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            _ => Err(Error::InvalidConfig(format!(
                "precision {s:?}: the CPU computes in f32, bf16 or int8"
            ))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The instruction set a model compiles for, and what [`ISA_VARIABLE`] asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsaChoice {
    /// The cap from [`ISA_VARIABLE`], if set.
    pub requested: Option<Isa>,
    /// What runs: the cap, or the best this CPU runs if that is less.
    pub isa: Isa,
}

impl IsaChoice {
    /// Whether the CPU lacks what was asked for (so a less capable set runs).
    pub fn is_capped_by_cpu(&self) -> bool {
        self.requested.is_some_and(|r| r > self.isa)
    }

    /// Says once per process, on stderr, when the CPU lacks the requested instruction set.
    pub(crate) fn note_once(&self) {
        static NOTE: Once = Once::new();
        if let (true, Some(requested)) = (self.is_capped_by_cpu(), self.requested) {
            NOTE.call_once(|| {
                eprintln!(
                    "note: {ISA_VARIABLE}={requested}, but this CPU does not run {requested}: using {}",
                    self.isa
                )
            });
        }
    }
}

/// The CPU features the fast path cares about, as this CPU reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// 256-bit integer and float vectors.
    pub avx2: bool,
    /// Fused multiply-add.
    pub fma: bool,
    /// AVX-512 Foundation: 512-bit vectors and mask registers.
    pub avx512f: bool,
    /// AVX-512 byte and word instructions.
    pub avx512bw: bool,
    /// AVX-512 on 128- and 256-bit vectors.
    pub avx512vl: bool,
    /// AVX-512 VNNI: 8-bit integer dot products.
    pub avx512_vnni: bool,
    /// AVX-512 BF16: bfloat16 dot products.
    pub avx512_bf16: bool,
    /// AMX-BF16 (with AMX-TILE): bfloat16 products of whole tiles, where the operating system
    /// allows them.
    pub amx_bf16: bool,
    /// AMX-INT8 (with AMX-TILE): 8-bit integer products of whole tiles, where the operating
    /// system allows them.
    pub amx_int8: bool,
}

impl CpuFeatures {
    /// This CPU's features (all `false` off x86-64).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            Self {
                avx2: has!("avx2"),
                fma: has!("fma"),
                avx512f: has!("avx512f"),
                avx512bw: has!("avx512bw"),
                avx512vl: has!("avx512vl"),
                avx512_vnni: has!("avx512vnni"),
                avx512_bf16: has!("avx512bf16"),
                amx_bf16: amx::available(amx::Unit::Bf16),
                amx_int8: amx::available(amx::Unit::Int8),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Self::default()
    }

    /// Each feature's name with whether this CPU has it, in a fixed order.
    pub fn list(&self) -> [(&'static str, bool); 9] {
        [
            ("avx2", self.avx2),
            ("fma", self.fma),
            ("avx512f", self.avx512f),
            ("avx512bw", self.avx512bw),
            ("avx512vl", self.avx512vl),
            ("avx512_vnni", self.avx512_vnni),
            ("avx512_bf16", self.avx512_bf16),
            ("amx_bf16", self.amx_bf16),
            ("amx_int8", self.amx_int8),
        ]
    }
}

/// How the products of a reduced precision run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// AMX tiles (`tdpbf16ps`, `tdpbusd`).
    Tiles,
    /// AVX-512 dot products (`vdpbf16ps`, `vpdpbusd`).
    Vectors,
}

/// The kernels of one instruction set that this CPU runs, and the precision of their products:
/// the one dispatch of the fast path.
///
/// Made only by [`Kernels::with_precision`] (and the tests' variants of it), which checks the
/// CPU, so each entry point below may call its instruction set's functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kernels {
    isa: Isa,
    precision: Precision,
    /// How bf16 products run, where this precision has them (bf16, and int8's float part on a
    /// CPU with AVX-512 BF16).
    bf16: Option<Unit>,
    /// How int8 products run, in int8.
    int8: Option<Unit>,
}

impl Kernels {
    /// The f32 kernels of `isa`, if this CPU runs them.
    #[cfg(test)]
    pub(crate) fn new(isa: Isa) -> Option<Self> {
        Self::with_precision(isa, Precision::F32)
    }

    /// The kernels of `isa` with products in `precision`, if this CPU runs them; reduced
    /// precisions run on AMX tiles where the CPU has them and [`AMX_VARIABLE`] allows.
    pub(crate) fn with_precision(isa: Isa, precision: Precision) -> Option<Self> {
        if !precision.is_native(isa) {
            return None;
        }
        let cpu = CpuFeatures::detect();
        let allowed = amx_allowed();
        let unit = |tiles: bool| match tiles && allowed {
            true => Unit::Tiles,
            false => Unit::Vectors,
        };
        Some(Self {
            isa,
            precision,
            bf16: (precision.float_part(isa) == Precision::Bf16).then(|| unit(cpu.amx_bf16)),
            int8: (precision == Precision::Int8).then(|| unit(cpu.amx_int8)),
        })
    }

    /// The kernels of every instruction set this CPU runs (for tests that compare them).
    #[cfg(test)]
    pub(crate) fn all() -> Vec<Self> {
        Isa::ALL.into_iter().filter_map(Self::new).collect()
    }

    /// Every way this CPU runs the products of `precision` on AVX-512: with vector dot products,
    /// and on AMX tiles where it has them (for tests that compare them).
    #[cfg(test)]
    pub(crate) fn all_in(precision: Precision) -> Vec<Self> {
        let Some(best) = Self::with_precision(Isa::Avx512, precision) else {
            return Vec::new();
        };
        let vectors = |unit: Option<Unit>| unit.map(|_| Unit::Vectors);
        let mut all = vec![Self {
            bf16: vectors(best.bf16),
            int8: vectors(best.int8),
            ..best
        }];
        if best != all[0] {
            all.push(best);
        }
        all
    }

    pub(crate) fn isa(self) -> Isa {
        self.isa
    }

    pub(crate) fn precision(self) -> Precision {
        self.precision
    }

    /// The precision of the products that are not int8 (see [`Precision::float_part`]).
    pub(crate) fn float_precision(self) -> Precision {
        if self.bf16.is_some() {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    /// One panel of a bf16 product (see [`PanelJob`]): its values are bf16 pairs.
    pub(crate) fn product_panel_bf16(self, job: PanelJob<u32>) {
        // SAFETY: `with_precision` checked that the CPU runs AVX-512 BF16 (and AMX-BF16 for
        // tiles); `PanelJob` carries bounds-checked slices.
        unsafe {
            match (self.isa, self.bf16) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(Unit::Tiles)) => amx::product_panel(job),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(Unit::Vectors)) => avx512_bf16::product_panel(job),
                _ => unreachable!("bf16 products with kernels made for {self:?}"),
            }
        }
    }

    /// `src` rounded to bf16 pairs (see [`super::gemm::bf16_pair`]) in `dst`, which holds
    /// `src.len().div_ceil(2)` of them; an odd length is padded with a zero.
    pub(crate) fn round_bf16(self, src: &[f32], dst: &mut [u32]) {
        assert_eq!(dst.len(), src.len().div_ceil(2), "round_bf16: lengths");
        // SAFETY: as in `product_panel_bf16`; the lengths are checked above.
        unsafe {
            match (self.isa, self.bf16) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(_)) => avx512_bf16::round(src, dst),
                _ => unreachable!("bf16 rounding with kernels made for {self:?}"),
            }
        }
    }

    /// One panel of an int8 product (see [`PanelJob`]): its values are quads of bytes, uint8
    /// on the left, int8 on the right.
    pub(crate) fn product_panel_int8(self, job: PanelJob<u32>) {
        // SAFETY: `with_precision` checked that the CPU runs AVX-512 VNNI (and AMX-INT8 for
        // tiles); `PanelJob` carries bounds-checked slices.
        unsafe {
            match (self.isa, self.int8) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(Unit::Tiles)) => amx::product_panel_int8(job),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(Unit::Vectors)) => avx512_vnni::product_panel(job),
                _ => unreachable!("int8 products with kernels made for {self:?}"),
            }
        }
    }

    /// One row of an int8 product's left-hand side: `act(src)` (or `src`) quantised to uint8
    /// (see [`super::gemm::quantize_row`]), four values to a word of `dst`, the words past them
    /// zero. Returns the row's scale.
    pub(crate) fn quantize_u8(self, src: &[f32], act: Option<&Affine>, dst: &mut [u32]) -> f32 {
        assert!(
            dst.len() >= src.len().div_ceil(4),
            "quantize_u8: dst too short"
        );
        assert!(
            act.is_none_or(|a| a.channels() == src.len()),
            "quantize_u8: map and row differ"
        );
        // SAFETY: as in `product_panel_int8`; the lengths are checked above.
        unsafe {
            match (self.isa, self.int8) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(_)) => avx512_vnni::quantize(src, act, dst),
                _ => unreachable!("int8 quantisation with kernels made for {self:?}"),
            }
        }
    }

    /// The outputs of one job of an int8 3×3 convolution (see [`Conv3Job`]).
    pub(crate) fn direct_int8(self, job: Conv3Job) {
        // SAFETY: as in `product_panel_int8`; `Conv3Job` checks its bounds.
        unsafe {
            match (self.isa, self.int8) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(Unit::Tiles)) => amx::direct_int8(job),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(Unit::Vectors)) => avx512_vnni::direct(job),
                _ => unreachable!("int8 convolutions with kernels made for {self:?}"),
            }
        }
    }

    /// The largest of 0 and the values of `x` (NaN ignored), for int8 scales.
    pub(crate) fn max_f32(self, x: &[f32]) -> f32 {
        // SAFETY: as in `product_panel_int8`.
        unsafe {
            match (self.isa, self.int8) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(_)) => avx512_vnni::max(x),
                _ => unreachable!("int8 scales with kernels made for {self:?}"),
            }
        }
    }

    /// `x` quantised to uint8 with a given scale's `inverse` (see
    /// [`super::gemm::quantize_row`]) into `dst`, as long as `x`.
    pub(crate) fn quantize_scaled(self, x: &[f32], inverse: f32, dst: &mut [u8]) {
        assert_eq!(x.len(), dst.len(), "quantize_scaled: lengths");
        // SAFETY: as in `product_panel_int8`; the lengths are checked above.
        unsafe {
            match (self.isa, self.int8) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(_)) => avx512_vnni::quantize_scaled(x, inverse, dst),
                _ => unreachable!("int8 quantisation with kernels made for {self:?}"),
            }
        }
    }

    /// One panel of a product (see [`PanelJob`]).
    pub(crate) fn product_panel(self, job: PanelJob) {
        // SAFETY: `with_precision` checked that the CPU runs the instruction set; `PanelJob`
        // carries bounds-checked slices.
        unsafe {
            match self.isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => avx512::product_panel(job),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => avx2::product_panel(job),
                _ => portable::product_panel(job),
            }
        }
    }

    /// The Winograd input transform of one task.
    pub(crate) fn winograd_input(self, task: &Task, c: usize, src: Mat, v: &mut [f32]) {
        // SAFETY: as in `product_panel`.
        unsafe {
            match self.isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => avx512::winograd_input(task, c, src, v),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => avx2::winograd_input(task, c, src, v),
                _ => portable::winograd_input(task, c, src, v),
            }
        }
    }

    /// The Winograd output transform of one task.
    pub(crate) fn winograd_output(
        self,
        task: &Task,
        c: usize,
        m: &[f32],
        out: (&mut [f32], usize),
    ) {
        // SAFETY: as in `product_panel`.
        unsafe {
            match self.isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => avx512::winograd_output(task, c, m, out),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => avx2::winograd_output(task, c, m, out),
                _ => portable::winograd_output(task, c, m, out),
            }
        }
    }

    /// `store(dst[i], affine(src[i]))` over the map's channels.
    #[inline]
    pub(crate) fn affine(
        self,
        map: &Affine,
        src: &[f32],
        dst: &mut [f32],
        store: impl Fn(&mut f32, f32),
    ) {
        // SAFETY: as in `product_panel`.
        unsafe {
            match self.isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => avx512::affine(map, src, dst, store),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => avx2::affine(map, src, dst, store),
                _ => map.each(src, dst, store),
            }
        }
    }
}

/// One step of a product over values of `T`, for a vector of f32 accumulators: an f32 per row
/// and column (every instruction set), or a pair of bf16 values (AVX-512 BF16).
pub(crate) trait Dot<T>: Simd {
    /// A vector of the panel's values for `LANES` columns.
    type Operand: Copy;
    /// # Safety
    /// `p..p + LANES` must be readable.
    unsafe fn load_operand(p: *const T) -> Self::Operand;
    /// One row's value, for every column.
    fn splat_operand(x: T) -> Self::Operand;
    /// `self + a·b`, summed over each lane's values.
    fn dot(self, a: Self::Operand, b: Self::Operand) -> Self;
}

impl<S: Simd> Dot<f32> for S {
    type Operand = S;
    #[inline(always)]
    unsafe fn load_operand(p: *const f32) -> S {
        S::load(p)
    }
    #[inline(always)]
    fn splat_operand(x: f32) -> S {
        S::splat(x)
    }
    #[inline(always)]
    fn dot(self, a: S, b: S) -> S {
        a.mul_add(b, self)
    }
}

/// A vector of f32 lanes: the vocabulary in which the product and the transforms are written,
/// once for every instruction set.
///
/// Arithmetic is safe to call: values of an instruction set's vector type are only made inside
/// that instruction set's entry points, which run on CPUs that have it (see [`Kernels`]).
pub(crate) trait Simd: Copy {
    /// f32 values per vector.
    const LANES: usize;
    fn zero() -> Self;
    fn splat(x: f32) -> Self;
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
        self.mul_add(Self::splat(k), o)
    }

    /// The first `live` values from `p` (all lanes when `live ≥ LANES`), the others zero.
    /// # Safety
    /// `p..p + live.min(LANES)` must be readable.
    #[inline(always)]
    unsafe fn load_upto(p: *const f32, live: usize) -> Self {
        if live >= Self::LANES {
            Self::load(p)
        } else {
            Self::load_first(p, live)
        }
    }

    /// The first `live` lanes to `p` (all lanes when `live ≥ LANES`).
    /// # Safety
    /// `p..p + live.min(LANES)` must be writable.
    #[inline(always)]
    unsafe fn store_upto(self, p: *mut f32, live: usize) {
        if live >= Self::LANES {
            self.store(p)
        } else {
            self.store_first(p, live)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_are_refused() {
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
            assert_eq!(isa.name().to_uppercase().parse::<Isa>().unwrap(), isa);
        }
        let err = "sse9".parse::<Isa>().unwrap_err();
        assert!(matches!(err, Error::Isa { .. }), "{err}");
        assert!(err.to_string().contains("sse9"), "{err}");
    }

    #[test]
    fn capping_never_exceeds_what_the_cpu_runs() {
        for isa in Isa::ALL {
            let capped = isa.capped();
            assert!(capped <= isa && capped.is_supported());
            assert_eq!(Kernels::new(isa).is_some(), isa.is_supported());
        }
        assert_eq!(Isa::Portable.capped(), Isa::Portable);
        let choice = IsaChoice {
            requested: Some(Isa::Avx512),
            isa: Isa::Avx2,
        };
        assert!(choice.is_capped_by_cpu());
    }
}
