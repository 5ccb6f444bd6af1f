//! [`Model`]: a loaded network with its preprocessing and labels, and its predictions.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::config::{Config, ModelInfo, Preprocessing};
use crate::device::host_values;
use crate::device::Compute;
use crate::error::{Error, Result};
use crate::fast::{resolve, Fallback, FastNet, Isa, Precision};
use crate::network::DenseNet;
use crate::weights::{self, TensorKind};

/// How many classes [`Model::predict`] reports per image.
pub const DEFAULT_TOP_K: usize = 5;

/// The largest magnitude [`Model::predict`] accepts in its input.
///
/// A normalised image lies within about ±5 (`(0 - mean) / std` and `(1 - mean) / std`). Values near
/// `f32::MAX` overflow inside the network, and ReLU turns the resulting NaN into zeros, which
/// would give a confident answer to garbage.
pub const MAX_INPUT_ABS: f64 = 1e6;

/// A DenseNet classifier ready to predict.
///
/// `Model` is `Send + Sync`: share one across threads behind an `Arc`.
///
/// ```no_run
/// use densenet::Model;
/// let model = Model::load("weights/densenet121_cifar100.safetensors")?;
/// let image = model.preprocessing().load("cat.png".as_ref(), model.device())?;
/// let prediction = &model.predict(&image)?[0];
/// println!("{} ({:.1}%)", prediction.top_k[0].label, 100.0 * prediction.top_k[0].probability);
/// # Ok::<(), densenet::Error>(())
/// ```
pub struct Model {
    info: ModelInfo,
    /// The device the weights live on.
    device: Device,
    /// The plain network and its weights; built on first use where `file` is given.
    plain: OnceLock<Plain>,
    /// Where a CPU model loaded from a file gets its plain network back: the fast path holds
    /// the weights, packed, and the file's own tensors are not kept twice in memory.
    file: Option<SourceFile>,
    backend: Backend,
}

/// What computes the logits: the CPU's plan, or the plain network on another device.
enum Backend {
    /// On the CPU: the fast path (the plain network, in f32, is the reference and the other
    /// path).
    Cpu {
        // Boxed: the plan is large beside the other variant.
        fast: Box<FastNet>,
        /// Which of the two paths [`Model::logits`] takes.
        path: ComputePath,
    },
    /// On CUDA or Metal: the plain network, in its dtype.
    Device { dtype: DType },
}

/// The plain candle-nn network and the weights it was built from.
struct Plain {
    network: DenseNet,
    vb: VarBuilder<'static>,
}

/// A weights file as it was when loaded: its size and modification time.
struct SourceFile {
    file: PathBuf,
    stamp: (u64, Option<SystemTime>),
}

impl SourceFile {
    fn stamp(path: &Path) -> Result<(u64, Option<SystemTime>)> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        Ok((meta.len(), meta.modified().ok()))
    }

    /// The plain network, read again from the file, which must not have changed.
    fn plain(&self, info: &ModelInfo, device: &Device) -> Result<Plain> {
        let changed = || Error::ChangedSinceLoad {
            path: self.file.clone(),
        };
        if Self::stamp(&self.file)? != self.stamp {
            return Err(changed());
        }
        let checkpoint = weights::Checkpoint::open(&self.file)?;
        if checkpoint.info.config != info.config {
            return Err(changed());
        }
        let vb = VarBuilder::from_tensors(checkpoint.tensors(device)?, DType::F32, device);
        Ok(Plain {
            network: DenseNet::new(&info.config, vb.clone())?,
            vb,
        })
    }
}

/// Which implementation computes the logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputePath {
    /// The fused CPU kernels of [`crate::fast`]: the default on the CPU.
    Fast,
    /// The plain candle-nn layers of [`crate::network`]: the reference, and the path on CUDA
    /// and Metal.
    Plain,
}

// `Model` is shared across threads (see its documentation): a change that loses `Send + Sync`
// must fail to compile here rather than in users' code.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
};

/// One class among an image's most probable ones.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TopK {
    /// The class index.
    pub index: usize,
    /// The class name.
    pub label: String,
    /// Its softmax probability.
    pub probability: f32,
}

/// The model's answer for one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Raw scores, one per class.
    pub logits: Vec<f32>,
    /// Softmax of the logits.
    pub probabilities: Vec<f32>,
    /// The most probable classes, most probable first.
    pub top_k: Vec<TopK>,
}

impl Model {
    /// Loads a weights file on the CPU. See [`Model::load_on`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_on(path, &Device::Cpu)
    }

    /// Loads a weights file onto `device`: safetensors, or a PyTorch checkpoint (`.pth`, `.pt`,
    /// `.bin`, recognised by its content), in any naming family of [`weights::naming::Family`].
    ///
    /// A safetensors file's `__metadata__` names the architecture, labels and preprocessing; a
    /// file without it is recognised from its tensor names and shapes, with its family's
    /// preprocessing and labels (ImageNet for torchvision's ImageNet DenseNets, CIFAR-100
    /// otherwise).
    /// Weights stored as F16, BF16, F32 or F64 are converted to F32. Every tensor is checked
    /// before the network is built: a missing, misshapen, non-float or unexpected tensor is an
    /// error naming it.
    ///
    /// On the CPU the weights are kept once, packed for the fast path; the plain network
    /// ([`Model::network`], [`Model::logits_reference`], [`Model::save`],
    /// [`ComputePath::Plain`]) is read again from the file when first needed, and that fails
    /// with [`Error::ChangedSinceLoad`] if the file has changed meanwhile.
    pub fn load_on(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_in(path, device, DType::F32)
    }

    /// As [`Model::load_on`], computing in `dtype` (a [`DType`] or a [`Compute`]; see
    /// [`Model::with_dtype`]). On the CPU the weights are packed once, straight in that
    /// precision: loading in f32 and converting would hold both copies for a while.
    pub fn load_in(
        path: impl AsRef<Path>,
        device: &Device,
        dtype: impl Into<Compute>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let stamp = SourceFile::stamp(path)?;
        let file = SourceFile {
            file: path.to_path_buf(),
            stamp,
        };
        Self::from_checkpoint(weights::Checkpoint::open(path)?, device, dtype, Some(file))
    }

    /// A model from the bytes of a weights file, on the CPU, computing in `dtype` (see
    /// [`Model::load_in`]); `name` only names it in errors. For callers with no file system (a
    /// browser) or with the file already in memory.
    ///
    /// The bytes are not kept: such a model has the fast path only, so [`Model::network`],
    /// [`Model::logits_reference`], [`Model::save`] and [`Model::set_isa`] are errors on it;
    /// prediction and class activation maps work as on any CPU model.
    pub fn from_bytes(name: &str, bytes: &[u8], dtype: impl Into<Compute>) -> Result<Self> {
        let checkpoint = weights::Checkpoint::from_bytes(Path::new(name), bytes)?;
        Self::from_checkpoint(checkpoint, &Device::Cpu, dtype, None)
    }

    fn from_checkpoint(
        checkpoint: weights::Checkpoint,
        device: &Device,
        dtype: impl Into<Compute>,
        file: Option<SourceFile>,
    ) -> Result<Self> {
        let dtype = dtype.into();
        let (tensors, info) = (checkpoint.tensors(device)?, checkpoint.info.clone());
        drop(checkpoint);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        if !device.is_cpu() {
            return Self::from_varbuilder(vb, info)?.with_dtype(dtype);
        }
        check(&info)?;
        let resolved = resolve(Isa::from_env()?.requested, cpu_precision(dtype)?);
        // The VarBuilder goes with the network, which the compilation consumes layer by layer:
        // each file tensor is freed once packed.
        let network = DenseNet::new(&info.config, vb)?;
        Ok(Self {
            info,
            device: device.clone(),
            plain: OnceLock::new(),
            file,
            backend: Backend::Cpu {
                fast: Box::new(FastNet::compile(network, resolved)?),
                path: ComputePath::Fast,
            },
        })
    }

    /// Builds a model from any [`VarBuilder`] whose paths are the PyTorch state_dict names.
    pub fn from_varbuilder(vb: VarBuilder<'static>, info: ModelInfo) -> Result<Self> {
        check(&info)?;
        let device = vb.device().clone();
        // On the CPU the plain network is the f32 reference.
        let vb = match device.is_cpu() {
            true => vb.set_dtype(DType::F32),
            false => vb,
        };
        let network = DenseNet::new(&info.config, vb.clone())?;
        let backend = match device.is_cpu() {
            true => {
                let resolved = resolve(Isa::from_env()?.requested, Precision::F32);
                Backend::Cpu {
                    fast: Box::new(FastNet::compile(network.clone(), resolved)?),
                    path: ComputePath::Fast,
                }
            }
            false => Backend::Device { dtype: vb.dtype() },
        };
        Ok(Self {
            info,
            device,
            plain: OnceLock::from(Plain { network, vb }),
            file: None,
            backend,
        })
    }

    /// The plain network and its weights, read again from the file on first use.
    fn plain(&self) -> Result<&Plain> {
        if let Some(plain) = self.plain.get() {
            return Ok(plain);
        }
        let file = self.file.as_ref().ok_or_else(|| {
            Error::InvalidConfig(
                "the model was loaded from bytes and keeps no plain network: load it from a file \
                 for the reference path"
                    .into(),
            )
        })?;
        // Two threads may both read the file; the first to finish wins.
        let _ = self.plain.set(file.plain(&self.info, &self.device)?);
        Ok(self.plain.get().expect("set just above"))
    }

    /// A model of `info.config` with the deterministic [`weights::synthetic`] weights, for
    /// benchmarks and device checks (its predictions mean nothing).
    ///
    /// ```
    /// use densenet::{Config, Model, ModelInfo, Preprocessing};
    /// let info = ModelInfo {
    ///     config: Config::densenet121(100),
    ///     preprocessing: Preprocessing::cifar100(),
    ///     labels: densenet::labels::default_labels(100),
    /// };
    /// let model = Model::synthetic(info, &candle_core::Device::Cpu)?;
    /// assert_eq!(model.labels()[0], "apple");
    /// # Ok::<(), densenet::Error>(())
    /// ```
    pub fn synthetic(info: ModelInfo, device: &Device) -> Result<Self> {
        let tensors = weights::synthetic::state_dict(&info.config, device)?;
        Self::from_varbuilder(VarBuilder::from_tensors(tensors, DType::F32, device), info)
    }

    /// The same model computing in `dtype` (a [`DType`] or a [`Compute`]): F32, F16 or BF16 on
    /// CUDA and Metal (the weights converted); F32, BF16 or int8 on the CPU.
    ///
    /// On the CPU, BF16 packs the fast path's weights as bfloat16 and rounds the products'
    /// inputs to it, accumulating in f32 (AVX-512 BF16; see [`Precision::Bf16`]); int8
    /// quantises the weights and inputs of the dense layers' and the transitions' convolutions
    /// to 8 bits, the inputs' ranges from the BatchNorm statistics in the file (AVX-512 VNNI,
    /// or AVX2; see [`Precision::Int8`]). A CPU without them (or with `DENSENET_CPU_ISA`
    /// capped below them) computes in the next precision it has (int8 falls back to bf16, then
    /// f32), which is more exact; [`Model::compute`] tells which runs and [`Model::fallbacks`] why. F16 is
    /// refused on the CPU, int8 elsewhere. The plain network ([`Model::logits_reference`])
    /// stays F32.
    ///
    /// ```
    /// use candle_core::DType;
    /// use densenet::{Config, Model, ModelInfo, Preprocessing};
    /// let info = ModelInfo {
    ///     config: Config::densenet_bc100(100),
    ///     preprocessing: Preprocessing::cifar100(),
    ///     labels: densenet::labels::default_labels(100),
    /// };
    /// let model = Model::synthetic(info, &candle_core::Device::Cpu)?.with_dtype(DType::BF16)?;
    /// assert!(matches!(model.dtype(), DType::BF16 | DType::F32));
    /// # Ok::<(), densenet::Error>(())
    /// ```
    pub fn with_dtype(mut self, dtype: impl Into<Compute>) -> Result<Self> {
        let compute = dtype.into();
        if let Compute::Float(dtype) = compute {
            if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
                return Err(Error::InvalidConfig(format!(
                    "compute dtype {dtype:?}: expected f32, f16 or bf16"
                )));
            }
        }
        if let Backend::Cpu { fast, .. } = &mut self.backend {
            // The instruction set stays as it was asked for (DENSENET_CPU_ISA or set_isa).
            let resolved = resolve(fast.resolved().requested(), cpu_precision(compute)?);
            if resolved.kernels() == fast.resolved().kernels() {
                fast.answer(resolved);
                return Ok(self);
            }
            let compiled = FastNet::compile(self.network()?.clone(), resolved)?;
            if let Backend::Cpu { fast, .. } = &mut self.backend {
                **fast = compiled;
            }
            // Read again from the file when next needed, rather than kept beside the packed
            // weights.
            if self.file.is_some() {
                self.plain = OnceLock::new();
            }
            return Ok(self);
        }
        let dtype = match compute {
            Compute::Float(dtype) => dtype,
            Compute::Int8 => {
                return Err(Error::Device {
                    device: format!("{:?}", self.device),
                    reason: "int8 computes on the CPU's fast path only".into(),
                })
            }
        };
        if Compute::Float(dtype) == self.compute() {
            return Ok(self);
        }
        let vb = self.plain()?.vb.clone().set_dtype(dtype);
        Self::from_varbuilder(vb, self.info)
    }

    /// The float dtype [`Model::logits`] computes in: on the CPU's fast path, its precision
    /// (F32, or BF16 where [`Model::with_dtype`] asked for it and the CPU has it; in int8, the
    /// dtype of the products it leaves in floating point); else the plain network's (F32
    /// unless [`Model::with_dtype`] chose another).
    pub fn dtype(&self) -> DType {
        match self.compute() {
            Compute::Float(dtype) => dtype,
            Compute::Int8 => match &self.backend {
                Backend::Cpu { fast, .. } if fast.float_precision() == Precision::Bf16 => {
                    DType::BF16
                }
                _ => DType::F32,
            },
        }
    }

    /// What [`Model::logits`] computes in: int8 where [`Model::with_dtype`] asked for it and
    /// the CPU has it, else the float dtype of [`Model::dtype`].
    ///
    /// ```
    /// use densenet::device::Compute;
    /// use densenet::{Config, Model, ModelInfo, Preprocessing};
    /// let info = ModelInfo {
    ///     config: Config::densenet_bc100(100),
    ///     preprocessing: Preprocessing::cifar100(),
    ///     labels: densenet::labels::default_labels(100),
    /// };
    /// let model = Model::synthetic(info, &candle_core::Device::Cpu)?.with_dtype(Compute::Int8)?;
    /// println!("computing in {}", model.compute());
    /// # Ok::<(), densenet::Error>(())
    /// ```
    pub fn compute(&self) -> Compute {
        match &self.backend {
            Backend::Cpu {
                fast,
                path: ComputePath::Fast,
            } => match fast.precision() {
                Precision::F32 => Compute::Float(DType::F32),
                Precision::Bf16 => Compute::Float(DType::BF16),
                Precision::Int8 => Compute::Int8,
            },
            Backend::Cpu { .. } => Compute::Float(DType::F32),
            Backend::Device { dtype } => Compute::Float(*dtype),
        }
    }

    /// What the fast path runs other than as asked (the instruction set `DENSENET_CPU_ISA`
    /// named, the precision [`Model::with_dtype`] asked for), and why: empty where it runs as
    /// asked, and off the CPU. The library prints nothing; the binaries print these as notes.
    pub fn fallbacks(&self) -> Vec<Fallback> {
        match &self.backend {
            Backend::Cpu { fast, .. } => fast.resolved().fallbacks(),
            Backend::Device { .. } => Vec::new(),
        }
    }

    /// Writes the weights (in the compute dtype, PyTorch state_dict names, `num_batches_tracked` included) and
    /// the metadata that makes the file self-describing. The file is written to a temporary
    /// name and renamed into place; an existing file is replaced only with `overwrite`.
    pub fn save(&self, path: impl AsRef<Path>, overwrite: bool) -> Result<()> {
        let vb = &self.plain()?.vb;
        let mut tensors = Vec::new();
        for spec in weights::state_dict_spec(&self.info.config)? {
            let t = match spec.kind {
                TensorKind::Counter => Tensor::zeros((), DType::I64, &Device::Cpu)?,
                _ => vb.get(spec.shape.as_slice(), &spec.name)?,
            };
            tensors.push((spec.name, t));
        }
        weights::write_safetensors(path.as_ref(), &tensors, self.info.to_metadata(), overwrite)
    }

    /// The architecture.
    pub fn config(&self) -> &Config {
        &self.info.config
    }

    /// How images are prepared for this model.
    pub fn preprocessing(&self) -> &Preprocessing {
        &self.info.preprocessing
    }

    /// Class names, in output order.
    pub fn labels(&self) -> &[String] {
        &self.info.labels
    }

    /// Architecture, preprocessing and labels together.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The plain network (on a CPU model loaded from a file, read again from it on first use:
    /// see [`Model::load_on`]).
    pub fn network(&self) -> Result<&DenseNet> {
        Ok(&self.plain()?.network)
    }

    /// The path [`Model::logits`] and [`Model::predict`] take: [`ComputePath::Fast`] on the
    /// CPU unless changed by [`Model::set_compute_path`], [`ComputePath::Plain`] elsewhere.
    pub fn compute_path(&self) -> ComputePath {
        match self.backend {
            Backend::Cpu { path, .. } => path,
            Backend::Device { .. } => ComputePath::Plain,
        }
    }

    /// Chooses the path [`Model::logits`] and [`Model::predict`] take. The fast path exists on
    /// the CPU only: asking for it on another device is an [`Error::Device`].
    pub fn set_compute_path(&mut self, path: ComputePath) -> Result<()> {
        if path == ComputePath::Plain {
            self.plain()?;
        }
        match &mut self.backend {
            Backend::Cpu { path: current, .. } => *current = path,
            Backend::Device { .. } if path == ComputePath::Plain => {}
            Backend::Device { .. } => {
                return Err(Error::Device {
                    device: format!("{:?}", self.device),
                    reason: "the fast path runs on the CPU only".into(),
                })
            }
        }
        Ok(())
    }

    /// The instruction set the fast path runs (`None` off the CPU): the best this CPU has,
    /// capped by `DENSENET_CPU_ISA` (see [`Isa::from_env`]) or [`Model::set_isa`].
    pub fn isa(&self) -> Option<Isa> {
        match &self.backend {
            Backend::Cpu { fast, .. } => Some(fast.isa()),
            Backend::Device { .. } => None,
        }
    }

    /// Compiles the fast path again for `cap`, or for the best this CPU runs if it lacks `cap`,
    /// and returns the instruction set that now runs. The fast path exists on the CPU only:
    /// elsewhere this is an [`Error::Device`]. Needs the plain network (see
    /// [`Model::network`]).
    ///
    /// ```
    /// use densenet::fast::Isa;
    /// use densenet::{Config, Model, ModelInfo, Preprocessing};
    /// let info = ModelInfo {
    ///     config: Config::densenet_bc100(100),
    ///     preprocessing: Preprocessing::cifar100(),
    ///     labels: densenet::labels::default_labels(100),
    /// };
    /// let mut model = Model::synthetic(info, &candle_core::Device::Cpu)?;
    /// assert_eq!(model.set_isa(Isa::Portable)?, Isa::Portable);
    /// assert_eq!(model.isa(), Some(Isa::Portable));
    /// # Ok::<(), densenet::Error>(())
    /// ```
    pub fn set_isa(&mut self, cap: Isa) -> Result<Isa> {
        let Backend::Cpu { fast, .. } = &self.backend else {
            return Err(Error::Device {
                device: format!("{:?}", self.device),
                reason: "the fast path, and so its instruction set, exists on the CPU only".into(),
            });
        };
        // Capped here: the caller is told what runs by the value returned, not by a fallback.
        let resolved = resolve(Some(cap.capped()), fast.resolved().asked());
        if resolved != fast.resolved() {
            let fast = FastNet::compile(self.network()?.clone(), resolved)?;
            if let Backend::Cpu { fast: old, .. } = &mut self.backend {
                **old = fast;
            }
        }
        Ok(resolved.isa())
    }

    /// Checks an input and brings it to [N, 3, H, W] F32 on the model's device.
    pub(crate) fn prepare(&self, input: &Tensor) -> Result<Tensor> {
        let input = match input.rank() {
            3 => input.unsqueeze(0)?,
            4 => input.clone(),
            r => {
                return Err(Error::InvalidInput(format!(
                    "expected [N, 3, H, W] or [3, H, W], got rank {r} with shape {:?}",
                    input.dims()
                )))
            }
        };
        let (n, c, h, w) = input.dims4()?;
        if n == 0 {
            return Err(Error::InvalidInput("the batch is empty".into()));
        }
        if c != 3 {
            return Err(Error::InvalidInput(format!(
                "expected 3 (RGB) channels, got {c} in shape {:?}",
                input.dims()
            )));
        }
        let min = self.info.config.downsampling();
        if h < min || w < min {
            return Err(Error::InvalidInput(format!(
                "{h}×{w} is too small: this network halves the size {} times, so it needs at least {min}×{min}",
                min.trailing_zeros()
            )));
        }
        if !input.dtype().is_float() {
            return Err(Error::InvalidInput(format!(
                "expected a float tensor, got {:?}",
                input.dtype()
            )));
        }
        // One pass over the values on the host: the checks cost little beside the network.
        let input = input.to_dtype(DType::F32)?;
        let values = host_values(&input)?;
        let images = || values.chunks((c * h * w).max(1)).enumerate();
        if let Some((i, _)) = images().find(|(_, v)| v.iter().any(|x| !x.is_finite())) {
            return Err(Error::InvalidInput(format!(
                "image {i} of the batch contains NaN or infinite values"
            )));
        }
        if let Some((i, _)) =
            images().find(|(_, v)| v.iter().any(|x| x.abs() > MAX_INPUT_ABS as f32))
        {
            return Err(Error::InvalidInput(format!(
                "image {i} of the batch has values beyond ±{MAX_INPUT_ABS:e}: not a normalised image"
            )));
        }
        let input = input.to_device(&self.device)?;
        // The plain network's dtype: the fast path reads f32 whatever its precision.
        let dtype = match self.backend {
            Backend::Cpu { .. } => DType::F32,
            Backend::Device { dtype } => dtype,
        };
        Ok(input.to_dtype(dtype)?)
    }

    /// Logits [N, classes] for a normalised batch [N, 3, H, W] (or one image [3, H, W]), by the
    /// path [`Model::compute_path`] names.
    pub fn logits(&self, input: &Tensor) -> Result<Tensor> {
        let input = self.prepare(input)?;
        Ok(match self.fast_path() {
            Some(fast) => fast.forward(&input)?,
            None => self.network()?.forward(&input)?.to_dtype(DType::F32)?,
        })
    }

    /// The fast path, where [`Model::logits`] takes it (see [`Model::compute_path`]).
    pub(crate) fn fast_path(&self) -> Option<&FastNet> {
        match &self.backend {
            Backend::Cpu {
                fast,
                path: ComputePath::Fast,
            } => Some(fast),
            _ => None,
        }
    }

    /// Logits by the plain candle-nn layers, whatever [`Model::compute_path`] says: the
    /// reference the fast path is checked against.
    pub fn logits_reference(&self, input: &Tensor) -> Result<Tensor> {
        Ok(self
            .network()?
            .forward(&self.prepare(input)?)?
            .to_dtype(DType::F32)?)
    }

    /// Predicts each image of a normalised batch, with the [`DEFAULT_TOP_K`] most probable classes.
    ///
    /// An input holding NaN or infinite values is refused with [`Error::InvalidInput`] naming the
    /// image: ReLU would otherwise silently turn NaN into zeros and return a confident answer.
    /// So are values beyond ±[`MAX_INPUT_ABS`], and an image whose logits overflow f32.
    pub fn predict(&self, input: &Tensor) -> Result<Vec<Prediction>> {
        self.predict_top_k(input, DEFAULT_TOP_K)
    }

    /// As [`Model::predict`], keeping the `k` most probable classes (at most all of them).
    pub fn predict_top_k(&self, input: &Tensor, k: usize) -> Result<Vec<Prediction>> {
        self.predictions(&self.logits(input)?, k)
    }

    /// The predictions, with the `k` most probable classes, of a batch's logits `[N, classes]`.
    pub(crate) fn predictions(&self, logits: &Tensor, k: usize) -> Result<Vec<Prediction>> {
        let probabilities = candle_nn::ops::softmax(logits, D::Minus1)?;
        let logits = logits.to_vec2::<f32>()?;
        // Weights can overflow f32 too (a file with huge values): refuse rather than return NaN
        // probabilities that sort arbitrarily.
        if let Some(i) = logits.iter().position(|l| l.iter().any(|v| !v.is_finite())) {
            return Err(Error::InvalidInput(format!(
                "image {i} of the batch gives non-finite logits: the weights or values overflow f32"
            )));
        }
        let probabilities = probabilities.to_vec2::<f32>()?;
        Ok(logits
            .into_iter()
            .zip(probabilities)
            .map(|(logits, probabilities)| {
                let top_k = self.top_k(&probabilities, k);
                Prediction {
                    logits,
                    probabilities,
                    top_k,
                }
            })
            .collect())
    }

    fn top_k(&self, probabilities: &[f32], k: usize) -> Vec<TopK> {
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        order.sort_by(|&a, &b| {
            probabilities[b]
                .total_cmp(&probabilities[a])
                .then(a.cmp(&b))
        });
        order
            .into_iter()
            .take(k)
            .map(|index| TopK {
                index,
                label: self.info.labels[index].clone(),
                probability: probabilities[index],
            })
            .collect()
    }
}

/// The fast path's precision for a compute precision: F32, BF16 or int8; F16 is for GPUs.
fn cpu_precision(compute: Compute) -> Result<Precision> {
    match compute {
        Compute::Float(DType::F32) => Ok(Precision::F32),
        Compute::Float(DType::BF16) => Ok(Precision::Bf16),
        Compute::Int8 => Ok(Precision::Int8),
        Compute::Float(other) => Err(Error::Device {
            device: "cpu".into(),
            reason: format!(
                "the CPU computes in f32, bf16 or int8; {other:?} is for CUDA and Metal"
            ),
        }),
    }
}

/// Checks that `info` describes a network that can be built, with a label per class.
fn check(info: &ModelInfo) -> Result<()> {
    info.config.validate()?;
    if info.labels.len() != info.config.num_classes {
        return Err(Error::InvalidConfig(format!(
            "{} labels for {} classes",
            info.labels.len(),
            info.config.num_classes
        )));
    }
    Ok(())
}
