//! Saving and loading: bit-identical logits, the same metadata, PyTorch's names, every float dtype.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use densenet::{Error, Model};
use std::collections::HashMap;

fn input() -> Tensor {
    load_fixture("seed_small_io.safetensors")
        .remove("input")
        .unwrap()
}

#[test]
fn save_then_load_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let model = deterministic_model(small_config(100));
    model.save(&path, false).unwrap();
    let loaded = Model::load(&path).unwrap();
    assert_eq!(loaded.info(), model.info());
    let a = model.logits(&input()).unwrap().to_vec2::<f32>().unwrap();
    let b = loaded.logits(&input()).unwrap().to_vec2::<f32>().unwrap();
    let bits = |v: Vec<Vec<f32>>| v.concat().into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(a), bits(b));
}

#[test]
fn saved_names_and_shapes_are_pytorchs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    Model::load(fixture("seed_small.safetensors"))
        .unwrap()
        .save(&path, false)
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut found: Vec<(String, Vec<usize>)> = st
        .iter()
        .map(|(n, v)| (n.to_string(), v.shape().to_vec()))
        .collect();
    found.sort();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("state_dict_names.json")).unwrap()).unwrap();
    let mut expected: Vec<(String, Vec<usize>)> =
        serde_json::from_value(json["seed_small"].clone()).unwrap();
    expected.sort();
    assert_eq!(found, expected);
    let metadata = safetensors::SafeTensors::read_metadata(&bytes).unwrap().1;
    let metadata = metadata.metadata().clone().unwrap();
    assert_eq!(metadata["format"], "pt");
    assert!(metadata.contains_key("densenet.config"));
}

#[test]
fn save_does_not_overwrite_without_permission() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, b"precious").unwrap();
    let model = deterministic_model(small_config(10));
    let err = model.save(&path, false).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    model.save(&path, true).unwrap();
    Model::load(&path).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
}

/// Rewrites the seed fixture with its float tensors in `dtype`, then, with `back_to_f32`, in F32
/// again (the same rounded values, stored exactly).
fn fixture_as(dtype: DType, back_to_f32: bool, path: &std::path::Path) {
    let tensors: HashMap<String, Tensor> = load_fixture("seed_small.safetensors")
        .into_iter()
        .map(|(n, t)| {
            let t = if t.dtype().is_float() {
                let t = t.to_dtype(dtype).unwrap();
                if back_to_f32 {
                    t.to_dtype(DType::F32).unwrap()
                } else {
                    t
                }
            } else {
                t
            };
            (n, t)
        })
        .collect();
    candle_core::safetensors::save(&tensors, path).unwrap();
}

#[test]
fn every_float_dtype_loads() {
    let dir = tempfile::tempdir().unwrap();
    let expected = load_fixture("seed_small_io.safetensors")
        .remove("logits")
        .unwrap();
    let logits = |dtype: DType, back_to_f32: bool| {
        let path = dir
            .path()
            .join(format!("{dtype:?}_{back_to_f32}.safetensors"));
        fixture_as(dtype, back_to_f32, &path);
        let model = Model::load_on(&path, &Device::Cpu).unwrap();
        model.logits(&input()).unwrap()
    };
    for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
        // Each file gives the logits of an F32 model with the same rounded weights…
        let diff = max_abs_diff(&logits(dtype, false), &logits(dtype, true));
        assert!(diff <= 1e-4, "{dtype:?}: max |Δlogit| = {diff}");
    }
    for dtype in [DType::F64, DType::F32] {
        // …and the exact ones are PyTorch's.
        let diff = max_abs_diff(&logits(dtype, false), &expected);
        assert!(diff <= 1e-4, "{dtype:?}: max |Δlogit| vs PyTorch = {diff}");
    }
    // Rounding the weights to 8 bits of mantissa does change the logits: the comparison above is
    // not with the unrounded model.
    let rounding = max_abs_diff(&logits(DType::BF16, false), &expected);
    assert!(rounding > 1e-3, "{rounding}");
}
