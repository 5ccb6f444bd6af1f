//! Bad input gives a typed error that names the file or tensor and the problem.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use densenet::{Error, Model};
use std::collections::HashMap;
use std::path::Path;

fn write_edited(path: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut tensors = load_fixture("seed_small.safetensors");
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, path).unwrap();
}

fn load_err(path: &Path) -> Error {
    match Model::load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_weights_file() {
    let err = load_err(Path::new("no/such/weights.safetensors"));
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains("no/such/weights.safetensors"),
        "{err}"
    );
}

#[test]
fn not_a_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.safetensors");
    std::fs::write(&path, b"this is not a weights file at all").unwrap();
    let err = load_err(&path);
    assert!(matches!(err, Error::InvalidWeights { .. }), "{err:?}");
    assert!(err.to_string().contains("junk.safetensors"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    write_edited(&path, |t| {
        t.remove("features.bn.running_var");
    });
    let err = load_err(&path);
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == "features.bn.running_var"),
        "{err:?}"
    );
    assert!(err.to_string().contains("m.safetensors"), "{err}");
}

#[test]
fn wrong_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    write_edited(&path, |t| {
        t.insert(
            "linear.bias".into(),
            Tensor::zeros(9, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_err(&path);
    match &err {
        Error::ShapeMismatch {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "linear.bias");
            assert_eq!(expected, &[10]);
            assert_eq!(found, &[9]);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("linear.bias"), "{err}");
}

#[test]
fn integer_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    write_edited(&path, |t| {
        let w = t["features.bn.weight"].to_dtype(DType::I64).unwrap();
        t.insert("features.bn.weight".into(), w);
    });
    let err = load_err(&path);
    assert!(
        matches!(&err, Error::UnsupportedDtype { name, .. } if name == "features.bn.weight"),
        "{err:?}"
    );
    assert!(err.to_string().contains("I64"), "{err}");
}

#[test]
fn unexpected_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    write_edited(&path, |t| {
        t.insert(
            "head.extra.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_err(&path);
    assert!(err.to_string().contains("head.extra.weight"), "{err}");
}

#[test]
fn unrecognised_architecture_says_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let tensors = HashMap::from([(
        "encoder.weight".to_string(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    )]);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = load_err(&path);
    let msg = err.to_string();
    assert!(
        msg.contains("conv1.weight") && msg.contains("encoder.weight"),
        "{msg}"
    );
}

fn small_model() -> Model {
    deterministic_model(small_config(10))
}

fn predict_err(shape: &[usize]) -> String {
    let x = Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    match small_model().predict(&x) {
        Ok(_) => panic!("{shape:?} was accepted"),
        Err(e @ Error::InvalidInput(_)) => e.to_string(),
        Err(other) => panic!("{other:?}"),
    }
}

#[test]
fn predict_rejects_bad_tensors() {
    assert!(predict_err(&[32, 32]).contains("rank 2"));
    assert!(predict_err(&[1, 1, 3, 32, 32]).contains("rank 5"));
    assert!(predict_err(&[2, 1, 32, 32]).contains("3 (RGB) channels"));
    assert!(predict_err(&[0, 3, 32, 32]).contains("empty"));
    assert!(predict_err(&[1, 3, 3, 32]).contains("too small"));
}

#[test]
fn predict_accepts_one_image_and_other_float_types() {
    let model = small_model();
    let x = Tensor::ones((3, 32, 32), DType::F64, &Device::Cpu).unwrap();
    let p = model.predict(&x).unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].top_k.len(), 5);
    let x = Tensor::ones((1, 3, 32, 32), DType::U8, &Device::Cpu).unwrap();
    assert!(model.predict(&x).unwrap_err().to_string().contains("float"));
}

#[test]
fn non_finite_input_is_refused() {
    let model = small_model();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut values = vec![0.5f32; 2 * 3 * 32 * 32];
        values[3 * 32 * 32 + 7] = bad;
        let x = Tensor::from_vec(values, (2, 3, 32, 32), &Device::Cpu).unwrap();
        match model.predict(&x) {
            Err(Error::InvalidInput(msg)) => assert!(
                msg.contains("NaN or infinite") && msg.contains("image 1"),
                "{msg}"
            ),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

fn image_err(path: &Path) -> String {
    let prep = densenet::Preprocessing::cifar100();
    match prep.load(path, &Device::Cpu) {
        Ok(_) => panic!("{} decoded", path.display()),
        Err(e) => {
            assert!(matches!(e, Error::Image { .. } | Error::Io { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            msg
        }
    }
}

#[test]
fn bad_images_are_named() {
    let dir = tempfile::tempdir().unwrap();
    image_err(&dir.path().join("missing.png"));

    let text = dir.path().join("notes.png");
    std::fs::write(&text, "just some text, not pixels").unwrap();
    assert!(image_err(&text).contains("image"));

    let good = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/images/cifar100_00_49.png"),
    )
    .unwrap();
    let truncated = dir.path().join("truncated.png");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    image_err(&truncated);

    let folder = dir.path().join("folder.png");
    std::fs::create_dir(&folder).unwrap();
    assert!(image_err(&folder).contains("directory"));
}

#[test]
fn f16_and_non_float_precisions_are_refused_on_the_cpu() {
    let err = small_model()
        .with_dtype(DType::F16)
        .err()
        .expect("f16 on the CPU");
    assert!(matches!(err, Error::Device { .. }), "{err:?}");
    assert!(err.to_string().contains("f32"), "{err}");
    let err = small_model()
        .with_dtype(DType::U8)
        .err()
        .expect("u8 compute");
    assert!(err.to_string().contains("bf16"), "{err}");
    assert_eq!(
        small_model().with_dtype(DType::F32).unwrap().dtype(),
        DType::F32
    );
}
