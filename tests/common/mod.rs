//! Shared test helpers: fixtures, and the deterministic weights that `tools/densenet_ref.py`
//! generates on the PyTorch side (large models are regenerated, not committed).
#![allow(dead_code)]

pub mod hub_server;
pub mod known;

use candle_core::{DType, Device, Tensor};
use densenet::{Config, Model, ModelInfo, Preprocessing};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The trained reference model (`tools/train_reference.py`), its held-out images as `densenet
/// eval` prepares them [360, 3, 32, 32], and their labels. (`tests/reference.rs` checks that f32
/// scores them as PyTorch does.)
pub fn reference() -> (densenet::Model, Tensor, Vec<u32>) {
    let dir = fixture("reference");
    let model = densenet::Model::load(dir.join("digits_densenet.safetensors")).unwrap();
    let records = densenet::dataset::read_cifar100_binary(&dir.join("digits_test.bin")).unwrap();
    let pre = model.preprocessing();
    let images: Vec<Tensor> = records
        .iter()
        .map(|r| pre.to_tensor(&r.image, &candle_core::Device::Cpu).unwrap())
        .collect();
    let labels = records.iter().map(|r| u32::from(r.fine)).collect();
    (model, Tensor::stack(&images, 0).unwrap(), labels)
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

/// The value rule of `tools/densenet_ref.py::deterministic_state_dict`.
pub fn deterministic(name: &str, shape: &[usize]) -> Tensor {
    densenet::weights::synthetic::tensor(name, shape, &Device::Cpu).unwrap()
}

/// A model of `config` with the deterministic weights.
pub fn deterministic_model(config: Config) -> Model {
    let info = ModelInfo {
        labels: densenet::labels::default_labels(config.num_classes),
        config,
        preprocessing: Preprocessing::cifar100(),
    };
    Model::synthetic(info, &Device::Cpu).unwrap()
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
