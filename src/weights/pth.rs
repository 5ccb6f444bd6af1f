//! PyTorch checkpoints (`.pth`, `.pt`, `.bin`): the zip format `torch.save` writes since
//! PyTorch 1.6, read through Candle's pickle interpreter.
//!
//! Candle's interpreter only builds a tree of values from the pickle opcodes: a `GLOBAL` or
//! `REDUCE` becomes a plain description of a call, never a call, so nothing in the file is ever
//! executed. Only tensors (`torch._utils._rebuild_tensor_v2` over a storage record) are read.

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::Path;

use super::{RawTensor, RawWeights};
use crate::error::{Error, Result};

/// Keys under which training scripts commonly nest the state_dict in a checkpoint dict.
pub const NESTED_KEYS: [&str; 3] = ["state_dict", "model", "net"];

const FORMAT: &str = "PyTorch checkpoint";

/// The largest `data.pkl` read: a state_dict's pickle holds names and storage references only,
/// a few hundred KB even for large networks.
pub const MAX_PICKLE_BYTES: u64 = 64 * 1024 * 1024;

fn invalid(path: &Path, reason: impl ToString) -> Error {
    Error::InvalidWeights {
        path: path.to_path_buf(),
        format: FORMAT,
        reason: reason.to_string(),
    }
}

/// Runs Candle's pickle interpreter over `pickle`, one opcode at a time.
///
/// Before each `BINUNICODE` (the one opcode whose argument makes Candle allocate: as many bytes
/// as its 4-byte length says), the length is checked against what is left of the pickle, so a
/// declared 4 GiB string is refused instead of allocated.
fn interpret(pickle: &[u8]) -> candle_core::Result<Object> {
    const BINUNICODE: u8 = b'X';
    let mut stack = Stack::empty();
    let mut reader = std::io::Cursor::new(pickle);
    loop {
        let at = reader.position() as usize;
        if let [BINUNICODE, a, b, c, d, rest @ ..] = &pickle[at.min(pickle.len())..] {
            let len = u32::from_le_bytes([*a, *b, *c, *d]) as usize;
            if len > rest.len() {
                candle_core::bail!(
                    "a string of {len} bytes at offset {at}, past the end of the pickle ({} bytes)",
                    pickle.len()
                )
            }
        }
        if stack.read(&mut reader)? {
            return stack.finalize();
        }
    }
}

/// Reads every tensor of a zip-format PyTorch checkpoint: a state_dict, or a dict holding one
/// under `state_dict`, `model` or `net`. Float tensors are converted to F32; a `module.` prefix
/// on every name (from `DataParallel`) is removed.
pub fn read_pth(path: &Path) -> Result<RawWeights> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    read_archive(path, BufReader::new(file), file_len)
}

/// As [`read_pth`], from the bytes of a checkpoint; `path` only names it in errors.
pub fn read_pth_bytes(path: &Path, bytes: &[u8]) -> Result<RawWeights> {
    read_archive(path, std::io::Cursor::new(bytes), bytes.len() as u64)
}

/// The tensors of the checkpoint `archive`, `file_len` bytes long; `path` names it in errors.
fn read_archive<R: Read + std::io::Seek>(
    path: &Path,
    archive: R,
    file_len: u64,
) -> Result<RawWeights> {
    let mut zip = zip::ZipArchive::new(archive).map_err(|e| invalid(path, e))?;
    let pickle_name = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("data.pkl"))
        .map(|n| n.into_owned())
        .ok_or_else(|| invalid(path, "the archive holds no data.pkl"))?;
    let object = {
        let entry = zip
            .by_name(&pickle_name)
            .map_err(|e| invalid(path, format!("{pickle_name}: {e}")))?;
        if entry.size() > MAX_PICKLE_BYTES {
            return Err(invalid(
                path,
                format!(
                    "{pickle_name} is {} bytes, more than the limit of {MAX_PICKLE_BYTES}",
                    entry.size()
                ),
            ));
        }
        // Bounded whatever the zip directory claims: a longer pickle ends early and fails.
        let mut pickle = Vec::new();
        entry
            .take(MAX_PICKLE_BYTES)
            .read_to_end(&mut pickle)
            .map_err(|e| invalid(path, format!("{pickle_name}: {e}")))?;
        interpret(&pickle).map_err(|e| invalid(path, format!("{pickle_name}: {e}")))?
    };
    let dir = Path::new(pickle_name.trim_end_matches(".pkl"));
    let state_dict = find_state_dict(object).map_err(|reason| invalid(path, reason))?;

    let mut entries = BTreeMap::new();
    for (key, value) in state_dict {
        let Object::Unicode(name) = &key else {
            continue;
        };
        let name = name.clone();
        let info = match value.into_tensor_info(key, dir) {
            Ok(Some(info)) => info,
            Ok(None) => continue, // not a tensor (e.g. the `_metadata` of a state_dict)
            Err(e) => return Err(invalid(path, format!("tensor `{name}`: {e}"))),
        };
        let tensor = read_tensor(&mut zip, &info, file_len)
            .map_err(|e| invalid(path, format!("tensor `{name}`: {e}")))?;
        let values = match info.dtype {
            DType::F16 | DType::BF16 | DType::F32 | DType::F64 => {
                Some(tensor.to_dtype(DType::F32)?)
            }
            _ => None,
        };
        entries.insert(
            name,
            RawTensor {
                shape: info.layout.dims().to_vec(),
                dtype: format!("{:?}", info.dtype).to_uppercase(),
                values,
            },
        );
    }
    if entries.is_empty() {
        return Err(invalid(path, "it holds no tensors"));
    }
    Ok(RawWeights {
        path: path.to_path_buf(),
        entries: strip_data_parallel_prefix(entries),
        metadata: HashMap::new(),
    })
}

fn is_tensor(value: &Object) -> bool {
    matches!(value, Object::Reduce { .. })
}

/// The dict of tensors: the top-level object, or one nested under a [`NESTED_KEYS`] key.
fn find_state_dict(object: Object) -> std::result::Result<Vec<(Object, Object)>, String> {
    let Object::Dict(items) = object else {
        return Err("the pickle holds no dict of tensors (not a state_dict)".into());
    };
    if items.iter().any(|(_, v)| is_tensor(v)) {
        return Ok(items);
    }
    let keys: Vec<String> = items
        .iter()
        .filter_map(|(k, _)| match k {
            Object::Unicode(s) => Some(format!("`{s}`")),
            _ => None,
        })
        .collect();
    for wanted in NESTED_KEYS {
        if let Some((_, Object::Dict(inner))) = items
            .iter()
            .find(|(k, _)| matches!(k, Object::Unicode(s) if s == wanted))
        {
            if inner.iter().any(|(_, v)| is_tensor(v)) {
                return Ok(inner.clone());
            }
        }
    }
    Err(format!(
        "no tensors at the top level nor under {}; the checkpoint's keys are {}",
        NESTED_KEYS.map(|k| format!("`{k}`")).join(", "),
        if keys.is_empty() {
            "none".to_string()
        } else {
            keys.join(", ")
        }
    ))
}

fn read_tensor<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    info: &candle_core::pickle::TensorInfo,
    file_len: u64,
) -> std::result::Result<Tensor, String> {
    let layout = &info.layout;
    if !layout.is_contiguous() {
        return Err(format!(
            "stored with strides {:?} (not contiguous); re-save it after `.contiguous()`",
            layout.stride()
        ));
    }
    let mut entry = zip.by_name(&info.path).map_err(|e| e.to_string())?;
    let needed = layout
        .shape()
        .elem_count()
        .checked_mul(info.dtype.size_in_bytes())
        .and_then(|n| n.checked_add(layout.start_offset()))
        .ok_or_else(|| format!("shape {:?} is too large", layout.dims()))?;
    // Entries are stored uncompressed (this reader has no deflate: a compressed entry, the stuff
    // of zip bombs, is refused by the zip reader), so a storage larger than the whole file lies
    // about its size: refused before anything is allocated.
    if needed as u64 > file_len {
        return Err(format!(
            "its storage `{}` claims {needed} bytes, more than the file's {file_len}",
            info.path
        ));
    }
    std::io::copy(
        &mut entry.by_ref().take(layout.start_offset() as u64),
        &mut std::io::sink(),
    )
    .map_err(|e| e.to_string())?;
    let mut bytes = vec![0u8; needed - layout.start_offset()];
    entry.read_exact(&mut bytes).map_err(|e| e.to_string())?;
    // torch.save writes storages little-endian, as every platform Candle runs on is.
    Tensor::from_raw_buffer(&bytes, info.dtype, layout.dims(), &Device::Cpu)
        .map_err(|e| e.to_string())
}

/// `DataParallel` saves every name as `module.NAME`.
fn strip_data_parallel_prefix(entries: BTreeMap<String, RawTensor>) -> BTreeMap<String, RawTensor> {
    const PREFIX: &str = "module.";
    if !entries.keys().all(|k| k.starts_with(PREFIX)) {
        return entries;
    }
    entries
        .into_iter()
        .map(|(k, v)| (k[PREFIX.len()..].to_string(), v))
        .collect()
}

/// What the first bytes of a weights file say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A zip archive: the PyTorch checkpoint format since 1.6.
    Zip,
    /// A bare pickle: the legacy PyTorch format (before 1.6, or `_use_new_zipfile_serialization=False`).
    LegacyPickle,
    /// Anything else: read as safetensors.
    Other,
}

/// Recognises a file by its content.
pub fn sniff(path: &Path) -> Result<FileKind> {
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let n = file.read(&mut head).map_err(|e| Error::io(path, e))?;
    Ok(FileKind::of(&head[..n]))
}

impl FileKind {
    /// What a file starting with `head` is.
    pub fn of(head: &[u8]) -> Self {
        match head {
            [b'P', b'K', 3, 4, ..] => FileKind::Zip,
            // PROTO opcode: every pickle since protocol 2 starts with it.
            [0x80, 2..=5, ..] => FileKind::LegacyPickle,
            _ => FileKind::Other,
        }
    }
}

/// The error for a legacy (non-zip) checkpoint, with the way to re-save it.
pub fn legacy_error(path: &Path) -> Error {
    invalid(
        path,
        format!(
            "it is in PyTorch's legacy (non-zip) format, which is not supported; re-save it with \
             PyTorch 1.6 or newer: python -c \"import torch; torch.save(torch.load('{0}', \
             weights_only=True), '{0}.zip.pth')\"",
            path.display()
        ),
    )
}
