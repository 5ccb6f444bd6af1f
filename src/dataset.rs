//! Labelled datasets for measuring accuracy: the CIFAR-100 binary files and image folders whose
//! sub-directories are class names.

use image::RgbImage;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::inputs;

/// Side of a CIFAR image, in pixels.
pub const CIFAR_SIDE: usize = 32;
/// Bytes of one CIFAR-100 binary record: coarse label, fine label, then 3 planes of 32×32.
pub const CIFAR100_RECORD_BYTES: usize = 2 + 3 * CIFAR_SIDE * CIFAR_SIDE;

/// One image of the CIFAR-100 binary version.
#[derive(Clone, Debug)]
pub struct CifarRecord {
    /// The coarse (superclass) label, 0..20.
    pub coarse: u8,
    /// The fine label, 0..100.
    pub fine: u8,
    /// The 32×32 image.
    pub image: RgbImage,
}

/// Reads a CIFAR-100 binary file (`train.bin` or `test.bin` of the binary version): records of
/// one coarse-label byte, one fine-label byte and 3072 pixel bytes, the red plane, then green,
/// then blue, each 32×32 row-major.
///
/// A file whose length is not a whole number of records is refused, naming the record that is
/// cut short; so is an empty file or a label out of range.
pub fn read_cifar100_binary(path: &Path) -> Result<Vec<CifarRecord>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_cifar100_binary(&bytes, path)
}

/// As [`read_cifar100_binary`], from bytes already in memory (`path` names them in errors).
pub fn parse_cifar100_binary(bytes: &[u8], path: &Path) -> Result<Vec<CifarRecord>> {
    let error = |reason: String| Error::Dataset {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(error(
            "the file is empty, expected CIFAR-100 binary records".into(),
        ));
    }
    let whole = bytes.len() / CIFAR100_RECORD_BYTES;
    let rest = bytes.len() % CIFAR100_RECORD_BYTES;
    if rest != 0 {
        return Err(error(format!(
            "truncated: record {whole} (counting from 0) has {rest} of its \
             {CIFAR100_RECORD_BYTES} bytes ({} bytes in all; not a CIFAR-100 binary file?)",
            bytes.len()
        )));
    }
    let plane = CIFAR_SIDE * CIFAR_SIDE;
    bytes
        .chunks_exact(CIFAR100_RECORD_BYTES)
        .enumerate()
        .map(|(i, record)| {
            let (coarse, fine) = (record[0], record[1]);
            if usize::from(coarse) >= crate::labels::CIFAR100_COARSE.len()
                || usize::from(fine) >= crate::labels::CIFAR100_FINE.len()
            {
                return Err(error(format!(
                    "record {i}: labels coarse {coarse}, fine {fine} are out of range \
                     (CIFAR-100 has 20 coarse and 100 fine labels)"
                )));
            }
            let pixels = &record[2..];
            let mut rgb = Vec::with_capacity(3 * plane);
            for p in 0..plane {
                rgb.extend([pixels[p], pixels[plane + p], pixels[2 * plane + p]]);
            }
            let side = CIFAR_SIDE as u32;
            let image = RgbImage::from_raw(side, side, rgb).expect("3 planes of 32×32 bytes");
            Ok(CifarRecord {
                coarse,
                fine,
                image,
            })
        })
        .collect()
}

/// Image files labelled by the name of the class folder they are in.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    /// The dataset's root.
    pub root: PathBuf,
    /// Each image with its class index in the model's labels, sorted by path.
    pub samples: Vec<(PathBuf, usize)>,
    /// Files in class folders that are not images (by their extension).
    pub skipped: Vec<PathBuf>,
}

/// Lists an image folder: every sub-directory of `root` is a class whose name is one of
/// `labels`, and holds that class's images (in it or in folders below it).
///
/// A class folder that names no label is an error listing the unknown names, so that a dataset
/// labelled for another model is not silently scored; a root without class folders too.
pub fn image_folder(root: &Path, labels: &[String]) -> Result<ImageFolder> {
    let error = |reason: String| Error::Dataset {
        path: root.to_path_buf(),
        reason,
    };
    let mut classes: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !is_hidden(p))
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(error(
            "holds no class folders (expected one sub-directory per class, named by its \
             label; for the CIFAR-100 binary version, name its test.bin or train.bin)"
                .into(),
        ));
    }
    let mut unknown = Vec::new();
    let mut indexed = Vec::with_capacity(classes.len());
    for class in classes {
        let name = class
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match labels.iter().position(|l| *l == name) {
            Some(index) => indexed.push((class, index)),
            None => unknown.push(name),
        }
    }
    if !unknown.is_empty() {
        let shown: Vec<_> = unknown.iter().take(5).map(|n| format!("`{n}`")).collect();
        return Err(error(format!(
            "{} class folder(s) name no label of the model: {}{}",
            unknown.len(),
            shown.join(", "),
            if unknown.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        )));
    }
    let mut folder = ImageFolder {
        root: root.to_path_buf(),
        samples: Vec::new(),
        skipped: Vec::new(),
    };
    for (class, index) in indexed {
        let found = inputs::expand([&class]);
        if let Some(problem) = found.problems.into_iter().next() {
            return Err(problem);
        }
        folder
            .samples
            .extend(found.images.into_iter().map(|p| (p, index)));
        folder.skipped.extend(found.skipped);
    }
    Ok(folder)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}
