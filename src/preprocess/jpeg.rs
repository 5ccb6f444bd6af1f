//! JPEG files decoded as Pillow decodes them, by libjpeg-turbo itself (built from the source that
//! `turbojpeg-sys` bundles, 3.1.0; Pillow 13.0.0's wheels bundle 3.2.0, whose decoded pixels are
//! the same, see tests/pillow.rs): the accurate integer IDCT and smooth ("fancy") chroma
//! upsampling, libjpeg-turbo's defaults, then `convert("RGB")` as Pillow does it: grayscale
//! replicated, CMYK (always read with Adobe's inverted polarity) to RGB with Pillow's formula.
//!
//! Decoding runs in C; every failure there comes back as an error (libjpeg-turbo's fatal errors
//! jump back inside its own C function, never through Rust frames). Like Pillow, a decode that
//! libjpeg-turbo completes with a warning (corrupt data it can recover from) is kept.

use image::RgbImage;
use std::ffi::{c_int, CStr};
use std::path::Path;
use turbojpeg_sys as tj;

use super::decode::{check_dimensions, image_error, MAX_PIXELS, SCAN_LIMIT};
use crate::error::Result;

/// The decoder's working memory limit (MiB), that of the `image` crate's decoding elsewhere.
const MAX_MEMORY_MIB: c_int = (MAX_PIXELS * 8 / (1024 * 1024)) as c_int;

/// A TurboJPEG decompression instance.
struct Decompressor(tj::tjhandle);

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { tj::tj3Destroy(self.0) }
    }
}

/// What a failed call reports: whether libjpeg-turbo only warned, and its message.
struct Failure {
    warning: bool,
    message: String,
}

impl Decompressor {
    fn new(path: &Path) -> Result<Self> {
        // SAFETY: plain constructor; a null handle is checked below.
        let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as c_int) };
        if handle.is_null() {
            return Err(image_error(path, "cannot start the JPEG decoder"));
        }
        let this = Self(handle);
        this.set(tj::TJPARAM_TJPARAM_SCANLIMIT, SCAN_LIMIT as c_int);
        this.set(tj::TJPARAM_TJPARAM_MAXMEMORY, MAX_MEMORY_MIB);
        Ok(this)
    }

    /// Sets a parameter (those set here are valid for a decompressor: the call cannot fail).
    fn set(&self, param: tj::TJPARAM, value: c_int) {
        // SAFETY: a live handle.
        unsafe { tj::tj3Set(self.0, param as c_int, value) };
    }

    fn get(&self, param: tj::TJPARAM) -> c_int {
        // SAFETY: a live handle.
        unsafe { tj::tj3Get(self.0, param as c_int) }
    }

    /// Turns a call's status into a result.
    fn status(&self, status: c_int) -> std::result::Result<(), Failure> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: a live handle; the message is a NUL-terminated string owned by libjpeg-turbo.
        let (code, message) = unsafe {
            let code = tj::tj3GetErrorCode(self.0);
            let message = CStr::from_ptr(tj::tj3GetErrorStr(self.0));
            (code, message.to_string_lossy().trim().to_string())
        };
        Err(Failure {
            warning: code == tj::TJERR_TJERR_WARNING as c_int,
            message,
        })
    }

    fn read_header(&self, jpeg: &[u8]) -> std::result::Result<(), Failure> {
        // SAFETY: the pointer and length describe `jpeg`, which outlives the call.
        self.status(unsafe { tj::tj3DecompressHeader(self.0, jpeg.as_ptr(), jpeg.len() as _) })
    }

    /// Decompresses into `out`, `channels` bytes a pixel of `format`, `width` pixels a row.
    fn decompress(
        &self,
        jpeg: &[u8],
        out: &mut [u8],
        width: usize,
        channels: usize,
        format: tj::TJPF,
    ) -> std::result::Result<(), Failure> {
        // SAFETY: `out` holds the whole image at this pitch (the caller sizes it from the header
        // read by this handle, with no scaling or cropping set); `jpeg` outlives the call.
        self.status(unsafe {
            tj::tj3Decompress8(
                self.0,
                jpeg.as_ptr(),
                jpeg.len() as _,
                out.as_mut_ptr(),
                (width * channels) as c_int,
                format as c_int,
            )
        })
    }
}

/// Decodes a whole JPEG file to RGB.
pub(super) fn decode(path: &Path, jpeg: &[u8]) -> Result<RgbImage> {
    let decoder = Decompressor::new(path)?;
    let refused = |f: Failure, what: &str| image_error(path, format!("{what}: {}", f.message));
    decoder
        .read_header(jpeg)
        .map_err(|f| refused(f, "not a readable image"))?;
    let (w, h) = (
        decoder.get(tj::TJPARAM_TJPARAM_JPEGWIDTH),
        decoder.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT),
    );
    let (w, h) = (u32::try_from(w).unwrap_or(0), u32::try_from(h).unwrap_or(0));
    check_dimensions(path, w, h)?;
    let colorspace = decoder.get(tj::TJPARAM_TJPARAM_COLORSPACE) as tj::TJCS;
    let cmyk = colorspace == tj::TJCS_TJCS_CMYK || colorspace == tj::TJCS_TJCS_YCCK;
    let (format, channels) = if cmyk {
        (tj::TJPF_TJPF_CMYK, 4)
    } else {
        (tj::TJPF_TJPF_RGB, 3)
    };
    let width = w as usize;
    let mut pixels = vec![0u8; width * h as usize * channels];
    let decompress = |out: &mut [u8]| decoder.decompress(jpeg, out, width, channels, format);
    // Warnings stop the first attempt; if one did, the second runs through them as Pillow does
    // and is kept unless it ends in an error (its message is then no longer the first warning's).
    decoder.set(tj::TJPARAM_TJPARAM_STOPONWARNING, 1);
    if let Err(first) = decompress(&mut pixels) {
        if !first.warning {
            return Err(refused(first, "cannot decode"));
        }
        decoder.set(tj::TJPARAM_TJPARAM_STOPONWARNING, 0);
        match decompress(&mut pixels) {
            Err(again) if !(again.warning && again.message == first.message) => {
                return Err(refused(again, "cannot decode"))
            }
            _ => {}
        }
    }
    let rgb = if cmyk {
        pixels
            .chunks_exact(4)
            .flat_map(inverted_cmyk_to_rgb)
            .collect()
    } else {
        pixels
    };
    Ok(RgbImage::from_raw(w, h, rgb).expect("buffer of the image's size"))
}

/// Pillow's `convert("RGB")` of a CMYK JPEG's samples, stored inverted (Adobe's convention, which
/// Pillow assumes for every CMYK JPEG): with C = 255 − c and K = 255 − k, each of R, G, B is
/// (255 − K) − C·(255 − K)/255, the product divided by 255 with rounding as Pillow does
/// (checked against Pillow for all 65,536 pairs of C and K by tools/make_pillow_fixtures.py).
fn inverted_cmyk_to_rgb(stored: &[u8]) -> [u8; 3] {
    let not_k = u32::from(stored[3]);
    let channel = |c: u8| {
        let t = (255 - u32::from(c)) * not_k + 128;
        (not_k - (((t >> 8) + t) >> 8)) as u8
    };
    [channel(stored[0]), channel(stored[1]), channel(stored[2])]
}
