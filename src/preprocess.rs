//! From image files to the network's input: decode, RGB8, resize, scale to [0, 1], normalise,
//! batch.

use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, RgbImage};
use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use crate::config::{Interpolation, Preprocessing, Resize};
use crate::error::{Error, Result};

/// Images with more pixels than this are refused before their pixels are allocated
/// (a decompression bomb declares enormous dimensions in a few bytes).
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

impl Interpolation {
    /// The `image` crate's filter. Its support widens with the scale factor when shrinking, so
    /// that downsizing averages every source pixel (like PIL's resize with antialiasing, which
    /// torchvision and timm use).
    pub fn filter(self) -> FilterType {
        match self {
            Self::Bilinear => FilterType::Triangle,
            Self::Bicubic => FilterType::CatmullRom,
            Self::Nearest => FilterType::Nearest,
        }
    }
}

fn image_error(path: &Path, reason: impl ToString) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Decodes an image file (PNG, JPEG, BMP, GIF (first frame), WebP or TIFF, recognised by its
/// content) into 8-bit RGB: grayscale is replicated, alpha dropped, 16-bit scaled down.
///
/// The header is read first and an image of more than [`MAX_PIXELS`] pixels is refused before its
/// pixels are allocated; decoding is limited to `8 × MAX_PIXELS` bytes. A decoder that panics on
/// corrupt data is caught and reported as [`Error::Image`].
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    if path.is_dir() {
        return Err(image_error(path, "is a directory, not an image"));
    }
    guarded(path, || {
        decode(path, || {
            std::fs::File::open(path)
                .map(BufReader::new)
                .map_err(|e| Error::io(path, e))
        })
    })
}

/// As [`load_rgb`], from the bytes of an image file in memory; `name` only names it in errors.
pub fn decode_rgb(name: &Path, bytes: &[u8]) -> Result<RgbImage> {
    guarded(name, || decode(name, || Ok(Cursor::new(bytes))))
}

/// Runs a decoder, turning a panic on corrupt data into an error.
fn guarded(path: &Path, decode: impl FnOnce() -> Result<RgbImage>) -> Result<RgbImage> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|_| {
        Err(image_error(
            path,
            "cannot decode: the decoder failed on corrupt data",
        ))
    })
}

/// Decodes what `open` reads (called twice: once for the header, once for the pixels).
fn decode<R: BufRead + Seek>(path: &Path, open: impl Fn() -> Result<R>) -> Result<RgbImage> {
    let with_format = |source: R| {
        ImageReader::new(source)
            .with_guessed_format()
            .map_err(|e| Error::io(path, e))
    };
    let reader = with_format(open()?)?;
    match reader.format() {
        None => {
            return Err(image_error(
                path,
                "not an image in a supported format (PNG, JPEG, BMP, GIF, WebP, TIFF)",
            ))
        }
        Some(ImageFormat::Jpeg) => check_jpeg_end(path, &mut open()?)?,
        Some(_) => {}
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| image_error(path, format!("not a readable image: {e}")))?;
    check_dimensions(path, w, h)?;
    let mut reader = with_format(open()?)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| image_error(path, format!("cannot decode: {e}")))?;
    Ok(to_rgb8(image))
}

/// How far from its end a JPEG's end-of-image marker is looked for (data after it is allowed).
const JPEG_TAIL: u64 = 64 * 1024;

/// Refuses a JPEG without an end-of-image marker after its last scan: the decoder would fill the
/// missing rows with grey and report success (Pillow refuses such files too).
fn check_jpeg_end(path: &Path, source: &mut (impl Read + Seek)) -> Result<()> {
    let mut tail = Vec::new();
    source
        .seek(SeekFrom::End(0))
        .and_then(|len| source.seek(SeekFrom::Start(len.saturating_sub(JPEG_TAIL))))
        .and_then(|_| source.take(JPEG_TAIL).read_to_end(&mut tail))
        .map_err(|e| Error::io(path, e))?;
    // Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so
    // FF D9 (end of image) and FF DA (start of scan) are real markers.
    let eoi = tail.windows(2).rposition(|w| w == [0xFF, 0xD9]);
    let complete = eoi.is_some_and(|i| !tail[i..].windows(2).any(|w| w == [0xFF, 0xDA]));
    if complete {
        Ok(())
    } else {
        Err(image_error(
            path,
            "truncated: the JPEG has no end-of-image marker after its last scan",
        ))
    }
}

fn check_dimensions(path: &Path, w: u32, h: u32) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(image_error(path, format!("image has no pixels ({w}×{h})")));
    }
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(image_error(
            path,
            format!("image is {w}×{h}, more than the limit of {MAX_PIXELS} pixels"),
        ));
    }
    Ok(())
}

fn to_rgb8(image: DynamicImage) -> RgbImage {
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    }
}

impl Preprocessing {
    /// Brings an RGB image to the input size as [`Preprocessing::resize`] says; an image already
    /// of that size is left untouched.
    pub fn resize(&self, image: &RgbImage) -> RgbImage {
        let [h, w] = self.input_size.map(|v| v as u32);
        if image.dimensions() == (w, h) {
            return image.clone();
        }
        let filter = self.interpolation.filter();
        match self.resize {
            Resize::Stretch => image::imageops::resize(image, w, h, filter),
            Resize::ShorterSideThenCenterCrop(shorter) => {
                let (iw, ih) = image.dimensions();
                let long = |l: u32, s: u32| {
                    ((f64::from(l) * f64::from(shorter) / f64::from(s)) as u32).max(shorter)
                };
                let (nw, nh) = if iw <= ih {
                    (shorter, long(ih, iw))
                } else {
                    (long(iw, ih), shorter)
                };
                let resized = image::imageops::resize(image, nw, nh, filter);
                // Centred as torchvision's CenterCrop rounds it; a crop larger than the resized
                // image (a shorter side below the input size) is resized to fit instead.
                let offset = |n: u32, c: u32| (f64::from(n.saturating_sub(c)) / 2.0).round() as u32;
                let cropped =
                    image::imageops::crop_imm(&resized, offset(nw, w), offset(nh, h), w, h)
                        .to_image();
                if cropped.dimensions() == (w, h) {
                    cropped
                } else {
                    image::imageops::resize(&cropped, w, h, filter)
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_decoder_becomes_an_error() {
        let path = Path::new("corrupt.png");
        let err = guarded(path, || panic!("index out of bounds in a decoder")).unwrap_err();
        assert!(matches!(err, Error::Image { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("corrupt.png: cannot decode"), "{msg}");
    }
}
