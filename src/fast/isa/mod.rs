//! Instruction sets: what this CPU runs ([`Isa::is_supported`], [`Precision::is_native`]), the
//! one policy that chooses the kernels for a request ([`resolve`]), and the one dispatch to them
//! ([`Kernels`]).
//!
//! Each instruction set has a module of its own, holding its vector type (an implementation of
//! `ukernel::Simd`) and its entry points, each a micro-kernel of `ukernel/` compiled for it:
//! - `portable`: plain Rust over four-lane arrays, for every CPU;
//! - `avx2`: AVX2 with FMA;
//! - `avx2_int8`: int8 products and quantisation with AVX2's `vpmaddubsw` (no VNNI);
//! - `avx_vnni`: int8 products with AVX-VNNI's 256-bit `vpdpbusd` (AVX2 kernels, no AVX-512);
//! - `avx512`: AVX-512F (f32), and the lane masks the other AVX-512 modules share;
//! - `avx512_bf16`: bf16 products with AVX-512 BF16;
//! - `avx512_vnni`: int8 products, quantisation and the int8 3×3 convolution with AVX-512 VNNI;
//! - `amx`: bf16 and int8 products and the int8 3×3 convolution on AMX tiles;
//! - `neon`: NEON on 64-bit Arm (f32; bf16 and int8 fall back to f32 there);
//! - `wasm_simd128`: WebAssembly's 128-bit SIMD, in a module built with it (f32).
//!
//! These modules import `ukernel/` and `mat.rs` only, never the drivers of `ops/` that call
//! them; the drivers never test CPU features themselves: they receive a [`Kernels`].

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_int8;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_bf16;
#[cfg(target_arch = "x86_64")]
mod avx512_vnni;
#[cfg(target_arch = "x86_64")]
mod avx_vnni;
#[cfg(target_arch = "aarch64")]
mod neon;
mod portable;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm_simd128;

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::fast::mat::{Affine, Mat};
use crate::fast::ukernel::direct::TapJob;
use crate::fast::ukernel::gemm::PanelJob;
use crate::fast::ukernel::reduced::{
    Format, INPUT_LEVELS, INT8_LEVELS, PAIRED_INPUT_LEVELS, PAIRED_INT8_LEVELS,
};
use crate::fast::ukernel::winograd::Task;

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

/// An instruction set the fast path has kernels for: portable ones for every CPU, and those of
/// one architecture each (NEON on 64-bit Arm; AVX2 and AVX-512 on x86-64; simd128 in
/// WebAssembly), which a CPU of another never runs. Within an architecture each set needs all that the one before it needs.
///
/// ```
/// use densenet::fast::Isa;
/// let isa: Isa = "avx2".parse()?;
/// assert_eq!(isa.to_string(), "avx2");
/// assert!(Isa::Portable.is_supported());
/// assert!(Isa::best().is_supported());
/// // x86-64 and 64-bit Arm have no instruction set in common but the portable one.
/// assert!(!(Isa::Neon.is_supported() && Isa::Avx2.is_supported()));
/// # Ok::<(), densenet::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust over four-lane arrays: the compiler's baseline vectors (SSE2 on x86-64, NEON
    /// on 64-bit Arm). Runs on every CPU.
    Portable,
    /// NEON on 64-bit Arm: 4-lane vectors in 32 registers, with fused multiply-adds and
    /// products by one lane (every 64-bit Arm CPU has it).
    Neon,
    /// WebAssembly's 128-bit SIMD: 4-lane vectors, in a module built with it (every browser
    /// since 2021 runs it); with relaxed SIMD in the build, fused multiply-adds.
    Simd128,
    /// AVX2 with FMA: 8-lane vectors in 16 registers (Intel since Haswell, AMD since Zen).
    Avx2,
    /// AVX-512F: 16-lane vectors in 32 registers.
    Avx512,
}

impl Isa {
    /// Every instruction set: the portable one, then each architecture's, least capable first.
    pub const ALL: [Isa; 5] = [
        Isa::Portable,
        Isa::Simd128,
        Isa::Neon,
        Isa::Avx2,
        Isa::Avx512,
    ];

    /// The name used by [`ISA_VARIABLE`] and `densenet system`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Neon => "neon",
            Isa::Simd128 => "simd128",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the instruction set's kernels.
    pub fn is_supported(self) -> bool {
        let cpu = CpuFeatures::detect();
        match self {
            Isa::Portable => true,
            Isa::Neon => cpu.neon,
            Isa::Simd128 => cpu.simd128,
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

    /// This instruction set, or the best the CPU runs if it lacks this one (within an
    /// architecture, what it lacks is more capable than what it has).
    pub fn capped(self) -> Isa {
        match self.is_supported() {
            true => self,
            false => Isa::best(),
        }
    }

    /// The names [`FromStr`] takes, most capable first: "avx512, avx2, neon, simd128 or portable".
    fn names() -> String {
        let mut names: Vec<&str> = Isa::ALL.into_iter().rev().map(Isa::name).collect();
        let last = names.pop().unwrap_or_default();
        format!("{} or {last}", names.join(", "))
    }

    /// What [`ISA_VARIABLE`] asks for: unset or empty is the best this CPU runs; an unknown value
    /// is an [`Error::Isa`].
    pub fn from_env() -> Result<IsaChoice> {
        let value = std::env::var(ISA_VARIABLE).unwrap_or_default();
        let requested = match value.trim() {
            "" => None,
            v => Some(v.parse::<Isa>().map_err(|_| Error::Isa {
                value: value.clone(),
                reason: format!("{ISA_VARIABLE} expects {}", Isa::names()),
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
                reason: format!("expected {}", Isa::names()),
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
/// assert_eq!(Precision::Int8.is_native(Isa::Avx2), Isa::Avx2.is_supported());
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
    /// The convolutions of the dense layers and the transitions in 8-bit integers: their
    /// weights quantised once at load, symmetric per output channel (int8, ±127; ±63 on AVX2,
    /// whose `vpmaddubsw` sums pairs of products in 16 bits); their inputs as uint8 levels with
    /// a static step per channel from the BatchNorm before them (no calibration data: its
    /// weight γ and bias β give the range, 0..β + 8·|γ| after a ReLU, β ± 8·|γ| around a zero
    /// point without one; the steps are folded into the maps and the weights), written as
    /// they are gathered or by the previous product's epilogue (a 3×3 convolution's input, a
    /// bordered uint8 grid it runs over tap by tap); products accumulated exactly in i32
    /// (AVX-512 VNNI's `vpdpbusd`, AMX-INT8 tiles, AVX-VNNI's 256-bit `vpdpbusd`, or AVX2's
    /// `vpmaddubsw` and `vpmaddwd`) and scaled back to f32 as they leave the registers. With AVX2 the 3×3 convolutions run by
    /// Winograd's method in the float part instead. The stem computes in bf16 where the CPU
    /// has it, else in f32; the classifier in f32.
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
    /// BF16 and the AVX-512 kernels, int8 the AVX2 or AVX-512 kernels (with AVX-512 VNNI or
    /// AMX-INT8 where the CPU has them and the kernels are AVX-512 ones, else with AVX-VNNI
    /// where it has that, else with AVX2's instructions).
    pub fn is_native(self, isa: Isa) -> bool {
        let cpu = CpuFeatures::detect();
        match self {
            Precision::F32 => isa.is_supported(),
            Precision::Bf16 => isa == Isa::Avx512 && isa.is_supported() && cpu.avx512_bf16,
            Precision::Int8 => matches!(isa, Isa::Avx2 | Isa::Avx512) && isa.is_supported(),
        }
    }

    /// The precision that runs when this one is asked of the kernels of `isa`: itself where it
    /// is native, else the next one down that is (int8, then bf16, then f32). The policy of
    /// [`resolve`].
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
    /// and the 3×3 convolutions with AVX2): bf16 where native to `isa`, else f32. Itself for
    /// f32 and bf16.
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
    /// Whether the CPU lacks what was asked for (so another set runs: the best it has).
    pub fn is_capped_by_cpu(&self) -> bool {
        self.requested.is_some_and(|r| r != self.isa)
    }
}

/// What the fast path runs for a request, chosen once by [`resolve`]: the kernels of one
/// instruction set in one precision, and what was asked for, so that what fell back can be told
/// ([`Resolved::fallbacks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    kernels: Kernels,
    requested: Option<Isa>,
    asked: Precision,
}

/// Chooses the kernels for a request: the instruction set `requested` (as [`ISA_VARIABLE`] gives
/// it; `None` for the best this CPU runs) or the best this CPU runs if it lacks that one, and the
/// precision `asked`, or the next one down that is native there ([`Precision::fallback`]); on
/// AMX tiles where the CPU has them and [`AMX_VARIABLE`] allows. The whole fallback policy of the
/// fast path, in one place: nothing is printed, what fell back is told by
/// [`Resolved::fallbacks`].
///
/// ```
/// use densenet::fast::{resolve, Isa, Precision};
/// let resolved = resolve(Some(Isa::Portable), Precision::Int8);
/// assert_eq!((resolved.isa(), resolved.precision()), (Isa::Portable, Precision::F32));
/// assert_eq!(resolved.fallbacks().len(), 1);
/// ```
pub fn resolve(requested: Option<Isa>, asked: Precision) -> Resolved {
    let isa = requested.map_or_else(Isa::best, Isa::capped);
    let kernels = Kernels::with_precision(isa, asked.fallback(isa))
        .expect("a fallback precision is native to an instruction set this CPU runs");
    Resolved {
        kernels,
        requested,
        asked,
    }
}

impl Resolved {
    /// The instruction set that runs.
    pub fn isa(&self) -> Isa {
        self.kernels.isa
    }

    /// The precision that runs.
    pub fn precision(&self) -> Precision {
        self.kernels.precision
    }

    /// The precision asked for.
    pub fn asked(&self) -> Precision {
        self.asked
    }

    /// The instruction set asked for, if any (see [`resolve`]).
    pub fn requested(&self) -> Option<Isa> {
        self.requested
    }

    pub(crate) fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// What runs other than as asked, and why: empty when the request runs as it is.
    pub fn fallbacks(&self) -> Vec<Fallback> {
        let mut fallbacks = Vec::new();
        if let Some(requested) = self.requested.filter(|&r| r != self.isa()) {
            fallbacks.push(Fallback::Isa {
                requested,
                runs: self.isa(),
            });
        }
        if self.precision() != self.asked {
            let cpu = CpuFeatures::detect();
            let (has, feature) = match self.asked {
                Precision::Int8 => (Isa::Avx2.is_supported(), "AVX2"),
                _ => (cpu.avx512_bf16, "AVX-512 BF16"),
            };
            fallbacks.push(Fallback::Precision {
                asked: self.asked,
                runs: self.precision(),
                isa: self.isa(),
                // Off x86-64 no CPU feature would bring these products: the kernels lack them.
                cpu_lacks: (!has && cfg!(target_arch = "x86_64")).then_some(feature),
            });
        }
        fallbacks
    }
}

/// Something the fast path runs other than as asked ([`Resolved::fallbacks`]); its
/// [`Display`](fmt::Display) is the note the binaries print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// [`ISA_VARIABLE`] asked for an instruction set this CPU does not run: `runs` runs.
    Isa {
        /// What was asked for.
        requested: Isa,
        /// What runs: the best this CPU has.
        runs: Isa,
    },
    /// A precision not native to the instruction set that runs: a more exact one runs.
    Precision {
        /// What was asked for.
        asked: Precision,
        /// What runs.
        runs: Precision,
        /// The instruction set that runs.
        isa: Isa,
        /// The CPU feature that the asked precision needs and this CPU lacks; `None` where the
        /// CPU has it but the instruction set that runs (capped) has no such products.
        cpu_lacks: Option<&'static str>,
    },
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fallback::Isa { requested, runs } => write!(
                f,
                "{ISA_VARIABLE}={requested}, but this CPU does not run {requested}: using {runs}"
            ),
            Fallback::Precision {
                asked,
                runs,
                isa,
                cpu_lacks,
            } => {
                match cpu_lacks {
                    Some(feature) => write!(f, "{asked} asked for, but this CPU has no {feature}")?,
                    None => write!(
                        f,
                        "{asked} asked for, but the fast path runs {isa}, which has no {asked} products"
                    )?,
                }
                write!(f, ": computing in {runs} (more exact, not less)")
            }
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
    /// AVX-VNNI: 8-bit integer dot products on 256-bit vectors, without AVX-512.
    pub avx_vnni: bool,
    /// AVX-512 BF16: bfloat16 dot products.
    pub avx512_bf16: bool,
    /// AMX-BF16 (with AMX-TILE): bfloat16 products of whole tiles, where the operating system
    /// allows them.
    pub amx_bf16: bool,
    /// AMX-INT8 (with AMX-TILE): 8-bit integer products of whole tiles, where the operating
    /// system allows them.
    pub amx_int8: bool,
    /// NEON (Advanced SIMD) on 64-bit Arm.
    pub neon: bool,
    /// WebAssembly's 128-bit SIMD, where this module was built with it (a WebAssembly module
    /// cannot test for features as it runs: a browser without them refuses the module).
    pub simd128: bool,
    /// WebAssembly's relaxed SIMD (fused multiply-adds), where this module was built with it.
    pub relaxed_simd: bool,
}

impl CpuFeatures {
    /// This CPU's features (those of another architecture `false`).
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
                avx_vnni: has!("avxvnni"),
                avx512_bf16: has!("avx512bf16"),
                amx_bf16: amx::available(amx::TileKind::Bf16),
                amx_int8: amx::available(amx::TileKind::Int8),
                ..Self::default()
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            Self {
                neon: std::arch::is_aarch64_feature_detected!("neon"),
                ..Self::default()
            }
        }
        #[cfg(target_arch = "wasm32")]
        {
            Self {
                simd128: cfg!(target_feature = "simd128"),
                relaxed_simd: cfg!(target_feature = "relaxed-simd"),
                ..Self::default()
            }
        }
        #[cfg(not(any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "wasm32"
        )))]
        Self::default()
    }

    /// Each feature's name with whether this CPU has it, in a fixed order.
    pub fn list(&self) -> [(&'static str, bool); 13] {
        [
            ("avx2", self.avx2),
            ("fma", self.fma),
            ("avx512f", self.avx512f),
            ("avx512bw", self.avx512bw),
            ("avx512vl", self.avx512vl),
            ("avx512_vnni", self.avx512_vnni),
            ("avx_vnni", self.avx_vnni),
            ("avx512_bf16", self.avx512_bf16),
            ("amx_bf16", self.amx_bf16),
            ("amx_int8", self.amx_int8),
            ("neon", self.neon),
            ("simd128", self.simd128),
            ("relaxed_simd", self.relaxed_simd),
        ]
    }
}

/// How the products of a reduced precision run, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    /// AMX tiles (`tdpbf16ps`, `tdpbusd`).
    Tiles,
    /// AVX-512 dot products (`vdpbf16ps`, `vpdpbusd`).
    Vectors,
    /// int8 only: AVX-VNNI's `vpdpbusd` on 256-bit vectors, with the AVX2 kernels.
    VexDots,
    /// int8 only: AVX2's `vpmaddubsw` (pairs of products summed in 16 bits, hence weights of
    /// ±63 levels) and `vpmaddwd`, on any CPU with AVX2.
    PairSums,
}

/// The kernels of one instruction set that this CPU runs, and the precision of their products:
/// the one dispatch of the fast path.
///
/// Made only by [`resolve`] (and the tests' variants of it), which checks the CPU, so each entry
/// point below may call its instruction set's functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kernels {
    isa: Isa,
    precision: Precision,
    /// How bf16 products run, where this precision has them (bf16, and int8's float part on a
    /// CPU with AVX-512 BF16).
    bf16: Option<Engine>,
    /// How int8 products run, in int8.
    int8: Option<Engine>,
}

impl Kernels {
    /// The f32 kernels of `isa`, if this CPU runs them.
    #[cfg(test)]
    pub(crate) fn new(isa: Isa) -> Option<Self> {
        Self::with_precision(isa, Precision::F32)
    }

    /// The kernels of `isa` with products in `precision`, if this CPU runs them; reduced
    /// precisions run on AMX tiles where the CPU has them and [`AMX_VARIABLE`] allows.
    fn with_precision(isa: Isa, precision: Precision) -> Option<Self> {
        if !precision.is_native(isa) {
            return None;
        }
        let cpu = CpuFeatures::detect();
        let allowed = amx_allowed();
        let engine = |tiles: bool| match tiles && allowed {
            true => Engine::Tiles,
            false => Engine::Vectors,
        };
        let vnni = isa == Isa::Avx512 && cpu.avx512_vnni && cpu.avx512bw;
        Some(Self {
            isa,
            precision,
            bf16: (precision.float_part(isa) == Precision::Bf16).then(|| engine(cpu.amx_bf16)),
            int8: (precision == Precision::Int8).then(|| match (vnni, cpu.avx_vnni) {
                (true, _) => engine(cpu.amx_int8),
                (false, true) => Engine::VexDots,
                (false, false) => Engine::PairSums,
            }),
        })
    }

    /// The kernels of every instruction set this CPU runs (for tests that compare them).
    #[cfg(test)]
    pub(crate) fn all() -> Vec<Self> {
        Isa::ALL.into_iter().filter_map(Self::new).collect()
    }

    /// Every way this CPU runs the products of `precision`: with AVX2's instructions (int8),
    /// with AVX-VNNI (int8), with AVX-512 dot products, and on AMX tiles where it has them (for
    /// tests that compare them).
    #[cfg(test)]
    pub(crate) fn all_in(precision: Precision) -> Vec<Self> {
        let mut all: Vec<Self> = match precision {
            Precision::Int8 => Self::with_precision(Isa::Avx2, precision)
                .into_iter()
                .flat_map(|avx2| {
                    // With AVX-VNNI the AVX2 kernels run it; their pair sums remain for CPUs without.
                    let pairs = Self {
                        int8: Some(Engine::PairSums),
                        ..avx2
                    };
                    [pairs].into_iter().chain((avx2 != pairs).then_some(avx2))
                })
                .collect(),
            _ => Vec::new(),
        };
        let Some(best) = Self::with_precision(Isa::Avx512, precision) else {
            return all;
        };
        if matches!(best.int8, Some(Engine::PairSums | Engine::VexDots)) {
            // The AVX2 kernels, already listed.
            return all;
        }
        let vectors = |engine: Option<Engine>| engine.map(|_| Engine::Vectors);
        let on_vectors = Self {
            bf16: vectors(best.bf16),
            int8: vectors(best.int8),
            ..best
        };
        all.push(on_vectors);
        if best != on_vectors {
            all.push(best);
        }
        all
    }

    /// How a product's weights are stored for these kernels in `precision` (that of the
    /// kernels, or their float part): int8 weights keep ±63 levels and their inputs 127 for
    /// AVX2's pair sums.
    pub(crate) fn format(self, precision: Precision) -> Format {
        match precision {
            Precision::F32 => Format::F32,
            Precision::Bf16 => Format::Bf16,
            Precision::Int8 => match self.int8 {
                Some(Engine::PairSums) => Format::Int8 {
                    levels: PAIRED_INT8_LEVELS,
                    inputs: PAIRED_INPUT_LEVELS,
                },
                _ => Format::Int8 {
                    levels: INT8_LEVELS,
                    inputs: INPUT_LEVELS,
                },
            },
        }
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
}

/// The entry points of the reduced precisions, whose kernels are x86-64's only: elsewhere
/// [`resolve`] never chooses bf16 or int8 products, and these are never reached.
#[cfg_attr(
    not(target_arch = "x86_64"),
    allow(unused_unsafe, unused_variables, dead_code)
)]
impl Kernels {
    /// One panel of a bf16 product (see [`PanelJob`]): its values are bf16 pairs.
    pub(crate) fn product_panel_bf16(self, job: PanelJob<u32>) {
        // SAFETY: `with_precision` checked that the CPU runs AVX-512 BF16 (and AMX-BF16 for
        // tiles); `PanelJob` carries bounds-checked slices.
        unsafe {
            match (self.isa, self.bf16) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(Engine::Tiles)) => amx::product_panel(job),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(Engine::Vectors)) => avx512_bf16::product_panel(job),
                _ => unreachable!("bf16 products with kernels made for {self:?}"),
            }
        }
    }

    /// `src`, through `map` where given, rounded to bf16 pairs (see
    /// [`super::gemm::bf16_pair`]) in `dst`, which holds `src.len().div_ceil(2)` of them; an
    /// odd length is padded with a zero.
    pub(crate) fn round_bf16(self, src: &[f32], map: Option<&Affine>, dst: &mut [u32]) {
        assert_eq!(dst.len(), src.len().div_ceil(2), "round_bf16: lengths");
        if let Some(map) = map {
            assert_eq!(map.channels(), src.len(), "round_bf16: map and row differ");
        }
        // SAFETY: as in `product_panel_bf16`; the lengths are checked above.
        unsafe {
            match (self.isa, self.bf16) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(_)) => avx512_bf16::round(src, map, dst),
                _ => unreachable!("bf16 rounding with kernels made for {self:?}"),
            }
        }
    }

    /// One panel of an int8 product (see [`PanelJob`]): its values are quads of bytes, uint8
    /// on the left, int8 on the right (packed in [`Kernels::format`]).
    pub(crate) fn product_panel_int8(self, job: PanelJob<u32>) {
        // SAFETY: `with_precision` checked that the CPU runs AVX-512 VNNI (and AMX-INT8 for
        // tiles), AVX-VNNI for its dot products, or AVX2 for pair sums; `PanelJob` carries
        // bounds-checked slices.
        unsafe {
            match (self.isa, self.int8) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(Engine::Tiles)) => amx::product_panel_int8(job),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(Engine::Vectors)) => avx512_vnni::product_panel(job),
                #[cfg(target_arch = "x86_64")]
                #[cfg(target_arch = "x86_64")]
                (_, Some(Engine::VexDots)) => avx_vnni::product_panel(job),
                #[cfg(target_arch = "x86_64")]
                (_, Some(Engine::PairSums)) => avx2_int8::product_panel(job),
                _ => unreachable!("int8 products with kernels made for {self:?}"),
            }
        }
    }

    /// Of an int8 product of depth `k` packed in `steps` steps (quads, zero-padded to whole
    /// AMX tiles), the steps its kernel runs: all of them on tiles; up to the last quad with
    /// AVX-512 VNNI and AVX-VNNI, the last pair of quads with AVX2's pair sums (they take two
    /// at a time), the padding past them adding nothing.
    pub(crate) fn int8_steps_run(self, k: usize, steps: usize) -> usize {
        let run = match self.int8 {
            Some(Engine::Tiles) => steps,
            Some(Engine::Vectors | Engine::VexDots) => k.div_ceil(4),
            Some(Engine::PairSums) => k.div_ceil(4).next_multiple_of(2),
            None => unreachable!("int8 steps with kernels made for {self:?}"),
        };
        assert!(run <= steps, "int8_steps_run: more steps than packed");
        run
    }

    /// One row of an int8 product's left-hand side as uint8 levels: `levels(src)` clamped to
    /// the inputs' levels of [`Kernels::format`] and rounded (see `ukernel::reduced::level`),
    /// four to a word of `dst`, the words past them zero.
    pub(crate) fn quantize_u8(self, src: &[f32], levels: &Affine, dst: &mut [u32]) {
        assert!(
            dst.len() >= src.len().div_ceil(4),
            "quantize_u8: dst too short"
        );
        assert_eq!(
            levels.channels(),
            src.len(),
            "quantize_u8: map and row differ"
        );
        // SAFETY: as in `product_panel_int8`; the lengths are checked above.
        unsafe {
            match (self.isa, self.int8) {
                #[cfg(target_arch = "x86_64")]
                (_, Some(Engine::PairSums)) => {
                    avx2_int8::quantize(src, levels, PAIRED_INPUT_LEVELS, dst)
                }
                #[cfg(target_arch = "x86_64")]
                (_, Some(Engine::VexDots)) => avx2_int8::quantize(src, levels, INPUT_LEVELS, dst),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(_)) => avx512_vnni::quantize(src, levels, dst),
                _ => unreachable!("int8 quantisation with kernels made for {self:?}"),
            }
        }
    }

    /// Whether the 3×3 convolutions of int8 run in int8, tap by tap ([`Kernels::direct_int8`]):
    /// with AVX-512 VNNI and on AMX tiles. With AVX2's pair sums Winograd's method in f32 is
    /// faster: measured on an AMD EPYC Zen 3 (CIFAR DenseNet-121, batch 16), its 3×3
    /// convolutions took two thirds of the CPU time of the tap-by-tap int8 kernel, which spends
    /// 9 products per output where F(4×4, 3×3) spends 2.25 at half the rate.
    pub(crate) fn int8_taps(self) -> bool {
        matches!(self.int8, Some(Engine::Tiles | Engine::Vectors))
    }

    /// The outputs of one job of an int8 3×3 convolution (see [`TapJob`]), where
    /// [`Kernels::int8_taps`].
    pub(crate) fn direct_int8(self, job: TapJob) {
        // SAFETY: as in `product_panel_int8`; `TapJob` checks its bounds.
        unsafe {
            match (self.isa, self.int8) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(Engine::Tiles)) => amx::direct_int8(job),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(Engine::Vectors)) => avx512_vnni::direct(job),
                _ => unreachable!("int8 convolutions with kernels made for {self:?}"),
            }
        }
    }

    /// Values already in levels (a product's results through a levels map, see
    /// `ukernel::reduced::level`) as uint8, into `dst`, as long as `x`: the int8 3×3
    /// convolutions' input.
    pub(crate) fn to_levels(self, x: &[f32], dst: &mut [u8]) {
        assert_eq!(x.len(), dst.len(), "to_levels: lengths");
        // SAFETY: as in `product_panel_int8`; the lengths are checked above.
        unsafe {
            match (self.isa, self.int8) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, Some(_)) => avx512_vnni::to_levels(x, dst),
                _ => unreachable!("int8 levels with kernels made for {self:?}"),
            }
        }
    }
}

impl Kernels {
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
                #[cfg(target_arch = "aarch64")]
                Isa::Neon => neon::product_panel(job),
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                Isa::Simd128 => wasm_simd128::product_panel(job),
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
                #[cfg(target_arch = "aarch64")]
                Isa::Neon => neon::winograd_input(task, c, src, v),
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                Isa::Simd128 => wasm_simd128::winograd_input(task, c, src, v),
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
                #[cfg(target_arch = "aarch64")]
                Isa::Neon => neon::winograd_output(task, c, m, out),
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                Isa::Simd128 => wasm_simd128::winograd_output(task, c, m, out),
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
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `product_panel`.
            Isa::Avx512 => unsafe { avx512::affine(map, src, dst, store) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `product_panel`.
            Isa::Avx2 => unsafe { avx2::affine(map, src, dst, store) },
            // Portable, NEON and simd128: the compiler's vectors (SSE2, NEON or simd128) suffice.
            _ => map.each(src, dst, store),
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
            assert!(capped.is_supported());
            assert_eq!(capped == isa, isa.is_supported());
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
