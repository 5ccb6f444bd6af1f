//! Choosing where the network runs: `auto`, `cpu`, `cuda[:N]` or `metal`, at run time.

use candle_core::{DType, Device, Tensor};
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A device as a user names it.
///
/// ```
/// use densenet::DeviceSpec;
/// assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
/// assert_eq!("cpu".parse::<DeviceSpec>().unwrap().device().unwrap().is_cpu(), true);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA if compiled in and a GPU answers, else Metal likewise, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA GPU with this ordinal.
    Cuda(usize),
    /// The default Metal GPU.
    Metal,
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Device {
            device: s.to_string(),
            reason: reason.to_string(),
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            "metal" => Ok(Self::Metal),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(Self::Cuda)
                    .map_err(|_| bad("the GPU ordinal after `cuda:` must be a number")),
                None => Err(bad("expected auto, cpu, cuda, cuda:N or metal")),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal => f.write_str("metal"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. A backend that was not compiled in is an error naming the Cargo feature
    /// to build with; a GPU that cannot be opened is an error carrying the driver's message.
    pub fn device(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(Self::Cuda(0)
                .device()
                .or_else(|_| Self::Metal.device())
                .unwrap_or(Device::Cpu)),
            Self::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(self.not_compiled("cuda"));
                }
                self.open(|| Device::new_cuda(n))
            }
            Self::Metal => {
                if !candle_core::utils::metal_is_available() {
                    return Err(self.not_compiled("metal"));
                }
                self.open(|| Device::new_metal(0))
            }
        }
    }

    fn not_compiled(self, feature: &str) -> Error {
        Error::Device {
            device: self.to_string(),
            reason: format!(
                "this build has no {feature} support; rebuild with `cargo build --release --features {feature}`"
            ),
        }
    }

    /// Opens a GPU, turning a panic inside the driver bindings (cudarc panics when `libcuda` is
    /// missing) into an error.
    fn open(self, f: impl FnOnce() -> candle_core::Result<Device>) -> Result<Device> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        std::panic::set_hook(previous);
        let reason = match outcome {
            Ok(Ok(device)) => return Ok(device),
            // The driver's message alone: Candle may attach a backtrace, not for users' eyes.
            Ok(Err(candle_core::Error::WithBacktrace { inner, .. })) => inner.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the GPU driver failed".to_string()),
        };
        Err(Error::Device {
            device: self.to_string(),
            reason,
        })
    }
}

/// The backends this build can use, for `--version` and error messages.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = vec!["cpu"];
    if candle_core::utils::cuda_is_available() {
        v.push("cuda");
    }
    if candle_core::utils::metal_is_available() {
        v.push("metal");
    }
    v
}

/// Parses a compute dtype as users write it: `f32`, `f16` or `bf16`.
///
/// ```
/// assert_eq!(densenet::device::parse_dtype("bf16").unwrap(), candle_core::DType::BF16);
/// assert!(densenet::device::parse_dtype("int8").is_err());
/// ```
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(Error::InvalidConfig(format!(
            "compute dtype `{s}`: expected f32, f16 or bf16"
        ))),
    }
}

/// What a model computes in, as `--precision` takes it: a float dtype (F32 everywhere, BF16 on
/// the CPU with AVX-512 BF16 and on GPUs, F16 on GPUs), or 8-bit integers (the CPU with AVX2
/// or AVX-512 VNNI; see [`crate::fast::Precision::Int8`]).
///
/// ```
/// use densenet::device::Compute;
/// assert_eq!("int8".parse::<Compute>()?, Compute::Int8);
/// assert_eq!("bf16".parse::<Compute>()?, Compute::Float(candle_core::DType::BF16));
/// assert_eq!(Compute::from(candle_core::DType::F32).to_string(), "f32");
/// assert!("int4".parse::<Compute>().is_err());
/// # Ok::<(), densenet::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    /// A float dtype.
    Float(DType),
    /// 8-bit integer products (the CPU only).
    Int8,
}

impl From<DType> for Compute {
    fn from(dtype: DType) -> Self {
        Compute::Float(dtype)
    }
}

impl FromStr for Compute {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "int8" | "i8" => Ok(Compute::Int8),
            _ => parse_dtype(s).map(Compute::Float).map_err(|_| {
                Error::InvalidConfig(format!(
                    "compute precision `{s}`: expected f32, f16, bf16 or int8"
                ))
            }),
        }
    }
}

impl fmt::Display for Compute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compute::Float(dtype) => write!(f, "{}", format!("{dtype:?}").to_lowercase()),
            Compute::Int8 => f.write_str("int8"),
        }
    }
}

/// Parses a compute precision as users write it (see [`Compute`]), for `--precision`.
///
/// ```
/// use densenet::device::{parse_precision, Compute};
/// assert_eq!(parse_precision("int8").unwrap(), Compute::Int8);
/// ```
pub fn parse_precision(s: &str) -> Result<Compute> {
    s.parse()
}

/// A tensor's values on the host, flattened, as f32 (copied from the device, converted).
pub(crate) fn host_values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
}
