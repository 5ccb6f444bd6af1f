//! Shared test helpers: fixtures, and the deterministic weights that `tools/densenet_ref.py`
//! generates on the PyTorch side (large models are regenerated, not committed).
#![allow(dead_code)]

pub mod known;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use densenet::weights::{state_dict_spec, TensorKind};
use densenet::{Config, Model, ModelInfo, Preprocessing};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn load_fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu).expect("fixture loads")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap() as f32
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn uniform(seed: u64, i: u64) -> f32 {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u32 << 24) as f32
}

/// The value rule of `tools/densenet_ref.py::deterministic_state_dict`.
pub fn deterministic(name: &str, shape: &[usize]) -> Tensor {
    let seed = fnv1a64(name.as_bytes());
    let n: usize = shape.iter().product();
    let is_kernel = name.ends_with(".weight") && shape.len() >= 2;
    let scale = if is_kernel {
        let fan_in: usize = shape[1..].iter().product();
        (3.0f64 / fan_in as f64).sqrt() as f32
    } else {
        0.0
    };
    let values: Vec<f32> = (0..n as u64)
        .map(|i| {
            let u = uniform(seed, i);
            if is_kernel {
                (2.0 * u - 1.0) * scale
            } else if name.ends_with(".weight") || name.ends_with(".running_var") {
                u + 0.5
            } else {
                (2.0 * u - 1.0) * 0.1
            }
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// A model of `config` with the deterministic weights.
pub fn deterministic_model(config: Config) -> Model {
    let tensors = state_dict_spec(&config)
        .unwrap()
        .into_iter()
        .filter(|s| s.kind != TensorKind::Counter)
        .map(|s| (s.name.clone(), deterministic(&s.name, &s.shape)))
        .collect();
    let info = ModelInfo {
        labels: densenet::labels::default_labels(config.num_classes),
        config,
        preprocessing: Preprocessing::cifar100(),
    };
    Model::from_varbuilder(
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
        info,
    )
    .unwrap()
}

/// A small configuration, quick to run everywhere.
pub fn small_config(num_classes: usize) -> Config {
    Config {
        growth_rate: 6,
        block_config: vec![2, 3, 2],
        init_features: 12,
        bn_size: 4,
        reduction: 0.5,
        num_classes,
        stem: densenet::Stem::Cifar,
        transition_relu: false,
    }
}
