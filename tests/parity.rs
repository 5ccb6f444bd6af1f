//! Parity with PyTorch: logits, state_dict names and shapes, parameter counts.

mod common;

use common::*;
use densenet::weights::{parameter_count, state_dict_spec};
use densenet::{Config, Model};

#[test]
fn small_model_matches_pytorch() {
    // A raw PyTorch state_dict: no metadata, int64 num_batches_tracked buffers included.
    let model = Model::load(fixture("seed_small.safetensors")).unwrap();
    assert_eq!(model.config(), &small_config(10));
    let io = load_fixture("seed_small_io.safetensors");
    let logits = model.logits(&io["input"]).unwrap();
    let diff = max_abs_diff(&logits, &io["logits"]);
    assert!(diff <= 1e-4, "max |Δlogit| = {diff}");
}

#[test]
fn densenet121_matches_pytorch() {
    let model = deterministic_model(Config::densenet121(100));
    let io = load_fixture("densenet121_io.safetensors");
    let logits = model.logits(&io["input"]).unwrap();
    let diff = max_abs_diff(&logits, &io["logits_f64"]);
    assert!(diff <= 1e-4, "max |Δlogit| = {diff}");
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
