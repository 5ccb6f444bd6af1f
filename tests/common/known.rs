//! A model whose answers are known without running it.
//!
//! Its first stem channel copies the red input channel (centre tap 1, other kernels zero); every
//! bottleneck adds zero channels; transitions pass their first channels through (BatchNorm as
//! identity, 1×1 convolution as identity) and average 2×2; so the final feature map 0 is the
//! normalised red channel, average-pooled to 8×8 and through the last ReLU. With `linear.weight[j]
//! = j` on that channel and `linear.bias[j] = -STEP·j²/2`, the logit of class j is
//! `j·r − STEP·j²/2` where r is the mean of the clipped normalised red: the most probable class is
//! the j nearest to r / STEP, and the others rank by their distance to it.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use densenet::weights::{state_dict_spec, TensorKind};
use densenet::{Model, ModelInfo, Preprocessing};
use std::collections::HashMap;

/// Red level (normalised) between two classes.
pub const STEP: f32 = 0.1;

/// The known-answer model with `num_classes` classes (CIFAR-100 labels for 100).
pub fn red_level_model(num_classes: usize) -> Model {
    let config = super::small_config(num_classes);
    let mut tensors = HashMap::new();
    for spec in state_dict_spec(&config).unwrap() {
        if spec.kind == TensorKind::Counter {
            continue;
        }
        let shape = spec.shape.clone();
        let n: usize = shape.iter().product();
        let mut values = vec![0f32; n];
        let name = spec.name.as_str();
        if name == "conv1.weight" {
            values[4] = 1.0; // [0, 0, 1, 1]: red in, channel 0 out
        } else if name.ends_with("running_var") || (name.ends_with(".weight") && shape.len() == 1) {
            values.fill(1.0);
        } else if name.contains("transition_layer") && name.ends_with("down_sample.1.weight") {
            for i in 0..shape[0] {
                values[i * shape[1] + i] = 1.0;
            }
        } else if name == "linear.weight" {
            for j in 0..shape[0] {
                values[j * shape[1]] = j as f32;
            }
        } else if name == "linear.bias" {
            for (j, v) in values.iter_mut().enumerate() {
                *v = -STEP * (j * j) as f32 / 2.0;
            }
        }
        tensors.insert(
            spec.name,
            Tensor::from_vec(values, shape, &Device::Cpu).unwrap(),
        );
    }
    let info = ModelInfo {
        labels: densenet::labels::default_labels(num_classes),
        config,
        preprocessing: Preprocessing::cifar100(),
    };
    Model::from_varbuilder(
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
        info,
    )
    .unwrap()
}

/// The red byte of a plain image that the model puts in class `j` (0..=18).
pub fn red_for_class(j: usize) -> u8 {
    if j == 0 {
        return 0;
    }
    let p = Preprocessing::cifar100();
    let v = (255.0 * (p.mean[0] + p.std[0] * STEP * j as f32)).round();
    assert!(v <= 255.0, "class {j} is beyond the brightest red");
    v as u8
}

/// A plain 32×32 image the model puts in class `j`; `tint` varies green and blue (ignored by the
/// model) so that images of one class differ.
pub fn image_of_class(j: usize, tint: u8) -> image::RgbImage {
    image::RgbImage::from_pixel(32, 32, image::Rgb([red_for_class(j), tint, 255 - tint]))
}
