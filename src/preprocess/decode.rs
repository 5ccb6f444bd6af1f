//! Image files to 8-bit RGB, with the guarantees against hostile input: decompression bombs
//! refused from the header, truncated JPEGs refused, decoder panics caught. JPEGs go to
//! libjpeg-turbo (`jpeg`), the other formats to the `image` crate.

use image::{DynamicImage, ImageFormat, ImageReader, RgbImage};
use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, Result};

/// Images with more pixels than this are refused before their pixels are allocated
/// (a decompression bomb declares enormous dimensions in a few bytes).
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

pub(super) fn image_error(path: &Path, reason: impl ToString) -> Error {
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
        Some(ImageFormat::Jpeg) => return super::jpeg::decode(path, &read_jpeg(path, open()?)?),
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

/// The largest JPEG file read (libjpeg-turbo decodes from memory).
const MAX_JPEG_BYTES: u64 = MAX_PIXELS * 8;

/// Reads a whole JPEG file, refusing one over [`MAX_JPEG_BYTES`] before reading it.
fn read_jpeg(path: &Path, mut source: impl Read + Seek) -> Result<Vec<u8>> {
    let len = source
        .seek(SeekFrom::End(0))
        .and_then(|len| source.seek(SeekFrom::Start(0)).map(|_| len))
        .map_err(|e| Error::io(path, e))?;
    if len > MAX_JPEG_BYTES {
        return Err(image_error(
            path,
            format!("the JPEG file is {len} bytes, more than the limit of {MAX_JPEG_BYTES}"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    source
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

pub(super) fn check_dimensions(path: &Path, w: u32, h: u32) -> Result<()> {
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
