//! Weight files: which tensors a configuration needs, reading and checking them, writing them.

pub mod naming;
mod safetensors_file;
pub mod synthetic;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::network::DenseNet;

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
        let path = self.path;
        let mut entries = self.entries;
        let mut out = HashMap::new();
        for spec in state_dict_spec(config)? {
            let Some(raw) = entries.remove(&spec.name) else {
                if spec.kind == TensorKind::Counter {
                    continue;
                }
                return Err(Error::MissingTensor {
                    path,
                    name: spec.name,
                });
            };
            if spec.kind == TensorKind::Counter {
                continue;
            }
            if raw.shape != spec.shape {
                return Err(Error::ShapeMismatch {
                    path,
                    name: spec.name,
                    expected: spec.shape,
                    found: raw.shape,
                });
            }
            let Some(values) = raw.values else {
                return Err(Error::UnsupportedDtype {
                    path,
                    name: spec.name,
                    dtype: raw.dtype,
                });
            };
            out.insert(spec.name, values.to_device(device)?);
        }
        if !entries.is_empty() {
            return Err(Error::UnexpectedTensors {
                path,
                names: entries.into_keys().take(5).collect(),
            });
        }
        Ok(out)
    }
}

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

/// The model file in `dir`: its only `.safetensors` file, or `model.safetensors` among several.
/// `Ok(None)` when the directory holds none (or does not exist).
pub fn find_in_dir(dir: &Path) -> Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
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
                        "holds {} .safetensors files and no model.safetensors; name one with --weights",
                        found.len()
                    )),
                ))
            }
        }
    }
}
