//! Decoding and normalising images.

mod common;

use candle_core::Device;
use common::*;
use densenet::preprocess::{batch, load_rgb};
use densenet::Preprocessing;
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba};
use std::path::Path;

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/images")
        .join(name)
}

#[test]
fn normalisation_matches_pytorch() {
    let reference = load_fixture("preprocess_ref.safetensors");
    let prep = Preprocessing::cifar100();
    for stem in ["cifar100_00_49", "cifar100_05_92"] {
        let x = prep
            .load(&example(&format!("{stem}.png")), &Device::Cpu)
            .unwrap();
        let diff = max_abs_diff(&x, &reference[stem]);
        assert!(diff <= 1e-6, "{stem}: {diff}");
    }
}

fn gradient(w: u32, h: u32) -> image::RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
    })
}

#[test]
fn every_supported_format_decodes_to_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let rgb = DynamicImage::ImageRgb8(gradient(32, 32));
    let cases: Vec<(&str, DynamicImage, ImageFormat)> = vec![
        ("rgb.png", rgb.clone(), ImageFormat::Png),
        ("rgb.jpg", rgb.clone(), ImageFormat::Jpeg),
        ("rgb.bmp", rgb.clone(), ImageFormat::Bmp),
        (
            "rgb.gif",
            DynamicImage::ImageRgba8(rgb.to_rgba8()),
            ImageFormat::Gif,
        ),
        (
            "rgb.webp",
            DynamicImage::ImageRgba8(rgb.to_rgba8()),
            ImageFormat::WebP,
        ),
        ("rgb.tiff", rgb.clone(), ImageFormat::Tiff),
        (
            "gray.png",
            DynamicImage::ImageLuma8(ImageBuffer::from_pixel(32, 32, Luma([200]))),
            ImageFormat::Png,
        ),
        (
            "gray_alpha.png",
            DynamicImage::ImageLumaA8(ImageBuffer::from_pixel(32, 32, LumaA([200, 10]))),
            ImageFormat::Png,
        ),
        (
            "rgba.png",
            DynamicImage::ImageRgba8(ImageBuffer::from_pixel(32, 32, Rgba([1, 2, 3, 0]))),
            ImageFormat::Png,
        ),
        (
            "rgb16.png",
            DynamicImage::ImageRgb16(ImageBuffer::from_pixel(32, 32, Rgb([65535, 0, 32896]))),
            ImageFormat::Png,
        ),
    ];
    for (name, image, format) in cases {
        let path = dir.path().join(name);
        image.save_with_format(&path, format).unwrap();
        let decoded = load_rgb(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(decoded.dimensions(), (32, 32), "{name}");
    }
    // Lossless formats give back the exact pixels; grayscale is replicated; 16 bits scale down.
    assert_eq!(
        load_rgb(&dir.path().join("rgb.png")).unwrap(),
        gradient(32, 32)
    );
    assert_eq!(
        load_rgb(&dir.path().join("rgb.bmp")).unwrap(),
        gradient(32, 32)
    );
    assert_eq!(
        load_rgb(&dir.path().join("gray.png"))
            .unwrap()
            .get_pixel(3, 3),
        &Rgb([200, 200, 200])
    );
    assert_eq!(
        load_rgb(&dir.path().join("rgba.png"))
            .unwrap()
            .get_pixel(0, 0),
        &Rgb([1, 2, 3])
    );
    assert_eq!(
        load_rgb(&dir.path().join("rgb16.png"))
            .unwrap()
            .get_pixel(0, 0),
        &Rgb([255, 0, 128])
    );
    // The content decides the format, not the extension.
    let misnamed = dir.path().join("actually_png.jpg");
    std::fs::copy(dir.path().join("rgb.png"), &misnamed).unwrap();
    assert_eq!(load_rgb(&misnamed).unwrap(), gradient(32, 32));
}

#[test]
fn other_sizes_are_resized_and_batched() {
    let dir = tempfile::tempdir().unwrap();
    let prep = Preprocessing::cifar100();
    let mut tensors = Vec::new();
    for (w, h) in [(32, 32), (64, 48), (17, 90), (1, 1)] {
        let path = dir.path().join(format!("{w}x{h}.png"));
        gradient(w, h).save(&path).unwrap();
        let t = prep.load(&path, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[3, 32, 32]);
        tensors.push(t);
    }
    assert_eq!(batch(&tensors).unwrap().dims(), &[4, 3, 32, 32]);
    assert!(batch(&[]).is_err());
}

#[test]
fn a_uniform_image_resizes_to_the_same_colour() {
    let prep = Preprocessing::cifar100();
    let image = ImageBuffer::from_pixel(100, 70, Rgb([10u8, 128, 250]));
    let resized = prep.resize(&image);
    assert_eq!(resized.dimensions(), (32, 32));
    assert!(resized.pixels().all(|p| p == &Rgb([10, 128, 250])));
}

#[test]
fn shorter_side_then_centre_crop() {
    let prep = Preprocessing {
        input_size: [224, 224],
        resize: densenet::Resize::ShorterSideThenCenterCrop(256),
        ..Preprocessing::cifar100()
    };
    // Left half black, right half white, 2:1: the centre crop straddles the edge evenly.
    let image = ImageBuffer::from_fn(600, 300, |x, _| {
        if x < 300 {
            Rgb([0u8, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    });
    let out = prep.resize(&image);
    assert_eq!(out.dimensions(), (224, 224));
    assert_eq!(out.get_pixel(0, 100), &Rgb([0, 0, 0]));
    assert_eq!(out.get_pixel(223, 100), &Rgb([255, 255, 255]));
}
