//! From image files to the network's input: decode, RGB8, resize, scale to [0, 1], normalise,
//! batch, as torchvision's transforms do it on PIL images (torchvision 0.29.2, Pillow 13.0.0).
//!
//! One concern per file: [`decode`] (files to RGB8), `jpeg` (JPEGs through libjpeg-turbo, as
//! Pillow decodes them; the `turbojpeg` feature, without which JPEGs go to the `image` crate and
//! are not bit-exact with Pillow, see [`load_rgb`]), [`resample`] (Pillow's resampling filters) and
//! [`geometry`] (torchvision's `Resize` and `CenterCrop` size arithmetic).

use candle_core::{Device, Tensor};
use image::RgbImage;
use std::path::Path;

use crate::config::{Preprocessing, Resize};
use crate::error::{Error, Result};

pub mod decode;
pub mod geometry;
#[cfg(feature = "turbojpeg")]
mod jpeg;
pub mod resample;

pub use decode::{decode_rgb, load_rgb, MAX_PIXELS};

impl Preprocessing {
    /// Brings an RGB image to the input size as torchvision does on a PIL image:
    /// [`Resize::Stretch`] is `Resize((h, w))`, [`Resize::ShorterSideThenCenterCrop`] is
    /// `Resize(shorter)` then `CenterCrop((h, w))`, each resize Pillow's with the filter of
    /// [`Preprocessing::interpolation`] (a resize to the image's own size leaves it as it is).
    pub fn resize(&self, image: &RgbImage) -> RgbImage {
        let [h, w] = self.input_size.map(|v| v as u32);
        let interpolation = self.interpolation;
        match self.resize {
            Resize::Stretch => resample::resize(image, w, h, interpolation),
            Resize::ShorterSideThenCenterCrop(shorter) => {
                let (nw, nh) = geometry::shorter_side(image.width(), image.height(), shorter);
                let resized = resample::resize(image, nw, nh, interpolation);
                geometry::center_crop(&resized, w, h)
            }
        }
    }

    /// The normalised [3, H, W] tensor of an RGB image: resized, scaled to [0, 1], then
    /// `(x - mean) / std` per channel, in f32.
    pub fn to_tensor(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        let image = self.resize(image);
        let (w, h) = image.dimensions();
        let plane = (w * h) as usize;
        let mut data = vec![0f32; 3 * plane];
        for (i, pixel) in image.pixels().enumerate() {
            for c in 0..3 {
                let x = f32::from(pixel[c]) / 255.0;
                data[c * plane + i] = (x - self.mean[c]) / self.std[c];
            }
        }
        Ok(Tensor::from_vec(data, (3, h as usize, w as usize), device)?)
    }

    /// Loads and preprocesses one image file into a [3, H, W] tensor.
    pub fn load(&self, path: &Path, device: &Device) -> Result<Tensor> {
        self.to_tensor(&load_rgb(path)?, device)
    }

    /// Loads and preprocesses several images into one [N, 3, H, W] batch; the first failure is
    /// returned.
    pub fn load_batch<P: AsRef<Path>>(&self, paths: &[P], device: &Device) -> Result<Tensor> {
        let images = paths
            .iter()
            .map(|p| self.load(p.as_ref(), device))
            .collect::<Result<Vec<_>>>()?;
        batch(&images)
    }
}

/// Stacks [3, H, W] tensors into one [N, 3, H, W] batch.
pub fn batch(images: &[Tensor]) -> Result<Tensor> {
    if images.is_empty() {
        return Err(Error::InvalidInput(
            "cannot make a batch of no images".into(),
        ));
    }
    Ok(Tensor::stack(images, 0)?)
}
