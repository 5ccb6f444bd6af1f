//! Class activation maps on a model whose evidence is known: it reads only the red channel.

mod common;

use common::known::red_level_model;
use densenet::explain::{self, class_activation_maps};
use image::{Rgb, RgbImage};

/// A black 32×32 image with a bright red quadrant (`qx`, `qy` in {0, 1}).
fn red_quadrant(qx: u32, qy: u32) -> RgbImage {
    RgbImage::from_fn(32, 32, |x, y| {
        if x / 16 == qx && y / 16 == qy {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 0])
        }
    })
}

fn mass_in_quadrant(values: &[f32], side: usize, qx: usize, qy: usize) -> f32 {
    let half = side / 2;
    let total: f32 = values.iter().sum();
    let inside: f32 = (0..side * side)
        .filter(|i| (i % side) / half == qx && (i / side) / half == qy)
        .map(|i| values[i])
        .sum();
    inside / total
}

#[test]
fn the_map_lies_on_the_red_quadrant() {
    let model = red_level_model(100);
    for (qx, qy) in [(0, 0), (1, 1), (1, 0)] {
        let image = red_quadrant(qx, qy);
        let x = model
            .preprocessing()
            .to_tensor(&image, model.device())
            .unwrap();
        let (prediction, map) = explain::explain(&model, &x, 3).unwrap().remove(0);
        // A quarter of the image at full red: r ≈ 1.844 / 4 → class 5.
        assert_eq!(prediction.top_k[0].index, 5);
        assert_eq!((map.width, map.height), (8, 8));
        let max = map.values.iter().copied().fold(0.0, f32::max);
        assert_eq!(max, 1.0);
        assert_eq!(
            mass_in_quadrant(&map.values, 8, qx as usize, qy as usize),
            1.0
        );
        // Upsampled to the image: bilinear blending leaks only across the quadrant's edges.
        let big = map.upsampled(32, 32);
        assert_eq!(big.len(), 32 * 32);
        assert!(mass_in_quadrant(&big, 32, qx as usize, qy as usize) > 0.9);

        let picture = explain::side_by_side(&image, &map);
        assert_eq!(picture.dimensions(), (256, 128));
        // Left: the image itself (enlarged 4×); right: blended, hot where the red is.
        assert_eq!(
            *picture.get_pixel(qx * 64 + 8, qy * 64 + 8),
            Rgb([255, 0, 0])
        );
        let hot = picture.get_pixel(128 + qx * 64 + 32, qy * 64 + 32);
        let cold = picture.get_pixel(128 + (1 - qx) * 64 + 32, (1 - qy) * 64 + 32);
        assert!(hot[0] > cold[0] && cold[2] > hot[2], "{hot:?} {cold:?}");
    }
}

#[test]
fn a_class_with_no_evidence_gives_an_empty_map() {
    let model = red_level_model(100);
    let x = model
        .preprocessing()
        .to_tensor(&red_quadrant(0, 0), model.device())
        .unwrap();
    // Class 0's weight row is zero: nothing speaks for it anywhere.
    let maps = class_activation_maps(&model, &x, &[0]).unwrap();
    assert!(maps[0].values.iter().all(|&v| v == 0.0));
    let message = class_activation_maps(&model, &x, &[100])
        .unwrap_err()
        .to_string();
    assert!(message.contains("class 100"), "{message}");
    assert!(class_activation_maps(&model, &x, &[1, 2]).is_err());
}

/// The plain path's maps (from the features, one class at a time) are the fast path's (from
/// the classifier applied at every pixel), and so are its predictions.
#[test]
fn the_plain_path_explains_as_the_fast_path_does() {
    let mut model = red_level_model(100);
    let x = model
        .preprocessing()
        .to_tensor(&red_quadrant(1, 0), model.device())
        .unwrap();
    let fast = explain::explain(&model, &x, 3).unwrap().remove(0);
    let fast_maps = class_activation_maps(&model, &x, &[5]).unwrap();
    model
        .set_compute_path(densenet::ComputePath::Plain)
        .unwrap();
    let plain = explain::explain(&model, &x, 3).unwrap().remove(0);
    let plain_maps = class_activation_maps(&model, &x, &[5]).unwrap();
    assert_eq!(
        plain.0.top_k.iter().map(|t| t.index).collect::<Vec<_>>(),
        fast.0.top_k.iter().map(|t| t.index).collect::<Vec<_>>()
    );
    for (a, b) in [(&plain.1, &fast.1), (&plain_maps[0], &fast_maps[0])] {
        assert_eq!((a.width, a.height), (b.width, b.height));
        let diff = a
            .values
            .iter()
            .zip(&b.values)
            .fold(0.0f32, |d, (x, y)| d.max((x - y).abs()));
        assert!(diff <= 1e-5, "max |Δ| {diff}");
    }
}
