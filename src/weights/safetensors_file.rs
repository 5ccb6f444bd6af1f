//! The safetensors format: memory-mapped reading with every tensor checked, atomic writing.

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap, HashSet};
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

/// The largest JSON header accepted, in bytes (the safetensors crate's own bound is 100 MB).
///
/// A DenseNet-161 with ImageNet labels needs about 200 KiB; the bound keeps a hostile header
/// from making the JSON parser allocate hundreds of megabytes.
pub const MAX_HEADER_BYTES: u64 = 16 * 1024 * 1024;

/// Reads every tensor of a safetensors file (float ones converted to F32) and its metadata.
///
/// The header is validated in full (length within the file and [`MAX_HEADER_BYTES`], valid JSON,
/// no duplicate names, offsets inside the file without overlaps or gaps, byte counts matching
/// dtype and shape) before any tensor is read. The file is memory-mapped, so memory use is the
/// header plus the tensors as F32.
pub fn read_safetensors(path: &Path) -> Result<RawWeights> {
    super::refuse_directory(path)?;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.len() < 8 {
        // Too short to map usefully (an empty file cannot be mapped at all).
        return Err(too_short(path, meta.len()));
    }
    read_mapped(path, file)
}

/// WebAssembly has no memory maps (nor has WASI's file system): the file is read instead.
#[cfg(target_family = "wasm")]
fn read_mapped(path: &Path, mut file: std::fs::File) -> Result<RawWeights> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| Error::io(path, e))?;
    read_safetensors_bytes(path, &bytes)
}

/// The tensors of the safetensors file `file`, read through a memory map.
#[cfg(not(target_family = "wasm"))]
fn read_mapped(path: &Path, file: std::fs::File) -> Result<RawWeights> {
    // SAFETY: the map is read-only and dropped before this function returns; a file truncated
    // by another process meanwhile is outside what any reader can guard against.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    // Each tensor's pages leave this process's memory once the tensor is copied out, so that
    // the file and its tensors are not resident together (the copies being all the model needs).
    // Only Unix has the advice; elsewhere the pages stay until the map is dropped.
    let release = |data: &[u8]| {
        #[cfg(unix)]
        {
            let offset = data.as_ptr() as usize - mmap.as_ptr() as usize;
            // SAFETY: the map is read-only and private: dropped pages are read again from the
            // file if touched; `data` lies inside the map (it was sliced from it).
            let _ = unsafe {
                mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, data.len())
            };
        }
        #[cfg(not(unix))]
        let _ = data;
    };
    read_tensors(path, &mmap, release)
}

/// As [`read_safetensors`], from the bytes of a file; `path` only names it in errors.
pub fn read_safetensors_bytes(path: &Path, bytes: &[u8]) -> Result<RawWeights> {
    read_tensors(path, bytes, |_| ())
}

/// Reads the tensors of `bytes`, calling `release` with each tensor's data once it is copied.
fn read_tensors(path: &Path, bytes: &[u8], release: impl Fn(&[u8])) -> Result<RawWeights> {
    validate_header(path, bytes)?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| invalid(path, e))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| invalid(path, e))?;
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
        release(view.data());
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

fn too_short(path: &Path, len: u64) -> Error {
    invalid(
        path,
        format!("the file is {len} bytes, too short for the 8-byte header length"),
    )
}

/// The header's entries in file order, duplicates kept (a map would silently keep one).
struct HeaderEntries(Vec<(String, HeaderValue)>);

enum HeaderValue {
    Metadata,
    Tensor(TensorInfo),
}

impl<'de> serde::Deserialize<'de> for HeaderEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = HeaderEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<HeaderEntries, A::Error> {
                let mut entries = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let value = if name == "__metadata__" {
                        map.next_value::<HashMap<String, String>>()?;
                        HeaderValue::Metadata
                    } else {
                        let info = map.next_value::<TensorInfo>().map_err(|e| {
                            serde::de::Error::custom(format!("tensor `{name}`: {e}"))
                        })?;
                        HeaderValue::Tensor(info)
                    };
                    entries.push((name, value));
                }
                Ok(HeaderEntries(entries))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Checks what the safetensors crate lets through or reports without naming the tensor:
/// the header bound, duplicate names, and each tensor's offsets and byte count.
fn validate_header(path: &Path, bytes: &[u8]) -> Result<()> {
    let len = bytes.len() as u64;
    let Some(prefix) = bytes.get(..8) else {
        return Err(too_short(path, len));
    };
    // Its JSON header opens right after the length: anything else is another kind of file (the
    // formats were told apart by content, and a checkpoint would have been a zip archive).
    if bytes.get(8).is_some_and(|&b| b != b'{') {
        return Err(invalid(
            path,
            "no JSON header after its first 8 bytes: neither a safetensors file nor a PyTorch \
             checkpoint (a zip archive); the weights are expected as .safetensors or .pth",
        ));
    }
    let n = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES {
        return Err(invalid(
            path,
            format!("the header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes"),
        ));
    }
    if n > len - 8 {
        return Err(invalid(
            path,
            format!(
                "the header length {n} is larger than the rest of the file ({} bytes)",
                len - 8
            ),
        ));
    }
    let header = &bytes[8..8 + n as usize];
    let data_len = len - 8 - n;
    let HeaderEntries(entries) = serde_json::from_slice(header)
        .map_err(|e| invalid(path, format!("the JSON header is invalid: {e}")))?;
    let mut seen = HashSet::new();
    let mut tensors = Vec::new();
    for (name, value) in &entries {
        if !seen.insert(name.as_str()) {
            return Err(invalid(path, format!("the header names `{name}` twice")));
        }
        if let HeaderValue::Tensor(info) = value {
            tensors.push((name.as_str(), info));
        }
    }
    for (name, info) in &tensors {
        let (start, end) = info.data_offsets;
        if start > end || end as u64 > data_len {
            return Err(invalid(
                path,
                format!(
                    "tensor `{name}`: data offsets [{start}, {end}] lie outside the {data_len} bytes of data"
                ),
            ));
        }
        let bytes_needed = info
            .shape
            .iter()
            .try_fold(info.dtype.bitsize(), |acc, &d| acc.checked_mul(d))
            .map(|bits| bits.div_ceil(8));
        if bytes_needed != Some(end - start) {
            return Err(invalid(
                path,
                format!(
                    "tensor `{name}`: dtype {:?} and shape {:?} need {} bytes, its offsets hold {}",
                    info.dtype,
                    info.shape,
                    bytes_needed.map_or("more than 2^64".to_string(), |b| b.to_string()),
                    end - start
                ),
            ));
        }
    }
    tensors.sort_by_key(|(_, info)| info.data_offsets);
    for pair in tensors.windows(2) {
        let ((a, ai), (b, bi)) = (pair[0], pair[1]);
        if bi.data_offsets.0 < ai.data_offsets.1 {
            return Err(invalid(
                path,
                format!("tensors `{a}` and `{b}` overlap in the data"),
            ));
        }
    }
    Ok(())
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
