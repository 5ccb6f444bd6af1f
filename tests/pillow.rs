//! From the image file to the tensor, against torchvision 0.29.2 + Pillow 13.0.0: JPEG decoding,
//! resizing and cropping give the same 8-bit pixels, hence the same normalised tensors. Fixtures:
//! tests/fixtures/pillow/, made by tools/make_pillow_fixtures.py.

mod common;

use candle_core::Device;
use common::*;
use densenet::preprocess::load_rgb;
use densenet::{Preprocessing, Resize};
use image::RgbImage;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Cases {
    decode: Vec<Case>,
    resize: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    /// A file under tests/fixtures/pillow/, or a foolbox JPEG that may not be committed.
    file: Option<String>,
    #[serde(default = "committed")]
    committed: bool,
    /// A synthetic image of this width and height (`pattern`).
    pattern: Option<[u32; 2]>,
    resize: Option<ResizeSpec>,
    interpolation: Option<String>,
    width: u32,
    height: u32,
    /// The expected pixels, as a PNG beside cases.json…
    png: Option<String>,
    /// …or as the 64-bit FNV-1a hash of each row of RGB bytes.
    row_fnv1a64: Option<Vec<String>>,
}

fn committed() -> bool {
    true
}

#[derive(Deserialize)]
struct ResizeSpec {
    kind: String,
    shorter: Option<u32>,
    width: u32,
    height: u32,
}

fn pillow(name: &str) -> PathBuf {
    fixture("pillow").join(name)
}

fn cases() -> Cases {
    let text = std::fs::read_to_string(pillow("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Where the foolbox JPEGs not committed are read from: `$DENSENET_FOOLBOX_DATA`, else the
/// tools venv's foolbox 3.3.4, if installed.
fn foolbox_data() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DENSENET_FOOLBOX_DATA") {
        return Some(PathBuf::from(dir));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/.venv/lib");
    glob::glob(&format!(
        "{}/python3*/site-packages/foolbox/data",
        venv.display()
    ))
    .ok()?
    .flatten()
    .next()
}

/// The source file of a case, `None` for a foolbox JPEG that is neither committed nor installed.
fn source(case: &Case) -> Option<PathBuf> {
    let file = case.file.as_ref()?;
    if case.committed {
        return Some(pillow(file));
    }
    let name = Path::new(file).file_name()?;
    foolbox_data().map(|dir| dir.join(name))
}

/// The synthetic image of tools/make_pillow_fixtures.py: channel c of pixel (x, y) is
/// ((x·(3 + c) + y·(5 − c)) XOR (x·y >> 4)) mod 256.
fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (u64::from(x), u64::from(y));
        image::Rgb(
            [0u64, 1, 2].map(|c| (((x * (3 + c) + y * (5 - c)) ^ ((x * y) >> 4)) & 255) as u8),
        )
    })
}

fn fnv1a64(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Compares `actual` with the case's expected pixels; the error says how they differ.
fn compare(actual: &RgbImage, case: &Case) -> Result<(), String> {
    if actual.dimensions() != (case.width, case.height) {
        return Err(format!(
            "{:?} instead of {}×{}",
            actual.dimensions(),
            case.width,
            case.height
        ));
    }
    if let Some(png) = &case.png {
        let expected = image::open(pillow(png)).unwrap().to_rgb8();
        let diffs: Vec<i32> = actual
            .as_raw()
            .iter()
            .zip(expected.as_raw())
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .filter(|&d| d != 0)
            .collect();
        if !diffs.is_empty() {
            return Err(format!(
                "{} of {} values differ, by up to {}",
                diffs.len(),
                actual.as_raw().len(),
                diffs.iter().max().unwrap()
            ));
        }
    }
    if let Some(rows) = &case.row_fnv1a64 {
        let stride = case.width as usize * 3;
        let differing = actual
            .as_raw()
            .chunks_exact(stride)
            .zip(rows)
            .filter(|(row, hash)| fnv1a64(row) != **hash)
            .count();
        if differing > 0 {
            return Err(format!("{differing} of {} rows differ", rows.len()));
        }
    }
    Ok(())
}

fn preprocessing(case: &Case) -> Preprocessing {
    let spec = case.resize.as_ref().unwrap();
    let resize = match spec.kind.as_str() {
        "stretch" => Resize::Stretch,
        _ => Resize::ShorterSideThenCenterCrop(spec.shorter.unwrap()),
    };
    Preprocessing {
        input_size: [spec.height as usize, spec.width as usize],
        resize,
        interpolation: case.interpolation.as_ref().unwrap().parse().unwrap(),
        ..Preprocessing::imagenet()
    }
}

/// Whether this build decodes the case's source to Pillow's pixels: JPEGs only with libjpeg-turbo
/// (the `turbojpeg` feature), the synthetic PNGs always.
fn decodes_as_pillow(case: &Case) -> bool {
    cfg!(feature = "turbojpeg") || case.file.is_none()
}

/// Runs `check` on every case whose source is at hand, then fails listing every mismatch.
fn check_all(cases: &[Case], check: impl Fn(&Case, &Path) -> Result<(), String>) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases {
        let (name, path) = match (&case.file, case.pattern) {
            (Some(file), _) => match source(case) {
                Some(path) => (file.clone(), path),
                None => continue,
            },
            (None, Some([w, h])) => {
                let path = dir.path().join(format!("pattern_{w}x{h}.png"));
                pattern(w, h).save(&path).unwrap();
                (format!("pattern {w}×{h}"), path)
            }
            (None, None) => panic!("a case without a source"),
        };
        checked += 1;
        if let Err(e) = check(case, &path) {
            let how = case
                .resize
                .as_ref()
                .map(|r| {
                    let kind = &r.kind;
                    let interp = case.interpolation.as_deref().unwrap_or_default();
                    format!(" {kind} {}×{} {interp}", r.width, r.height)
                })
                .unwrap_or_default();
            failures.push(format!("{name}{how}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases differ from Pillow:\n{}",
        failures.len(),
        failures.join("\n")
    );
    checked
}

#[cfg(feature = "turbojpeg")]
#[test]
fn jpegs_decode_to_pillows_pixels() {
    let cases = cases().decode;
    let checked = check_all(&cases, |case, path| compare(&load_rgb(path).unwrap(), case));
    // The committed ones at least: seven made by Pillow in each layout, six foolbox photos.
    assert!(checked >= 13, "{checked}");
}

/// Without libjpeg-turbo the `image` crate decodes JPEGs: every layout still decodes, close to
/// Pillow's pixels though not always equal to them (measured: up to 2 levels apart, on under 1%
/// of the values).
#[cfg(not(feature = "turbojpeg"))]
#[test]
fn jpegs_decode_close_to_pillows_pixels_without_libjpeg_turbo() {
    let cases = cases().decode;
    let with_pixels: Vec<&Case> = cases.iter().filter(|c| c.png.is_some()).collect();
    assert!(with_pixels.len() >= 7, "{}", with_pixels.len());
    for case in with_pixels {
        let file = case.file.as_deref().unwrap();
        let decoded = load_rgb(&pillow(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let expected = image::open(pillow(case.png.as_deref().unwrap()))
            .unwrap()
            .to_rgb8();
        assert_eq!(decoded.dimensions(), expected.dimensions(), "{file}");
        let diffs: Vec<u8> = decoded
            .as_raw()
            .iter()
            .zip(expected.as_raw())
            .map(|(&a, &b)| a.abs_diff(b))
            .collect();
        let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
        let max = diffs.iter().copied().max().unwrap_or(0);
        assert!(
            mean < 0.05 && max <= 4,
            "{file}: mean |Δ| {mean:.3}, max {max}"
        );
    }
}

#[test]
fn resized_and_cropped_pixels_equal_torchvision_with_pillow() {
    let mut cases = cases().resize;
    cases.retain(decodes_as_pillow);
    let checked = check_all(&cases, |case, path| {
        compare(&preprocessing(case).resize(&load_rgb(path).unwrap()), case)
    });
    // The synthetic PNGs, and with libjpeg-turbo the committed foolbox JPEGs.
    let committed = if cfg!(feature = "turbojpeg") { 38 } else { 32 };
    assert!(checked >= committed, "{checked}");
}

#[test]
fn normalised_tensors_equal_torchvision() {
    let expected = load_fixture("pillow/normalised.safetensors");
    let imagenet = Preprocessing {
        input_size: [33, 35],
        resize: Resize::ShorterSideThenCenterCrop(40),
        interpolation: densenet::Interpolation::Bicubic,
        ..Preprocessing::imagenet()
    };
    let cifar = Preprocessing::cifar100();
    for (name, prep, [w, h]) in [
        ("pattern_97x61_crop_35x33_bicubic_s40", imagenet, [97, 61]),
        ("pattern_96x96_stretch_32x32_bilinear", cifar, [96, 96]),
    ] {
        let x = prep.to_tensor(&pattern(w, h), &Device::Cpu).unwrap();
        let diff = max_abs_diff(&x, &expected[name]);
        assert!(diff <= 1e-6, "{name}: {diff}");
    }
}

#[test]
fn the_interpolation_a_model_names_is_recorded_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bicubic.safetensors");
    let config = small_config(10);
    let info = densenet::ModelInfo {
        labels: densenet::labels::default_labels(config.num_classes),
        config,
        preprocessing: Preprocessing {
            interpolation: densenet::Interpolation::Bicubic,
            ..Preprocessing::cifar100()
        },
    };
    densenet::Model::synthetic(info, &Device::Cpu)
        .unwrap()
        .save(&path, false)
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let recorded = &header.metadata().as_ref().unwrap()["densenet.preprocessing"];
    assert!(
        recorded.contains(r#""interpolation":"bicubic""#),
        "{recorded}"
    );
    let model = densenet::Model::load(&path).unwrap();
    let case = cases()
        .resize
        .into_iter()
        .find(|c| c.png.as_deref() == Some("expected/pattern_97x61_stretch_32x32_bicubic.png"))
        .unwrap();
    let resized = model.preprocessing().resize(&pattern(97, 61));
    compare(&resized, &case).unwrap();
    // The bilinear result differs: the filter is not ignored.
    assert!(compare(&Preprocessing::cifar100().resize(&pattern(97, 61)), &case).is_err());
}

#[test]
fn the_digits_model_gives_torchvisions_probabilities_from_png_and_jpeg_files() {
    let model = densenet::Model::load(fixture("reference/digits_densenet.safetensors")).unwrap();
    let expected = load_fixture("pillow/digits/expected.safetensors");
    let labels = expected["labels"].to_vec1::<i64>().unwrap();
    // JPEGs give torchvision's probabilities only when decoded by libjpeg-turbo.
    let kinds: &[_] = if cfg!(feature = "turbojpeg") {
        &[("png", "png"), ("jpeg", "jpg")]
    } else {
        &[("png", "png")]
    };
    for &(kind, ext) in kinds {
        let mut files: Vec<PathBuf> =
            glob::glob(&format!("{}/*.{ext}", pillow("digits").display()))
                .unwrap()
                .flatten()
                .collect();
        files.sort();
        assert_eq!(files.len(), labels.len(), "{kind}");
        let x = model
            .preprocessing()
            .load_batch(&files, model.device())
            .unwrap();
        let predictions = model.predict(&x).unwrap();
        let flat = |key: &str| {
            expected[&format!("{kind}_{key}")]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let max_diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let probs: Vec<f32> = predictions
            .iter()
            .flat_map(|p| p.probabilities.clone())
            .collect();
        let logits: Vec<f32> = predictions.iter().flat_map(|p| p.logits.clone()).collect();
        let diff = max_diff(&probs, &flat("probs"));
        assert!(diff <= 1e-4, "{kind}: max |Δprobability| = {diff}");
        // The logits too, which do not saturate as confident probabilities do.
        let diff = max_diff(&logits, &flat("logits"));
        assert!(diff <= 1e-4, "{kind}: max |Δlogit| = {diff}");
        // The model is no constant: it reads the digits (most of them right).
        let right = probs
            .chunks_exact(10)
            .zip(&labels)
            .filter(|(p, &l)| {
                let best = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
                best.map(|(i, _)| i as i64) == Some(l)
            })
            .count();
        assert!(right >= 15, "{kind}: {right} of {}", labels.len());
    }
}
