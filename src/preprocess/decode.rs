//! Image files to 8-bit RGB, with the guarantees against hostile input: decompression bombs
//! refused from the header, truncated JPEGs refused, decoder panics caught. JPEGs go to
//! libjpeg-turbo (`jpeg`, with the `turbojpeg` feature), the other formats, and JPEGs in a build
//! without that feature, to the `image` crate.

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
/// JPEGs decode to Pillow's pixels with the `turbojpeg` feature (libjpeg-turbo, as Pillow uses
/// it). Without it they are decoded by the `image` crate, which is **not bit-exact with Pillow**:
/// its IDCT and chroma upsampling differ from libjpeg-turbo's, so pixels may be off by a few
/// levels and the probabilities differ slightly from those of a PyTorch evaluation.
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

/// Decodes what `open` reads (called more than once: for the header, then for the pixels).
fn decode<R: BufRead + Seek>(path: &Path, open: impl Fn() -> Result<R>) -> Result<RgbImage> {
    let reader = with_format(path, open()?)?;
    match reader.format() {
        None => Err(image_error(
            path,
            "not an image in a supported format (PNG, JPEG, BMP, GIF, WebP, TIFF)",
        )),
        Some(ImageFormat::Jpeg) => {
            let jpeg = read_jpeg(path, open()?)?;
            check_end(path, &jpeg)?;
            decode_jpeg(path, &jpeg)
        }
        Some(_) => decode_with_image(path, reader, open),
    }
}

/// As Pillow decodes it, by libjpeg-turbo.
#[cfg(feature = "turbojpeg")]
fn decode_jpeg(path: &Path, jpeg: &[u8]) -> Result<RgbImage> {
    super::jpeg::decode(path, jpeg)
}

/// By the `image` crate's decoder, whose pixels are close to Pillow's but not the same (another
/// IDCT and chroma upsampling than libjpeg-turbo's). That decoder has no scan limit of its own.
#[cfg(not(feature = "turbojpeg"))]
fn decode_jpeg(path: &Path, jpeg: &[u8]) -> Result<RgbImage> {
    if scans(jpeg) > SCAN_LIMIT {
        return Err(image_error(
            path,
            format!("the JPEG has more than {SCAN_LIMIT} scans"),
        ));
    }
    let open = || Ok(Cursor::new(jpeg));
    decode_with_image(path, with_format(path, open()?)?, open)
}

/// The start-of-scan markers of a JPEG, found by walking its segments (skipped by their length,
/// so that an embedded thumbnail's do not count) and the entropy-coded data between them.
#[cfg(not(feature = "turbojpeg"))]
fn scans(jpeg: &[u8]) -> usize {
    let mut count = 0;
    let mut i = 2; // after the start-of-image marker
    while i + 4 <= jpeg.len() {
        if jpeg[i] != 0xFF {
            i += 1;
            continue;
        }
        match jpeg[i + 1] {
            // A stuffed zero byte, a restart marker or fill: still in entropy-coded data.
            0x00 | 0xD0..=0xD7 | 0xFF => i += 1,
            0xD9 => break,
            marker => {
                count += usize::from(marker == 0xDA);
                i += 2 + usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
            }
        }
    }
    count
}

fn with_format<R: BufRead + Seek>(path: &Path, source: R) -> Result<ImageReader<R>> {
    ImageReader::new(source)
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))
}

/// Decodes with the `image` crate: the dimensions from `reader`'s header, checked before the
/// pixels are read from a new `open()` within the memory limit.
fn decode_with_image<R: BufRead + Seek>(
    path: &Path,
    reader: ImageReader<R>,
    open: impl Fn() -> Result<R>,
) -> Result<RgbImage> {
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| image_error(path, format!("not a readable image: {e}")))?;
    check_dimensions(path, w, h)?;
    let mut reader = with_format(path, open()?)?;
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

/// Progressive scans allowed in a JPEG: a legitimate file has a few dozen at most, while a hostile
/// one can make the decoder spend minutes on thousands of tiny scans.
pub(super) const SCAN_LIMIT: usize = 500;

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

/// How far from its end a JPEG's end-of-image marker is looked for (data after it is allowed).
const JPEG_TAIL: usize = 64 * 1024;

/// Refuses a JPEG without an end-of-image marker after its last scan: the decoder would fill the
/// missing rows with grey (Pillow refuses such files too).
fn check_end(path: &Path, jpeg: &[u8]) -> Result<()> {
    let tail = &jpeg[jpeg.len().saturating_sub(JPEG_TAIL)..];
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
