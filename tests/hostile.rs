//! Hostile input and heavy use: crafted images, tensors and safetensors files give typed errors
//! that name the file and the problem; failed writes leave nothing behind; one model serves many
//! threads with identical results.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use densenet::preprocess::{decode_rgb, load_rgb, MAX_PIXELS};
use densenet::weights::{read_safetensors_bytes, write_atomically, MAX_HEADER_BYTES};
use densenet::{Error, Model};
use image::{ImageFormat, Rgb, RgbImage};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Images

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The error for an image that must be refused: `Error::Image` (or `Io`) naming the file.
fn image_refused(path: &Path) -> String {
    match load_rgb(path) {
        Ok(img) => panic!("{} decoded to {:?}", path.display(), img.dimensions()),
        Err(e) => {
            assert!(matches!(e, Error::Image { .. } | Error::Io { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            msg
        }
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend(kind);
    out.extend(data);
    let crc = crc32(&out[start..]);
    out.extend(crc.to_be_bytes());
}

/// A PNG whose header declares `w`×`h` RGB8, followed by a few bytes of (garbage) image data.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A GIF whose screen and first frame are `w`×`h`.
fn gif_header(w: u16, h: u16) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend(w.to_le_bytes());
    out.extend(h.to_le_bytes());
    out.extend([0x80, 0, 0]); // global colour table of 2 entries
    out.extend([0, 0, 0, 255, 255, 255]);
    out.push(0x2C);
    out.extend([0, 0, 0, 0]);
    out.extend(w.to_le_bytes());
    out.extend(h.to_le_bytes());
    out.push(0);
    out.extend([2, 2, 0x4C, 0x01, 0, 0x3B]);
    out
}

/// A 24-bit BMP whose header declares `w`×`h`, with no pixels.
fn bmp_header(w: i32, h: i32) -> Vec<u8> {
    let mut out = b"BM".to_vec();
    out.extend(54u32.to_le_bytes());
    out.extend([0; 4]);
    out.extend(54u32.to_le_bytes());
    out.extend(40u32.to_le_bytes());
    out.extend(w.to_le_bytes());
    out.extend(h.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(24u16.to_le_bytes());
    out.extend([0; 24]);
    out
}

/// A baseline JPEG whose frame header declares `w`×`h`, with a few bytes of scan data.
fn jpeg_header(w: u16, h: u16) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8];
    out.extend([0xFF, 0xDB, 0, 67, 0]);
    out.extend([1; 64]);
    out.extend([0xFF, 0xC0, 0, 11, 8]);
    out.extend(h.to_be_bytes());
    out.extend(w.to_be_bytes());
    out.extend([1, 1, 0x11, 0]);
    out.extend([0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0]);
    out.extend([0; 16]);
    out.extend([0xFF, 0xD9]);
    out
}

/// A grayscale TIFF whose only IFD declares `w`×`h`, with one byte of strip data.
fn tiff_header(w: u32, h: u32) -> Vec<u8> {
    let entries: [(u16, u16, u32); 9] = [
        (256, 4, w), // ImageWidth
        (257, 4, h), // ImageLength
        (258, 3, 8), // BitsPerSample
        (259, 3, 1), // Compression: none
        (262, 3, 1), // PhotometricInterpretation: BlackIsZero
        (273, 4, 8), // StripOffsets
        (277, 3, 1), // SamplesPerPixel
        (278, 4, h), // RowsPerStrip
        (279, 4, 1), // StripByteCounts
    ];
    let mut out = b"II*\0".to_vec();
    out.extend(8u32.to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        out.extend(tag.to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        if kind == 3 {
            out.extend((value as u16).to_le_bytes());
            out.extend([0, 0]);
        } else {
            out.extend(value.to_le_bytes());
        }
    }
    out.extend(0u32.to_le_bytes());
    out
}

/// An extended WebP whose canvas is `w`×`h`, followed by a tiny lossless bitstream header.
fn webp_header(w: u32, h: u32) -> Vec<u8> {
    let mut vp8x = vec![0u8; 4];
    vp8x.extend(&(w - 1).to_le_bytes()[..3]);
    vp8x.extend(&(h - 1).to_le_bytes()[..3]);
    let vp8l = [0x2F, 0, 0, 0, 0];
    let mut body = b"WEBP".to_vec();
    body.extend(b"VP8X");
    body.extend((vp8x.len() as u32).to_le_bytes());
    body.extend(&vp8x);
    body.extend(b"VP8L");
    body.extend((vp8l.len() as u32).to_le_bytes());
    body.extend(vp8l);
    body.push(0);
    let mut out = b"RIFF".to_vec();
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

#[test]
fn decompression_bombs_are_refused_from_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let bombs = [
        ("bomb.png", png_header(100_000, 100_000)),
        ("bomb.gif", gif_header(65_535, 65_535)),
        ("bomb.bmp", bmp_header(60_000, 60_000)),
        ("bomb.jpg", jpeg_header(65_000, 65_000)),
        ("bomb.tiff", tiff_header(100_000, 100_000)),
        ("bomb.webp", webp_header(10_000, 10_000)),
    ];
    for (name, bytes) in bombs {
        // Decoding any of these would allocate 10 to 30 GB; refusing takes microseconds.
        let start = Instant::now();
        let path = write(dir.path(), name, &bytes);
        let msg = image_refused(&path);
        assert!(
            msg.contains("pixels") && msg.contains(&MAX_PIXELS.to_string()),
            "{name}: {msg}"
        );
        assert!(start.elapsed() < Duration::from_secs(2), "{name}: slow");
    }
}

/// A progressive JPEG whose last scan is repeated until the file has `scans` of them (libjpeg
/// reads each again: a few bytes make the decoder work through every coefficient once per scan).
fn jpeg_with_scans(scans: usize) -> Vec<u8> {
    let jpeg = std::fs::read(fixture("pillow/jpeg/q75_420_progressive.jpg")).unwrap();
    let is_sos = |w: &[u8]| w == [0xFF, 0xDA];
    let first = jpeg.windows(2).position(is_sos).unwrap();
    let last = jpeg.windows(2).rposition(is_sos).unwrap();
    let existing = jpeg[first..].windows(2).filter(|w| is_sos(w)).count();
    let end = jpeg.len() - 2;
    assert_eq!(jpeg[end..], [0xFF, 0xD9]);
    let mut out = jpeg[..end].to_vec();
    for _ in existing..scans {
        out.extend_from_slice(&jpeg[last..end]);
    }
    out.extend([0xFF, 0xD9]);
    out
}

#[test]
fn jpegs_with_too_many_progressive_scans_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let msg = image_refused(&write(dir.path(), "scans.jpg", &jpeg_with_scans(10_000)));
    assert!(msg.contains("more than 500 scans"), "{msg}");
    assert!(start.elapsed() < Duration::from_secs(5), "slow");
    // The repeated scan itself is harmless below the limit (libjpeg-turbo warns, Pillow decodes).
    assert_eq!(
        load_rgb(&write(dir.path(), "some.jpg", &jpeg_with_scans(40)))
            .unwrap()
            .dimensions(),
        (61, 47)
    );
}

#[test]
fn jpeg_files_beyond_the_size_limit_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.jpg");
    let file = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut &file, &jpeg_header(16, 16)).unwrap();
    // Sparse: 512 MiB + 1 byte on disk cost nothing.
    file.set_len(MAX_PIXELS * 8 + 1).unwrap();
    let start = Instant::now();
    let msg = image_refused(&path);
    assert!(msg.contains("more than the limit"), "{msg}");
    assert!(start.elapsed() < Duration::from_secs(2), "slow");
}

#[test]
fn images_without_pixels_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("empty.gif", gif_header(0, 0)),
        ("empty.png", png_header(0, 0)),
        ("empty.bmp", bmp_header(0, 16)),
        ("empty.tiff", tiff_header(0, 0)),
        ("empty.jpg", jpeg_header(16, 0)),
        ("zero-bytes.png", Vec::new()),
    ] {
        image_refused(&write(dir.path(), name, &bytes));
    }
}

#[test]
fn one_pixel_image_fills_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dot.png");
    RgbImage::from_pixel(1, 1, Rgb([200, 100, 50]))
        .save(&path)
        .unwrap();
    let prep = densenet::Preprocessing::cifar100();
    let t = prep.load(&path, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[3, 32, 32]);
    for (c, value) in [200.0f32, 100.0, 50.0].into_iter().enumerate() {
        let plane = t
            .get(c)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let expected = (value / 255.0 - prep.mean[c]) / prep.std[c];
        assert!(plane.iter().all(|&v| (v - expected).abs() < 1e-5), "{c}");
    }
}

/// A 24×20 gradient, so that every format has real content to corrupt.
fn gradient() -> RgbImage {
    RgbImage::from_fn(24, 20, |x, y| {
        Rgb([(x * 10) as u8, (y * 12) as u8, ((x + y) * 5) as u8])
    })
}

const FORMATS: [(ImageFormat, &str); 6] = [
    (ImageFormat::Png, "png"),
    (ImageFormat::Jpeg, "jpg"),
    (ImageFormat::Bmp, "bmp"),
    (ImageFormat::Gif, "gif"),
    (ImageFormat::WebP, "webp"),
    (ImageFormat::Tiff, "tiff"),
];

fn encoded(format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(gradient())
        .write_to(&mut bytes, format)
        .unwrap();
    bytes.into_inner()
}

#[test]
fn truncated_images_of_every_format_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (format, ext) in FORMATS {
        let bytes = encoded(format);
        let whole = write(dir.path(), &format!("whole.{ext}"), &bytes);
        assert_eq!(
            load_rgb(&whole).unwrap(),
            decode_rgb(&whole, &bytes).unwrap(),
            "{ext}"
        );
        assert_eq!(load_rgb(&whole).unwrap().dimensions(), (24, 20), "{ext}");
        for eighths in 0..8 {
            let cut = bytes.len() * eighths / 8;
            let path = write(dir.path(), &format!("cut{eighths}.{ext}"), &bytes[..cut]);
            let msg = image_refused(&path);
            // The in-memory entry point (used by the fuzz target) says the same.
            let from_memory = decode_rgb(&path, &bytes[..cut]).unwrap_err();
            assert_eq!(from_memory.to_string(), msg);
        }
    }
}

/// Deterministic byte edits: every result is either an image or a typed error naming the file.
#[test]
fn corrupted_images_of_every_format_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (format, ext) in FORMATS {
        let bytes = encoded(format);
        let path = dir.path().join(format!("corrupt.{ext}"));
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..120 {
            let mut bad = bytes.clone();
            for _ in 0..1 + round % 4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state % bad.len() as u64) as usize;
                bad[at] = if round % 2 == 0 {
                    !bad[at]
                } else {
                    (state >> 32) as u8
                };
            }
            std::fs::write(&path, &bad).unwrap();
            match load_rgb(&path) {
                Ok(img) => assert!(u64::from(img.width()) * u64::from(img.height()) <= MAX_PIXELS),
                Err(e) => {
                    assert!(matches!(e, Error::Image { .. }), "{ext} {round}: {e:?}");
                    assert!(e.to_string().contains("corrupt."), "{e}");
                }
            }
        }
    }
}

#[test]
fn cmyk_jpeg_becomes_rgb() {
    // Made by tools/make_hostile_fixtures.py: cyan left half, magenta right half.
    let img = load_rgb(&fixture("hostile/cmyk.jpg")).unwrap();
    assert_eq!(img.dimensions(), (16, 8));
    let close = |p: &Rgb<u8>, q: [u8; 3]| p.0.iter().zip(q).all(|(&a, b)| a.abs_diff(b) <= 12);
    assert!(
        close(img.get_pixel(2, 4), [0, 255, 255]),
        "{:?}",
        img.get_pixel(2, 4)
    );
    assert!(
        close(img.get_pixel(13, 4), [255, 0, 255]),
        "{:?}",
        img.get_pixel(13, 4)
    );
}

#[test]
fn sixteen_bit_png_is_scaled_to_eight_bits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.png");
    image::ImageBuffer::<Rgb<u16>, _>::from_pixel(5, 3, Rgb([65535, 0, 0x8080]))
        .save(&path)
        .unwrap();
    let img = load_rgb(&path).unwrap();
    assert_eq!(img.dimensions(), (5, 3));
    assert!(
        img.pixels().all(|p| p.0 == [255, 0, 128]),
        "{:?}",
        img.get_pixel(0, 0)
    );
}

#[test]
fn animated_gif_uses_its_first_frame() {
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame, RgbaImage};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blink.gif");
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        for colour in [[255, 0, 0, 255], [0, 0, 255, 255]] {
            let frame = RgbaImage::from_pixel(8, 6, image::Rgba(colour));
            encoder
                .encode_frame(Frame::from_parts(
                    frame,
                    0,
                    0,
                    Delay::from_numer_denom_ms(100, 1),
                ))
                .unwrap();
        }
    }
    std::fs::write(&path, &bytes).unwrap();
    let img = load_rgb(&path).unwrap();
    assert_eq!(img.dimensions(), (8, 6));
    assert!(
        img.pixels().all(|p| p.0 == [255, 0, 0]),
        "{:?}",
        img.get_pixel(0, 0)
    );
}

#[test]
fn directories_named_like_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["photo.jpg", "scan.png", "x.webp"] {
        let folder = dir.path().join(name);
        std::fs::create_dir(&folder).unwrap();
        assert!(image_refused(&folder).contains("directory"));
    }
}

#[cfg(feature = "cli")]
#[test]
fn classify_reports_hostile_images_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("weights")).unwrap();
    deterministic_model(small_config(100))
        .save(dir.path().join("weights/model.safetensors"), false)
        .unwrap();
    write(dir.path(), "bomb.png", &png_header(100_000, 100_000));
    write(dir.path(), "cut.gif", &encoded(ImageFormat::Gif)[..40]);
    std::fs::create_dir(dir.path().join("folder.jpg")).unwrap();
    gradient().save(dir.path().join("good.png")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_classify"))
        .current_dir(dir.path())
        .args(["bomb.png", "cut.gif", "folder.jpg", "good.png"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for name in ["bomb.png", "cut.gif", "folder.jpg"] {
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
    assert!(stderr.contains("pixels"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("good.png"));
}

// ---------------------------------------------------------------------------------------------
// Tensors given to predict

fn small_model() -> Model {
    deterministic_model(small_config(10))
}

fn refused(model: &Model, x: &Tensor) -> String {
    match model.predict(x) {
        Ok(_) => panic!("{:?} {:?} was accepted", x.dims(), x.dtype()),
        Err(Error::InvalidInput(msg)) => msg,
        Err(other) => panic!("{other:?}"),
    }
}

#[test]
fn tensors_of_the_wrong_form_are_refused() {
    let model = small_model();
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    let scalar = Tensor::new(1f32, &Device::Cpu).unwrap();
    assert!(refused(&model, &scalar).contains("rank 0"));
    assert!(refused(&model, &zeros(&[3072])).contains("rank 1"));
    assert!(refused(&model, &zeros(&[1, 1, 1, 3, 32, 32])).contains("rank 6"));
    for c in [0, 1, 4] {
        assert!(
            refused(&model, &zeros(&[1, c, 32, 32])).contains("channels"),
            "{c}"
        );
    }
    assert!(refused(&model, &zeros(&[0, 3, 32, 32])).contains("empty"));
    // Two transitions halve the size twice: 4×4 is the least that pools down.
    for (h, w) in [(3, 32), (32, 3), (1, 1), (0, 0), (3, 0)] {
        assert!(
            refused(&model, &zeros(&[3, h, w])).contains("too small"),
            "{h}×{w}"
        );
    }
    assert_eq!(model.predict(&zeros(&[3, 4, 4])).unwrap().len(), 1);
    let ints = Tensor::zeros((1, 3, 32, 32), DType::I64, &Device::Cpu).unwrap();
    assert!(refused(&model, &ints).contains("float"));
}

#[test]
fn non_finite_and_overflowing_values_are_refused() {
    let model = small_model();
    for (bad, image) in [(f32::NAN, 0), (f32::INFINITY, 2), (f32::NEG_INFINITY, 1)] {
        let mut values = vec![0.1f32; 3 * 3 * 8 * 8];
        values[image * 3 * 64 + 5] = bad;
        let x = Tensor::from_vec(values, (3, 3, 8, 8), &Device::Cpu).unwrap();
        let msg = refused(&model, &x);
        assert!(
            msg.contains("NaN or infinite") && msg.contains(&format!("image {image}")),
            "{msg}"
        );
    }
    for v in [f32::MAX, -1e30, 1.5e6] {
        let huge = Tensor::full(v, (2, 3, 8, 8), &Device::Cpu).unwrap();
        assert!(refused(&model, &huge).contains("beyond ±1e6"), "{v}");
    }
    assert_eq!(
        model
            .predict(&Tensor::full(-1e6f32, (3, 8, 8), &Device::Cpu).unwrap())
            .unwrap()
            .len(),
        1
    );
    // F64 values beyond f32's range become infinite on conversion: refused too.
    let beyond = Tensor::full(1e300f64, (1, 3, 8, 8), &Device::Cpu).unwrap();
    assert!(refused(&model, &beyond).contains("NaN or infinite"));
}

#[test]
fn weights_that_overflow_are_refused_at_prediction() {
    let info = deterministic_model(small_config(10)).info().clone();
    let mut tensors = std::collections::HashMap::new();
    for spec in densenet::weights::state_dict_spec(&info.config).unwrap() {
        if spec.kind != densenet::weights::TensorKind::Counter {
            // Features after the last ReLU are non-negative: all-MAX weights overflow.
            let t = if spec.name == "linear.weight" {
                Tensor::full(f32::MAX, spec.shape.as_slice(), &Device::Cpu).unwrap()
            } else {
                deterministic(&spec.name, &spec.shape)
            };
            tensors.insert(spec.name, t);
        }
    }
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let model = Model::from_varbuilder(vb, info).unwrap();
    let x = Tensor::ones((2, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(refused(&model, &x).contains("non-finite logits"));
}

#[test]
fn strided_views_predict_like_contiguous_tensors() {
    let model = small_model();
    let x = load_fixture("seed_small_io.safetensors")
        .remove("input")
        .unwrap();
    let transposed = x.transpose(2, 3).unwrap().contiguous().unwrap();
    let view = transposed.transpose(2, 3).unwrap();
    assert!(!view.is_contiguous());
    let a = model.predict(&x).unwrap();
    let b = model.predict(&view).unwrap();
    assert_eq!(a, b);
}

// ---------------------------------------------------------------------------------------------
// safetensors files

/// A safetensors file: the 8-byte length, `header`, then `data`.
fn st_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// Loads `bytes` as a file and from memory: both must be `InvalidWeights` naming the file and
/// saying `problem`.
fn weights_refused(bytes: &[u8], problem: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "hostile.safetensors", bytes);
    let err = match Model::load(&path) {
        Ok(_) => panic!("loaded"),
        Err(e) => e,
    };
    assert!(matches!(err, Error::InvalidWeights { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("hostile.safetensors") && msg.contains(problem),
        "{msg}"
    );
    let from_memory = read_safetensors_bytes(&path, bytes)
        .unwrap_err()
        .to_string();
    assert_eq!(from_memory, msg);
}

const F32X4: &str = r#"{"dtype":"F32","shape":[4],"data_offsets":"#;

#[test]
fn short_files_are_refused() {
    weights_refused(b"", "0 bytes, too short");
    weights_refused(b"\x10\0\0\0\0", "5 bytes, too short");
    weights_refused(&0u64.to_le_bytes(), "JSON header is invalid");
}

#[test]
fn header_length_beyond_the_file_is_refused() {
    let mut bytes = st_bytes(
        r#"{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}"#,
        &[0; 4],
    );
    bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
    weights_refused(
        &bytes,
        "header length 1000 is larger than the rest of the file",
    );
}

#[test]
fn huge_headers_are_refused_before_reading() {
    // Declared only: nothing of that size is read or allocated.
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend(b"{}");
    weights_refused(&bytes, "exceeds the limit");
    // Really that large (a JSON header of whitespace): refused from the length alone.
    let mut big = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
    big.push(b'{');
    big.resize(8 + MAX_HEADER_BYTES as usize, b' ');
    big.push(b'}');
    weights_refused(&big, &format!("limit of {MAX_HEADER_BYTES} bytes"));
}

#[test]
fn invalid_json_headers_are_refused() {
    // The format's header must open with `{` (safetensors' specification): another file.
    for header in ["[1, 2, 3]", "\u{0}\u{0}", " {}"] {
        weights_refused(&st_bytes(header, &[0; 4]), "neither a safetensors file");
    }
    for header in [
        "{\"a\": ",
        r#"{"a":{"dtype":"F32"}}"#,
        r#"{"a":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}"#,
        r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
        r#"{"__metadata__":{"k":7}}"#,
    ] {
        weights_refused(&st_bytes(header, &[0; 4]), "JSON header is invalid");
    }
    let mut not_utf8 = st_bytes(r#"{"a":1}"#, &[]);
    not_utf8[10] = 0xFF;
    weights_refused(&not_utf8, "JSON header is invalid");
}

#[test]
fn offsets_outside_the_data_are_refused() {
    let header = format!(r#"{{"a":{F32X4}[0,32]}}}}"#);
    weights_refused(
        &st_bytes(&header, &[0; 16]),
        "[0, 32] lie outside the 16 bytes",
    );
    let header = format!(r#"{{"a":{F32X4}[16,0]}}}}"#);
    weights_refused(
        &st_bytes(&header, &[0; 16]),
        "tensor `a`: data offsets [16, 0]",
    );
    let header = format!(r#"{{"a":{F32X4}[18446744073709551615,18446744073709551615]}}}}"#);
    weights_refused(&st_bytes(&header, &[0; 16]), "lie outside");
}

#[test]
fn overlapping_tensors_are_refused() {
    let header = format!(r#"{{"a":{F32X4}[0,16]}},"b":{F32X4}[8,24]}}}}"#);
    weights_refused(&st_bytes(&header, &[0; 24]), "`a` and `b` overlap");
    // The same bytes twice under two names.
    let header = format!(r#"{{"a":{F32X4}[0,16]}},"b":{F32X4}[0,16]}}}}"#);
    weights_refused(&st_bytes(&header, &[0; 16]), "overlap");
}

#[test]
fn byte_counts_must_match_dtype_and_shape() {
    let header = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#;
    weights_refused(
        &st_bytes(header, &[0; 16]),
        "tensor `w`: dtype F32 and shape [3] need 12 bytes, its offsets hold 16",
    );
    // A shape whose size overflows: refused without allocating it.
    let header = r#"{"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
    weights_refused(&st_bytes(header, &[0; 8]), "more than 2^64");
}

#[test]
fn duplicate_names_are_refused() {
    // serde (and the safetensors crate) would silently keep the last entry.
    let header = format!(r#"{{"a":{F32X4}[0,16]}},"a":{F32X4}[0,16]}}}}"#);
    let bytes = st_bytes(&header, &[0; 16]);
    assert!(safetensors::SafeTensors::deserialize(&bytes).is_ok());
    weights_refused(&bytes, "names `a` twice");
    let header = r#"{"__metadata__":{},"__metadata__":{}}"#;
    weights_refused(&st_bytes(header, &[]), "names `__metadata__` twice");
}

#[test]
fn data_not_covered_by_the_header_is_refused() {
    let header = format!(r#"{{"a":{F32X4}[0,16]}}}}"#);
    weights_refused(&st_bytes(&header, &[0; 20]), "not fully covered");
}

#[test]
fn directories_named_like_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::create_dir(&path).unwrap();
    let err = Model::load(&path).err().expect("a directory loaded");
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[cfg(feature = "cli")]
#[test]
fn classify_refuses_hostile_weights_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let header = format!(r#"{{"a":{F32X4}[0,16]}},"a":{F32X4}[0,16]}}}}"#);
    write(dir.path(), "dup.safetensors", &st_bytes(&header, &[0; 16]));
    gradient().save(dir.path().join("good.png")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_classify"))
        .current_dir(dir.path())
        .args(["--weights", "dup.safetensors", "good.png"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("dup.safetensors") && stderr.contains("twice"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Files written

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_failed_write_leaves_no_file_and_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.bin");
    let fail = |tmp: &Path| -> densenet::Result<()> {
        std::fs::write(tmp, b"half of it").unwrap();
        Err(Error::InvalidInput("interrupted".into()))
    };
    assert!(write_atomically(&path, false, fail).is_err());
    assert!(
        names_in(dir.path()).is_empty(),
        "{:?}",
        names_in(dir.path())
    );

    std::fs::write(&path, b"the old file").unwrap();
    assert!(write_atomically(&path, true, fail).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"the old file");
    assert_eq!(names_in(dir.path()), ["out.bin"]);

    let err = write_atomically(&path, false, |tmp| {
        std::fs::write(tmp, b"new").map_err(|e| panic!("{e}"))
    })
    .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), b"the old file");
    write_atomically(&path, true, |tmp| {
        std::fs::write(tmp, b"new").unwrap();
        Ok(())
    })
    .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(names_in(dir.path()), ["out.bin"]);
}

#[test]
fn saving_where_no_file_can_be_created_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model();
    let err = model
        .save(dir.path().join("no/such/dir/m.safetensors"), false)
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    // A parent that is a regular file: refused even for root.
    write(dir.path(), "plain", b"x");
    let err = model
        .save(dir.path().join("plain/m.safetensors"), false)
        .unwrap_err();
    assert!(err.to_string().contains("plain/m.safetensors"), "{err}");
    assert_eq!(names_in(dir.path()), ["plain"]);
}

#[cfg(unix)]
#[test]
fn saving_into_a_read_only_directory_fails_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let result = small_model().save(ro.join("m.safetensors"), false);
    let privileged = std::fs::write(ro.join("probe"), b"").is_ok();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    if privileged {
        // Root ignores permission bits; `a_full_disk_leaves_no_file` covers failing writes.
        result.unwrap();
        return;
    }
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("m.safetensors"), "{err}");
    assert!(names_in(&ro).is_empty(), "{:?}", names_in(&ro));
}

/// A full disk, for root too: the test runs itself in a child process whose file-size limit
/// (`ulimit -f`) makes writes fail with EFBIG after a few kilobytes, as ENOSPC would.
#[cfg(unix)]
#[test]
fn a_full_disk_leaves_no_file() {
    const CHILD: &str = "DENSENET_TEST_FULL_DISK_DIR";
    if let Some(dir) = std::env::var_os(CHILD) {
        let dir = PathBuf::from(dir);
        let err = small_model()
            .save(dir.join("m.safetensors"), true)
            .unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("m.safetensors"), "{err}");
        assert_eq!(names_in(&dir), ["m.safetensors"]);
        assert_eq!(
            std::fs::read(dir.join("m.safetensors")).unwrap(),
            b"the old model"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.safetensors", b"the old model");
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "trap '' XFSZ; ulimit -f 8 && exec \"$0\" --exact a_full_disk_leaves_no_file --test-threads=1",
        ])
        .arg(std::env::current_exe().unwrap())
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    assert_eq!(names_in(dir.path()), ["m.safetensors"]);
}

// ---------------------------------------------------------------------------------------------
// Concurrency

#[test]
fn one_model_serves_eight_threads_bit_for_bit() {
    let model = Arc::new(small_model());
    let inputs: Vec<Tensor> = (0..8)
        .map(|i| {
            let values = (0..2 * 3 * 16 * 16)
                .map(|j| ((i * 7919 + j * 31) % 255) as f32 / 64.0 - 2.0)
                .collect::<Vec<_>>();
            Tensor::from_vec(values, (2, 3, 16, 16), &Device::Cpu).unwrap()
        })
        .collect();
    let bits = |p: Vec<densenet::Prediction>| {
        p.into_iter()
            .flat_map(|p| p.logits.into_iter().chain(p.probabilities))
            .map(f32::to_bits)
            .collect::<Vec<u32>>()
    };
    let expected: Vec<Vec<u32>> = inputs
        .iter()
        .map(|x| bits(model.predict(x).unwrap()))
        .collect();
    let inputs = Arc::new(inputs);
    let expected = Arc::new(expected);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (model, inputs, expected) = (model.clone(), inputs.clone(), expected.clone());
            std::thread::spawn(move || {
                for round in 0..12 {
                    let i = (t + round) % inputs.len();
                    assert_eq!(
                        bits(model.predict(&inputs[i]).unwrap()),
                        expected[i],
                        "thread {t} round {round}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

// PyTorch checkpoints (fixtures from tools/make_pickle_fixtures.py; the `__reduce__` pickle that
// would run a command is tests/interop.rs's `malicious_pickle_is_refused_and_nothing_runs`).

fn checkpoint_refused(path: &Path) -> String {
    let err = Model::load(path)
        .err()
        .expect("a hostile checkpoint loaded");
    assert!(matches!(err, Error::InvalidWeights { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    msg
}

fn hostile_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hostile")
        .join(name)
}

#[test]
fn pickle_with_an_unknown_opcode_is_refused() {
    checkpoint_refused(&hostile_fixture("unknown_opcode.pth"));
}

#[test]
fn zip_bomb_storage_is_refused_before_allocating() {
    // 256 MB of zeros deflated to 256 KB: refused without decompressing anything.
    let msg = checkpoint_refused(&hostile_fixture("zip_bomb.pth"));
    assert!(msg.contains("compression method not supported"), "{msg}");
}

#[test]
fn truncated_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/interop/bc_small.pth"),
    )
    .unwrap();
    for keep in [good.len() - 1, good.len() * 3 / 4, good.len() / 2, 64, 5] {
        let path = write(dir.path(), &format!("cut{keep}.pth"), &good[..keep]);
        checkpoint_refused(&path);
    }
}

#[test]
fn pickle_string_longer_than_the_pickle_is_refused_before_allocating() {
    // Found by `make fuzz`: a BINUNICODE declaring ~4 GiB made Candle's interpreter allocate that
    // much before reading (an abort where memory is short).
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge_string.pth");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    // PROTO 2, then BINUNICODE with a length of 4 GiB − 16 and 3 bytes of text, then STOP.
    let mut pickle = vec![0x80, 2, b'X'];
    pickle.extend(0xffff_fff0u32.to_le_bytes());
    pickle.extend(b"abc.");
    zip.write_all(&pickle).unwrap();
    zip.finish().unwrap();
    let msg = checkpoint_refused(&path);
    assert!(msg.contains("past the end of the pickle"), "{msg}");
}
