//! Parity with PyTorch: logits, state_dict names and shapes, parameter counts.

mod common;

use candle_core::{DType, Tensor};
use common::*;
use densenet::weights::{parameter_count, state_dict_spec};
use densenet::{Config, Model};

/// Each logit minus its mean over the batch: what the input changes.
fn centred(logits: &Tensor) -> Tensor {
    logits
        .broadcast_sub(&logits.mean_keepdim(0).unwrap())
        .unwrap()
}

/// The logits equal PyTorch's within 1e-4, and so does their dependence on the input, which the
/// deterministic weights make small (a few hundredths): the batch-centred logits must agree to a
/// thousandth of their spread, so that a model ignoring its input cannot pass.
fn assert_matches(logits: &Tensor, expected: &Tensor) {
    let diff = max_abs_diff(logits, expected);
    assert!(diff <= 1e-4, "max |Δlogit| = {diff}");
    let spread = max_abs_diff(&centred(expected), &expected.zeros_like().unwrap());
    assert!(
        spread > 1e-3,
        "the fixture's logits hardly depend on the input: {spread}"
    );
    let diff = max_abs_diff(&centred(logits), &centred(expected));
    assert!(
        diff <= 1e-3 * spread,
        "max |Δ centred logit| = {diff}, spread {spread}"
    );
}

#[test]
fn small_model_matches_pytorch() {
    // A raw PyTorch state_dict: no metadata, int64 num_batches_tracked buffers included.
    let model = Model::load(fixture("seed_small.safetensors")).unwrap();
    assert_eq!(model.config(), &small_config(10));
    let io = load_fixture("seed_small_io.safetensors");
    assert_matches(&model.logits(&io["input"]).unwrap(), &io["logits"]);
}

#[test]
fn densenet121_matches_pytorch() {
    let model = deterministic_model(Config::densenet121(100));
    let io = load_fixture("densenet121_io.safetensors");
    assert_matches(&model.logits(&io["input"]).unwrap(), &io["logits_f64"]);
}

#[test]
fn f64_input_gives_the_f32_inputs_logits() {
    let model = Model::load(fixture("seed_small.safetensors")).unwrap();
    let x = load_fixture("seed_small_io.safetensors")
        .remove("input")
        .unwrap();
    let from_f32 = model.logits(&x).unwrap().to_vec2::<f32>().unwrap();
    let x64 = x.to_dtype(DType::F64).unwrap();
    let from_f64 = model.logits(&x64).unwrap().to_vec2::<f32>().unwrap();
    // Every f32 value is an f64 value: the model sees the same numbers.
    assert_eq!(from_f64, from_f32);
}

#[test]
fn deterministic_weights_match_the_python_generator() {
    // Values printed by tools/make_fixtures.py (tools/README.md).
    let t = deterministic("conv1.weight", &[64, 3, 3, 3]);
    let first: Vec<u32> = t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[..4]
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(first, [0x3cf62b56, 0x3e275d1e, 0xbea2d7be, 0x3e213e8e]);
}

fn pytorch_names(model: &str) -> Vec<(String, Vec<usize>)> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("state_dict_names.json")).unwrap()).unwrap();
    serde_json::from_value(json[model].clone()).unwrap()
}

fn sorted_spec(config: &Config) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<_> = state_dict_spec(config)
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    v.sort();
    v
}

#[test]
fn state_dict_names_and_shapes_are_pytorchs() {
    for (name, config) in [
        ("densenet121", Config::densenet121(100)),
        ("seed_small", small_config(10)),
    ] {
        let mut expected = pytorch_names(name);
        expected.sort();
        assert_eq!(sorted_spec(&config), expected, "{name}");
    }
}

#[test]
fn parameter_counts_match_pytorch() {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("param_counts.json")).unwrap()).unwrap();
    for name in ["densenet121", "densenet169", "densenet201", "densenet161"] {
        let config = Config::by_name(name, 100).unwrap();
        assert_eq!(
            parameter_count(&config).unwrap() as u64,
            json[name].as_u64().unwrap(),
            "{name}"
        );
    }
    assert_eq!(
        parameter_count(&Config::densenet121(100)).unwrap(),
        7_048_548
    );
}
