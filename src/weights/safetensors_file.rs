//! The safetensors format: memory-mapped reading with every tensor checked, atomic writing.

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{write_atomically, RawTensor, RawWeights};
use crate::error::{Error, Result};

fn invalid(path: &Path, reason: impl ToString) -> Error {
    Error::InvalidWeights {
        path: path.to_path_buf(),
        format: "safetensors",
        reason: reason.to_string(),
    }
}

/// Reads every tensor of a safetensors file (float ones converted to F32) and its metadata.
///
/// The header is validated in full (offsets inside the file, no overlaps, byte counts matching
/// dtype and shape) before any tensor is read.
pub fn read_safetensors(path: &Path) -> Result<RawWeights> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and dropped before this function returns; a file truncated
    // by another process meanwhile is outside what any reader can guard against.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let (_, header) = SafeTensors::read_metadata(&mmap).map_err(|e| invalid(path, e))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| invalid(path, e))?;
    let mut entries = BTreeMap::new();
    for (name, view) in st.iter() {
        let values = match view.dtype() {
            Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64 => {
                let t = view
                    .load(&Device::Cpu)
                    .map_err(|e| invalid(path, format!("tensor `{name}`: {e}")))?;
                Some(t.to_dtype(DType::F32)?)
            }
            _ => None,
        };
        entries.insert(
            name.to_string(),
            RawTensor {
                shape: view.shape().to_vec(),
                dtype: format!("{:?}", view.dtype()),
                values,
            },
        );
    }
    Ok(RawWeights {
        path: path.to_path_buf(),
        entries,
        metadata: header.metadata().clone().unwrap_or_default(),
    })
}

/// Writes `tensors` with `metadata` to `path`, atomically; an existing file is replaced only with
/// `overwrite`.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
    overwrite: bool,
) -> Result<()> {
    let on_cpu = tensors
        .iter()
        .map(|(n, t)| Ok((n.as_str(), t.to_device(&Device::Cpu)?)))
        .collect::<Result<Vec<_>>>()?;
    write_atomically(path, overwrite, |tmp| {
        safetensors::serialize_to_file(on_cpu, Some(metadata), tmp).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(io) => Error::io(path, io),
            other => invalid(path, other),
        })
    })
}
