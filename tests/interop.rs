//! PyTorch checkpoints and naming families: torchvision's ImageNet DenseNets, DenseNet-BC and
//! timm CIFAR models in torchvision/timm naming, from .pth and .safetensors, against logits
//! computed by the real PyTorch classes (tools/make_interop_fixtures.py).

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use densenet::weights::naming::Family;
use densenet::weights::{state_dict_spec, Checkpoint, TensorKind};
use densenet::{Config, Error, Model, Resize, Stem};
use std::collections::HashMap;
use std::path::PathBuf;

fn interop(name: &str) -> PathBuf {
    fixture(&format!("interop/{name}"))
}

fn io(name: &str) -> HashMap<String, Tensor> {
    load_fixture(&format!("interop/{name}"))
}

fn assert_matches(model: &Model, io_name: &str, key: &str) {
    let io = io(io_name);
    let logits = model.logits(&io["input"]).unwrap();
    let diff = max_abs_diff(&logits, &io[key]);
    assert!(diff <= 1e-4, "{io_name}: max |Δlogit| = {diff}");
}

fn small(stem: Stem) -> Config {
    Config {
        stem,
        transition_relu: true,
        ..small_config(10)
    }
}

#[test]
fn small_models_match_pytorch_from_pth_and_safetensors() {
    for (name, family, stem) in [
        ("tv_imagenet", Family::TorchvisionImageNet, Stem::ImageNet),
        ("bc_norm0", Family::TorchvisionCifar, Stem::CifarNorm),
        ("bc", Family::TorchvisionCifar, Stem::Cifar),
        ("timm_cifar", Family::TorchvisionCifar, Stem::Cifar),
    ] {
        for ext in ["pth", "safetensors"] {
            let file = interop(&format!("{name}_small.{ext}"));
            let checkpoint = Checkpoint::open(&file).unwrap();
            assert_eq!(checkpoint.family, family, "{name}.{ext}");
            assert_eq!(checkpoint.info.config, small(stem), "{name}.{ext}");
            let model = Model::load(&file).unwrap();
            assert_matches(&model, &format!("{name}_small_io.safetensors"), "logits");
        }
    }
}

#[test]
fn imagenet_family_gets_imagenet_preprocessing() {
    let model = Model::load(interop("tv_imagenet_small.pth")).unwrap();
    let p = model.preprocessing();
    assert_eq!(p.input_size, [224, 224]);
    assert_eq!(p.resize, Resize::ShorterSideThenCenterCrop(256));
    assert_eq!(p.mean, [0.485, 0.456, 0.406]);
    assert_eq!(p.std, [0.229, 0.224, 0.225]);
    // 10 classes: not ImageNet's 1000, so generic names.
    assert_eq!(model.labels()[3], "class_3");
    let cifar = Model::load(interop("bc_small.pth")).unwrap();
    assert_eq!(cifar.preprocessing(), &densenet::Preprocessing::cifar100());
}

#[test]
fn checkpoint_variants_load_the_same_model() {
    for variant in [
        "nested_state_dict",
        "nested_model",
        "nested_net",
        "module",
        "old_keys",
    ] {
        let model = Model::load(interop(&format!("tv_imagenet_small_{variant}.pth")))
            .unwrap_or_else(|e| panic!("{variant}: {e}"));
        assert_matches(&model, "tv_imagenet_small_io.safetensors", "logits");
    }
}

#[test]
fn format_is_recognised_by_content_not_extension() {
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("timm_cifar_small.pth", "pytorch_model.bin"),
        ("timm_cifar_small.pth", "weights.safetensors"),
        ("timm_cifar_small.safetensors", "weights.pt"),
    ] {
        let path = dir.path().join(to);
        std::fs::copy(interop(from), &path).unwrap();
        let model = Model::load(&path).unwrap_or_else(|e| panic!("{to}: {e}"));
        assert_matches(&model, "timm_cifar_small_io.safetensors", "logits");
    }
}

/// From the bytes of a file (a browser's way): the same model as from the file, whatever the
/// format; bad bytes are refused naming what the caller called them; the plain network, which
/// only a file gives back, is refused with the reason.
#[test]
fn models_load_from_bytes_as_from_files() {
    for name in ["timm_cifar_small.pth", "timm_cifar_small.safetensors"] {
        let bytes = std::fs::read(interop(name)).unwrap();
        let model = Model::from_bytes("dropped-file", &bytes, DType::F32).unwrap();
        assert_matches(&model, "timm_cifar_small_io.safetensors", "logits");
        let io = io("timm_cifar_small_io.safetensors");
        let from_file = Model::load(interop(name)).unwrap();
        let want = from_file.predict(&io["input"]).unwrap();
        assert_eq!(model.predict(&io["input"]).unwrap(), want, "{name}");
        let explained = densenet::explain::explain(&model, &io["input"], 3).unwrap();
        let from_file = densenet::explain::explain(&from_file, &io["input"], 3).unwrap();
        assert_eq!(explained, from_file, "{name}");
        let Err(message) = model.network().map(|_| ()) else {
            panic!("{name}: a plain network from bytes");
        };
        let message = message.to_string();
        assert!(message.contains("loaded from bytes"), "{message}");
    }
    let legacy = std::fs::read(interop("tv_imagenet_small_legacy.pth")).unwrap();
    for (bytes, expected) in [
        (&legacy[..], "legacy"),
        (&b"PK\x03\x04 not a zip"[..], "PyTorch checkpoint"),
        (&[7u8; 100][..], "safetensors"),
        (&[][..], "safetensors"),
    ] {
        let message = Model::from_bytes("dropped-file", bytes, DType::F32)
            .err()
            .expect("refused")
            .to_string();
        assert!(message.contains("dropped-file"), "{message}");
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn legacy_checkpoint_is_refused_with_how_to_resave() {
    let err = Model::load(interop("tv_imagenet_small_legacy.pth"))
        .err()
        .expect("legacy format refused");
    let msg = err.to_string();
    assert!(matches!(err, Error::InvalidWeights { .. }), "{msg}");
    assert!(msg.contains("tv_imagenet_small_legacy.pth"), "{msg}");
    assert!(
        msg.contains("legacy") && msg.contains("torch.save"),
        "{msg}"
    );
}

#[test]
fn malicious_pickle_is_refused_and_nothing_runs() {
    // The fixture's pickle calls os.system("touch /tmp/densenet-malicious-pickle-ran") when
    // Python unpickles it.
    let marker = std::path::Path::new("/tmp/densenet-malicious-pickle-ran");
    let _ = std::fs::remove_file(marker);
    let err = Model::load(interop("malicious.pth"))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("malicious.pth"), "{err}");
    assert!(!marker.exists(), "the pickle's payload ran");
}

#[test]
fn unknown_checkpoint_lists_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.safetensors");
    let t = Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("encoder.weight", t)]), &path).unwrap();
    let err = Model::load(&path).err().expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, Error::UnknownArchitecture { .. }), "{msg}");
    for expected in ["features.conv0.weight", "conv1.weight", "encoder.weight"] {
        assert!(msg.contains(expected), "{msg}");
    }
}

#[test]
fn missing_tensor_is_named_as_the_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.safetensors");
    let mut tensors =
        candle_core::safetensors::load(interop("bc_small.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("features.denseblock2.denselayer3.conv2.weight");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = Model::load(&path).err().expect("refused");
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == "features.denseblock2.denselayer3.conv2.weight"),
        "{err}"
    );
}

/// Writes the deterministic weights of `config` under `family`'s names (no metadata).
fn deterministic_file(config: &Config, family: Family, dir: &std::path::Path) -> PathBuf {
    let n = config.block_config.len();
    let tensors: HashMap<String, Tensor> = state_dict_spec(config)
        .unwrap()
        .into_iter()
        .filter(|s| s.kind != TensorKind::Counter)
        .map(|s| {
            let name = family.file_name(&s.name, n);
            let t = deterministic(&name, &s.shape);
            (name, t)
        })
        .collect();
    let path = dir.join(format!("{}.safetensors", family.id()));
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

#[test]
fn full_size_models_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "tv_imagenet",
            Family::TorchvisionImageNet,
            Config {
                stem: Stem::ImageNet,
                transition_relu: true,
                ..Config::densenet121(1000)
            },
        ),
        (
            // DenseNet-BC: depth 100, k = 12, compression 0.5.
            "bc_norm0",
            Family::TorchvisionCifar,
            Config {
                growth_rate: 12,
                block_config: vec![16, 16, 16],
                init_features: 24,
                stem: Stem::CifarNorm,
                transition_relu: true,
                ..Config::densenet121(100)
            },
        ),
        (
            // edadaltocg/densenet121_cifar100 (timm).
            "timm_cifar",
            Family::TorchvisionCifar,
            Config {
                growth_rate: 12,
                init_features: 24,
                stem: Stem::Cifar,
                transition_relu: true,
                ..Config::densenet121(100)
            },
        ),
    ];
    for (name, family, config) in cases {
        let path = deterministic_file(&config, family, dir.path());
        let model = Model::load(&path).unwrap();
        assert_eq!(model.config(), &config, "{name}");
        assert_matches(&model, &format!("{name}_full_io.safetensors"), "logits_f64");
    }
}

#[test]
fn imagenet_models_get_imagenet_labels() {
    let labels = densenet::labels::imagenet();
    assert_eq!(labels.len(), 1000);
    assert_eq!(labels[0], "tench");
    assert_eq!(labels[207], "golden retriever");
    assert_eq!(labels[999], "toilet tissue");
}

#[test]
fn a_loaded_checkpoint_saves_and_reloads_under_canonical_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saved.safetensors");
    let model = Model::load(interop("tv_imagenet_small.pth")).unwrap();
    model.save(&path, false).unwrap();
    let reloaded = Model::load(&path).unwrap();
    assert_eq!(reloaded.info(), model.info());
    assert_matches(&reloaded, "tv_imagenet_small_io.safetensors", "logits");
}
