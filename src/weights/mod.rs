//! Weight files: which tensors a configuration needs, reading and checking them, writing them.

pub mod hub;
pub mod naming;
pub mod pth;
mod safetensors_file;
pub mod synthetic;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Config, ModelInfo};
use crate::error::{Error, Result};
use crate::network::DenseNet;
use naming::Family;
use pth::FileKind;

pub use safetensors_file::{
    read_safetensors, read_safetensors_bytes, write_safetensors, MAX_HEADER_BYTES,
};

/// What a state_dict entry is to PyTorch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// A learned parameter (counted by `parameters()`).
    Parameter,
    /// A BatchNorm running statistic (a float buffer).
    Buffer,
    /// A BatchNorm's `num_batches_tracked` (an int64 scalar, unused at inference).
    Counter,
}

/// One entry of the PyTorch state_dict of a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// The state_dict name.
    pub name: String,
    /// The shape.
    pub shape: Vec<usize>,
    /// Parameter, buffer or counter.
    pub kind: TensorKind,
}

/// A [`VarBuilder`] backend that hands out zeros and writes down every name and shape asked for,
/// so the network code stays the one place that knows the names.
struct Recorder(Arc<Mutex<Vec<NameAndShape>>>);

type NameAndShape = (String, Vec<usize>);

impl candle_nn::var_builder::SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .expect("recorder lock")
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("the shape of `{name}` is not known")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The PyTorch state_dict of `config`: every name and shape, `num_batches_tracked` included.
pub fn state_dict_spec(config: &Config) -> Result<Vec<TensorSpec>> {
    config.validate()?;
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let vb = VarBuilder::from_backend(
        Box::new(Recorder(recorded.clone())),
        DType::F32,
        Device::Cpu,
    );
    DenseNet::new(config, vb)?;
    let recorded = std::mem::take(&mut *recorded.lock().expect("recorder lock"));
    let mut specs = Vec::with_capacity(recorded.len() * 5 / 4);
    for (name, shape) in recorded {
        let kind = if name.ends_with(".running_mean") || name.ends_with(".running_var") {
            TensorKind::Buffer
        } else {
            TensorKind::Parameter
        };
        let counter = name
            .strip_suffix(".running_var")
            .map(|prefix| format!("{prefix}.num_batches_tracked"));
        specs.push(TensorSpec { name, shape, kind });
        if let Some(name) = counter {
            specs.push(TensorSpec {
                name,
                shape: vec![],
                kind: TensorKind::Counter,
            });
        }
    }
    Ok(specs)
}

/// Number of learned parameters of `config`, as PyTorch's `sum(p.numel() for p in parameters())`.
///
/// ```
/// let n = densenet::weights::parameter_count(&densenet::Config::densenet121(100)).unwrap();
/// assert_eq!(n, 7_048_548);
/// ```
pub fn parameter_count(config: &Config) -> Result<usize> {
    Ok(state_dict_spec(config)?
        .iter()
        .filter(|s| s.kind == TensorKind::Parameter)
        .map(|s| s.shape.iter().product::<usize>())
        .sum())
}

/// Tensors read from a file, before they are checked against an architecture.
#[derive(Debug)]
pub struct RawWeights {
    /// The file they came from.
    pub path: PathBuf,
    /// Name → (shape, dtype as the file names it, tensor if it is a float type).
    pub entries: BTreeMap<String, RawTensor>,
    /// The file's `__metadata__`, empty if it has none.
    pub metadata: HashMap<String, String>,
}

/// One tensor as stored.
#[derive(Debug)]
pub struct RawTensor {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its dtype, as the file names it (`F16`, `I64`...).
    pub dtype: String,
    /// The values as F32 on the CPU, for float dtypes; `None` for others.
    pub values: Option<Tensor>,
}

impl RawWeights {
    /// Names and shapes, for recognising the architecture.
    pub fn shapes(&self) -> BTreeMap<&str, &[usize]> {
        self.entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.shape.as_slice()))
            .collect()
    }

    /// Checks the tensors against `config`'s state_dict (missing, shape, dtype, unexpected) and
    /// returns the float tensors by name, moved to `device`.
    pub fn into_checked(self, config: &Config, device: &Device) -> Result<HashMap<String, Tensor>> {
        self.checked(config, Family::SeedCifar, device)
    }

    /// As [`RawWeights::into_checked`] for a file of `family`: each tensor is looked up under
    /// the family's name and returned under the canonical name the network is built with.
    /// Errors name the tensors as the file does.
    pub fn checked(
        &self,
        config: &Config,
        family: Family,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        let path = || self.path.clone();
        let n = config.block_config.len();
        let mut remaining: BTreeMap<&str, &RawTensor> =
            self.entries.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut out = HashMap::new();
        for spec in state_dict_spec(config)? {
            let name = family.file_name(&spec.name, n);
            let Some(raw) = remaining.remove(name.as_str()) else {
                if spec.kind == TensorKind::Counter {
                    continue;
                }
                return Err(Error::MissingTensor { path: path(), name });
            };
            if spec.kind == TensorKind::Counter {
                continue;
            }
            if raw.shape != spec.shape {
                return Err(Error::ShapeMismatch {
                    path: path(),
                    name,
                    expected: spec.shape,
                    found: raw.shape.clone(),
                });
            }
            let Some(values) = &raw.values else {
                return Err(Error::UnsupportedDtype {
                    path: path(),
                    name,
                    dtype: raw.dtype.clone(),
                });
            };
            out.insert(spec.name, values.to_device(device)?);
        }
        if !remaining.is_empty() {
            return Err(Error::UnexpectedTensors {
                path: path(),
                names: remaining.into_keys().take(5).map(str::to_string).collect(),
            });
        }
        Ok(out)
    }
}

/// Reads a weights file of any supported format, recognised by its content rather than its
/// extension: a zip archive is a PyTorch checkpoint (`.pth`, `.pt`, `.bin`), anything else is read
/// as safetensors. A legacy (non-zip) PyTorch file is an error that says how to re-save it.
pub fn read(path: &Path) -> Result<RawWeights> {
    refuse_directory(path)?;
    match pth::sniff(path)? {
        FileKind::Zip => pth::read_pth(path),
        FileKind::LegacyPickle => Err(pth::legacy_error(path)),
        FileKind::Other => read_safetensors(path),
    }
}

/// As [`read`], from the bytes of a file (a browser's, or one fetched into memory); `name` only
/// names it in errors.
pub fn read_bytes(name: &Path, bytes: &[u8]) -> Result<RawWeights> {
    match FileKind::of(bytes) {
        FileKind::Zip => pth::read_pth_bytes(name, bytes),
        FileKind::LegacyPickle => Err(pth::legacy_error(name)),
        FileKind::Other => safetensors_file::read_safetensors_bytes(name, bytes),
    }
}

/// A directory where a weights file was expected gets its own message, not the OS's "os error 21".
pub(crate) fn refuse_directory(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::other("is a directory, not a weights file"),
        ));
    }
    Ok(())
}

/// A weights file read and recognised: its tensors (under the file's own names, pre-0.3
/// torchvision keys modernised), its naming family, and what the model is.
#[derive(Debug)]
pub struct Checkpoint {
    /// The tensors, as the file names them.
    pub raw: RawWeights,
    /// How the file names its tensors.
    pub family: Family,
    /// Architecture, preprocessing and labels: from the file's metadata, or recognised from the
    /// tensors with the family's defaults.
    pub info: ModelInfo,
    /// Whether `info` came from the file's `__metadata__`.
    pub self_describing: bool,
}

impl Checkpoint {
    /// Reads and recognises a weights file (see [`read`] for the formats).
    pub fn open(path: &Path) -> Result<Self> {
        Self::recognise(path, read(path)?)
    }

    /// As [`Checkpoint::open`], from the bytes of a file (see [`read_bytes`]); `name` only names
    /// it in errors.
    pub fn from_bytes(name: &Path, bytes: &[u8]) -> Result<Self> {
        Self::recognise(name, read_bytes(name, bytes)?)
    }

    /// Recognises the tensors `raw` of the file `path`.
    fn recognise(path: &Path, mut raw: RawWeights) -> Result<Self> {
        raw.entries = std::mem::take(&mut raw.entries)
            .into_iter()
            .map(|(k, v)| (naming::modernise_name(&k), v))
            .collect();
        let torchvision = naming::uses_torchvision_naming(&raw.shapes());
        let from_metadata = ModelInfo::from_metadata(&raw.metadata, path, |c| {
            Family::of(c, torchvision).defaults(c)
        })?;
        let self_describing = from_metadata.is_some();
        let (family, info) = match from_metadata {
            Some(info) => (Family::of(&info.config, torchvision), info),
            None => {
                let (family, config) = naming::recognise(&raw.shapes()).map_err(|reason| {
                    Error::UnknownArchitecture {
                        path: path.to_path_buf(),
                        reason,
                    }
                })?;
                let (preprocessing, labels) = family.defaults(&config);
                let info = ModelInfo {
                    config,
                    preprocessing,
                    labels,
                };
                (family, info)
            }
        };
        info.config
            .validate()
            .map_err(|e| Error::UnknownArchitecture {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            raw,
            family,
            info,
            self_describing,
        })
    }

    /// Every tensor the network needs, checked, under the canonical names, on `device`.
    pub fn tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        self.raw.checked(&self.info.config, self.family, device)
    }

    /// Writes the checkpoint as a self-describing safetensors file: the family's own tensor
    /// names (so the original PyTorch class loads it with `load_state_dict`), F32, with the
    /// architecture, preprocessing, labels and family in `__metadata__`. Every tensor is checked
    /// first; the file is written atomically and replaces an existing one only with `overwrite`.
    pub fn save_safetensors(&self, path: &Path, overwrite: bool) -> Result<()> {
        let mut tensors = self.tensors(&Device::Cpu)?;
        let n = self.info.config.block_config.len();
        let mut out = Vec::with_capacity(tensors.len() * 5 / 4);
        for spec in state_dict_spec(&self.info.config)? {
            let name = self.family.file_name(&spec.name, n);
            let t = match tensors.remove(&spec.name) {
                Some(t) => t,
                None => Tensor::zeros((), DType::I64, &Device::Cpu)?,
            };
            out.push((name, t));
        }
        let mut metadata = self.info.to_metadata();
        metadata.insert(KEY_FAMILY.to_string(), self.family.id().to_string());
        write_safetensors(path, &out, metadata, overwrite)
    }
}

/// The `__metadata__` key naming the family of a converted file.
pub const KEY_FAMILY: &str = "densenet.family";

/// Writes a file through `write`, which is given a temporary path in the same directory; the
/// temporary file is flushed to disk and renamed into place, so that a failure (full disk,
/// interruption) leaves no partial file at `path` and removes the temporary one.
///
/// An existing file is replaced only with `overwrite`; without it the new file is linked into
/// place, which fails if another process created `path` meanwhile.
pub fn write_atomically(
    path: &Path,
    overwrite: bool,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if !overwrite && path.exists() {
        return Err(Error::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        )
    })?;
    // Unique per process and call, so that concurrent saves never share a temporary file.
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write(&tmp)
        .and_then(|()| {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(path, e))
        })
        .and_then(|()| move_into_place(&tmp, path, overwrite));
    // After a successful link the temporary name remains; after a failure, the partial file.
    let _ = std::fs::remove_file(&tmp);
    result
}

fn move_into_place(tmp: &Path, path: &Path, overwrite: bool) -> Result<()> {
    if !overwrite {
        match std::fs::hard_link(tmp, path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyExists {
                    path: path.to_path_buf(),
                })
            }
            // A file system without hard links: checked above, renamed below.
            Err(_) => {}
        }
    }
    std::fs::rename(tmp, path).map_err(|e| Error::io(path, e))
}

/// Where `classify` looks for weights when none are named.
pub const DEFAULT_DIR: &str = "weights";

/// The model file `--weights` names: a path, or `hf:OWNER/REPO[@REVISION][:FILE]` (downloaded
/// into the Hub cache, see `hub::Hub::from_env`). With none, the model in [`DEFAULT_DIR`], else
/// the Hub's [`hub::DEFAULT_REPO`]. Without the `hub` feature, a Hub reference is
/// [`Error::HubNotBuilt`].
pub fn resolve(weights: Option<&str>) -> Result<PathBuf> {
    #[cfg(feature = "hub")]
    let fetch = |r: &str| hub::Hub::from_env()?.fetch(&r.parse()?);
    #[cfg(not(feature = "hub"))]
    let fetch = |r: &str| {
        // A malformed reference is still reported as such.
        r.parse::<hub::HubRef>()?;
        Err(Error::HubNotBuilt {
            reference: format!("{}{r}", hub::PREFIX),
        })
    };
    locate(weights, Path::new(DEFAULT_DIR), fetch)
}

/// As [`resolve`], with the default directory and the Hub given.
#[cfg(feature = "hub")]
pub fn resolve_with(
    weights: Option<&str>,
    dir: &Path,
    hub: impl FnOnce() -> Result<hub::Hub>,
) -> Result<PathBuf> {
    locate(weights, dir, |r| hub()?.fetch(&r.parse()?))
}

/// The file `weights` names, else the one in `dir`; a Hub reference (what follows `hf:`), or the
/// default model's when `dir` holds none, is handed to `fetch`.
fn locate(
    weights: Option<&str>,
    dir: &Path,
    fetch: impl FnOnce(&str) -> Result<PathBuf>,
) -> Result<PathBuf> {
    match weights {
        Some(w) => match w.strip_prefix(hub::PREFIX) {
            Some(reference) => fetch(reference),
            None => Ok(PathBuf::from(w)),
        },
        None => match find_in_dir(dir)? {
            Some(path) => Ok(path),
            None => fetch(hub::DEFAULT_REPO),
        },
    }
}

/// The extensions of model files looked for in a directory.
pub const MODEL_EXTENSIONS: [&str; 4] = ["safetensors", "pth", "pt", "bin"];

/// The model file in `dir`: its only file with one of the [`MODEL_EXTENSIONS`], or
/// `model.safetensors` among several.
/// `Ok(None)` when the directory holds none (or does not exist).
pub fn find_in_dir(dir: &Path) -> Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|x| MODEL_EXTENSIONS.iter().any(|m| x == *m))
        })
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => {
            let preferred = dir.join("model.safetensors");
            if found.contains(&preferred) {
                Ok(Some(preferred))
            } else {
                Err(Error::io(
                    dir,
                    std::io::Error::other(format!(
                        "holds {} model files ({}) and no model.safetensors; name one with --weights",
                        found.len(),
                        MODEL_EXTENSIONS.map(|e| format!(".{e}")).join(", ")
                    )),
                ))
            }
        }
    }
}

#[cfg(all(test, not(feature = "hub")))]
mod tests {
    use super::*;

    #[test]
    fn without_the_hub_feature_a_hub_reference_is_a_typed_error() {
        let reference = "hf:owner/repo@v1:model.safetensors";
        let err = resolve(Some(reference)).unwrap_err();
        assert!(
            matches!(&err, Error::HubNotBuilt { reference: r } if r == reference),
            "{err:?}"
        );
        assert!(err.to_string().contains("`hub` feature"), "{err}");
        // A malformed reference is still reported as such, and a path is still a path.
        let err = resolve(Some("hf:no-owner")).unwrap_err();
        assert!(matches!(err, Error::Hub { .. }), "{err:?}");
        assert_eq!(
            resolve(Some("model.safetensors")).unwrap(),
            Path::new("model.safetensors")
        );
    }
}
