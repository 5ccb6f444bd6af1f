//! Why the model chose a class: class activation maps (Zhou et al., 2016, "Learning Deep
//! Features for Discriminative Localization"), computed without gradients.
//!
//! A DenseNet ends with global average pooling and one linear layer, so a class's logit is the
//! spatial mean of the final feature maps weighted by that class's row of the linear weight
//! (plus its bias). The same weighted sum taken at every position instead of averaged shows
//! where the evidence for the class lies.

use candle_core::{DType, Device, Tensor};
use image::{Rgb, RgbImage};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::{Model, Prediction};
use crate::pipeline::{infer_decoded, Pipeline};

/// A map over the network's final feature grid, normalised to [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct ActivationMap {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Row-major values in [0, 1]; all zero when nothing speaks for the class.
    pub values: Vec<f32>,
}

impl ActivationMap {
    /// The value at column `x`, row `y`.
    pub fn at(&self, x: usize, y: usize) -> f32 {
        self.values[y * self.width + x]
    }

    /// The map resized to `width`×`height` by bilinear interpolation between the centres of its
    /// cells (row-major).
    pub fn upsampled(&self, width: usize, height: usize) -> Vec<f32> {
        let source = |i: usize, out: usize, len: usize| {
            let x = ((i as f32 + 0.5) * len as f32 / out as f32 - 0.5).clamp(0.0, (len - 1) as f32);
            let lo = x.floor() as usize;
            (lo, (lo + 1).min(len - 1), x - lo as f32)
        };
        let mut values = Vec::with_capacity(width * height);
        for y in 0..height {
            let (y0, y1, ty) = source(y, height, self.height);
            for x in 0..width {
                let (x0, x1, tx) = source(x, width, self.width);
                let top = self.at(x0, y0) * (1.0 - tx) + self.at(x1, y0) * tx;
                let bottom = self.at(x0, y1) * (1.0 - tx) + self.at(x1, y1) * tx;
                values.push(top * (1.0 - ty) + bottom * ty);
            }
        }
        values
    }
}

/// The class activation map of `classes[i]` for image `i` of a normalised batch `[N, 3, H, W]`
/// (or one image `[3, H, W]`): the final feature maps weighted by the class's row of the linear
/// weight, summed over channels, ReLU, divided by the maximum.
pub fn class_activation_maps(
    model: &Model,
    input: &Tensor,
    classes: &[usize],
) -> Result<Vec<ActivationMap>> {
    let input = model.prepare(input)?;
    check_classes(model, input.dim(0)?, classes)?;
    let evidence = match model.fast_path() {
        Some(fast) => fast.forward_with_evidence(&input)?.1,
        None => plain_evidence(model, &input, classes)?,
    };
    maps(&evidence, classes)
}

/// Predicts a batch and maps, for each image, the evidence for its most probable class: one
/// pass of the network where the fast path computes.
pub fn explain(
    model: &Model,
    input: &Tensor,
    k: usize,
) -> Result<Vec<(Prediction, ActivationMap)>> {
    let input = model.prepare(input)?;
    let (predictions, evidence) = match model.fast_path() {
        Some(fast) => {
            let (logits, evidence) = fast.forward_with_evidence(&input)?;
            (model.predictions(&logits, k.max(1))?, Some(evidence))
        }
        None => (model.predict_top_k(&input, k.max(1))?, None),
    };
    let classes: Vec<usize> = predictions.iter().map(|p| p.top_k[0].index).collect();
    let evidence = match evidence {
        Some(evidence) => evidence,
        None => plain_evidence(model, &input, &classes)?,
    };
    let maps = maps(&evidence, &classes)?;
    Ok(predictions.into_iter().zip(maps).collect())
}

/// One class per image, each a class of the model.
fn check_classes(model: &Model, n: usize, classes: &[usize]) -> Result<()> {
    let num_classes = model.config().num_classes;
    if classes.len() != n {
        return Err(Error::InvalidInput(format!(
            "{} classes given for a batch of {n} images",
            classes.len()
        )));
    }
    if let Some(&bad) = classes.iter().find(|&&class| class >= num_classes) {
        return Err(Error::InvalidInput(format!(
            "class {bad} does not exist (the model has {num_classes})"
        )));
    }
    Ok(())
}

/// The evidence of [`crate::fast::FastNet::forward_with_evidence`] from the plain network, for
/// `classes[i]` only (the last axis holds one value, image `i`'s class): the final features of
/// the prepared batch `input` weighted by the class's row of the linear weight.
fn plain_evidence(model: &Model, input: &Tensor, classes: &[usize]) -> Result<Tensor> {
    let network = model.network()?;
    let features = network.features(input)?;
    let (n, c, _, _) = features.dims4()?;
    let index: Vec<u32> = classes.iter().map(|&class| class as u32).collect();
    let index = Tensor::from_vec(index, n, features.device())?;
    let rows = network.linear.weight().index_select(&index, 0)?;
    Ok(features
        .broadcast_mul(&rows.reshape((n, c, 1, 1))?)?
        .sum_keepdim(1)?
        .permute((0, 2, 3, 1))?
        .to_dtype(DType::F32)?)
}

/// The maps of `classes[i]` from image `i`'s evidence `[N, H', W', C]` (C: every class, or one):
/// ReLU, divided by the maximum.
fn maps(evidence: &Tensor, classes: &[usize]) -> Result<Vec<ActivationMap>> {
    let (_, height, width, c) = evidence.dims4()?;
    let evidence = evidence
        .to_device(&Device::Cpu)?
        .flatten_from(1)?
        .to_vec2::<f32>()?;
    Ok(evidence
        .into_iter()
        .zip(classes)
        .map(|(image, &class)| {
            let column = if c == 1 { 0 } else { class };
            let mut values: Vec<f32> = image
                .chunks_exact(c)
                .map(|pixel| pixel[column].max(0.0))
                .collect();
            let max = values.iter().copied().fold(0.0f32, f32::max);
            if max > 0.0 {
                values.iter_mut().for_each(|v| *v /= max);
            }
            ActivationMap {
                width,
                height,
                values,
            }
        })
        .collect())
}

/// Pictures narrower or lower than this are enlarged (by a whole factor, nearest neighbour) so
/// that a 32×32 CIFAR image can be looked at.
pub const MIN_PICTURE_SIDE: u32 = 128;

/// Share of the map's colour in the blend.
const MAP_OPACITY: f32 = 0.5;

/// The image (as the network saw it) on the left and, on the right, the same image with the map
/// upsampled to its size and blended over it in the [`crate::colormap::thermal`] colours.
pub fn side_by_side(image: &RgbImage, map: &ActivationMap) -> RgbImage {
    let (w, h) = image.dimensions();
    let heat = map.upsampled(w as usize, h as usize);
    let scale = MIN_PICTURE_SIDE.div_ceil(w.min(h).max(1)).max(1);
    let mut picture = RgbImage::new(2 * w * scale, h * scale);
    for (x, y, pixel) in image.enumerate_pixels() {
        let colour = crate::colormap::thermal(heat[(y * w + x) as usize]);
        let blended = Rgb([0, 1, 2].map(|c| {
            (f32::from(pixel[c]) * (1.0 - MAP_OPACITY) + f32::from(colour[c]) * MAP_OPACITY).round()
                as u8
        }));
        for dy in 0..scale {
            for dx in 0..scale {
                picture.put_pixel(x * scale + dx, y * scale + dy, *pixel);
                picture.put_pixel((w + x) * scale + dx, y * scale + dy, blended);
            }
        }
    }
    picture
}

/// Writes explanation pictures into one folder: `<image stem>.cam.png`, with `-2`, `-3`... when
/// two images of a run share a stem. Files are written atomically; an existing file is replaced
/// only when `overwrite` is set.
#[derive(Debug)]
pub struct ExplanationWriter {
    dir: PathBuf,
    overwrite: bool,
    taken: HashSet<PathBuf>,
}

impl ExplanationWriter {
    /// Creates `dir` if need be.
    pub fn new(dir: &Path, overwrite: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            overwrite,
            taken: HashSet::new(),
        })
    }

    /// Writes the picture for `source` and returns where.
    pub fn write(&mut self, source: &Path, picture: &RgbImage) -> Result<PathBuf> {
        let stem = source
            .file_stem()
            .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
        let mut path = self.dir.join(format!("{stem}.cam.png"));
        let mut n = 2;
        while self.taken.contains(&path) {
            path = self.dir.join(format!("{stem}-{n}.cam.png"));
            n += 1;
        }
        self.taken.insert(path.clone());
        crate::eval::write_png(picture, &path, self.overwrite)?;
        Ok(path)
    }
}

/// Classifies image files as [`Pipeline::classify_files`] does and, for each, draws the
/// [`side_by_side`] picture of its most probable class; `each` gets every file with its
/// prediction and picture (or the reason it could not be read), in input order.
pub fn explain_files<P, E>(
    pipeline: &Pipeline,
    model: &Model,
    files: &[P],
    k: usize,
    mut each: E,
) -> Result<()>
where
    P: AsRef<Path> + Sync,
    E: FnMut(&Path, Result<(Prediction, RgbImage)>) -> Result<()>,
{
    let preprocessing = model.preprocessing();
    pipeline.run(
        files,
        |file| {
            let seen = preprocessing.resize(&crate::preprocess::load_rgb(file.as_ref())?);
            let tensor = preprocessing.to_tensor(&seen, &Device::Cpu)?;
            Ok((seen, tensor))
        },
        |chunk, decoded| {
            let results = infer_decoded(decoded, |images| {
                let tensors: Vec<Tensor> = images.iter().map(|(_, t)| t.clone()).collect();
                explain(model, &crate::preprocess::batch(&tensors)?, k)
            })?;
            for (file, result) in chunk.iter().zip(results) {
                let outcome = result
                    .map(|((seen, _), (prediction, map))| (prediction, side_by_side(&seen, &map)));
                each(file.as_ref(), outcome)?;
            }
            Ok(())
        },
    )
}
