//! The CPU fast path against the plain candle-nn network (and PyTorch), for every variant.

mod common;

use candle_core::Tensor;
use common::*;
use densenet::fast::Isa;
use densenet::{ComputePath, Config, Model, Stem};

/// A deterministic input batch [n, 3, size, size] with values of a normalised image's scale.
fn input(n: usize, size: usize, seed: &str) -> Tensor {
    deterministic(seed, &[n, 3, size, size])
        .affine(20.0, 0.0)
        .unwrap()
}

/// The instruction sets this CPU runs, least capable first.
fn supported() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
}

/// Logits of `model` compiled for each instruction set this CPU runs.
fn logits_per_isa(model: &mut Model, x: &Tensor) -> Vec<(Isa, Tensor)> {
    supported()
        .into_iter()
        .map(|isa| {
            assert_eq!(model.set_isa(isa).unwrap(), isa);
            assert_eq!(model.isa(), Some(isa));
            (isa, model.logits(x).unwrap())
        })
        .collect()
}

fn check(config: Config, batch: usize, size: usize) {
    let mut model = deterministic_model(config.clone());
    assert_eq!(model.compute_path(), ComputePath::Fast);
    let x = input(batch, size, "input.bias");
    let plain = model.logits_reference(&x).unwrap();
    for (isa, fast) in logits_per_isa(&mut model, &x) {
        let diff = max_abs_diff(&fast, &plain);
        assert!(
            diff <= 1e-4,
            "{config:?} {isa} batch {batch}: max |Δlogit| = {diff}"
        );
    }
}

#[test]
fn densenet121_fast_matches_plain_and_pytorch_on_every_instruction_set() {
    let mut model = deterministic_model(Config::densenet121(100));
    assert_eq!(model.compute_path(), ComputePath::Fast);
    assert_eq!(model.isa(), Some(Isa::best()));
    let io = load_fixture("densenet121_io.safetensors");
    let plain = model.logits_reference(&io["input"]).unwrap();
    let per_isa = logits_per_isa(&mut model, &io["input"]);
    let has = |isa| per_isa.iter().any(|(i, _)| *i == isa);
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        assert_eq!(has(Isa::Avx2), avx2);
        assert_eq!(
            has(Isa::Avx512),
            avx2 && is_x86_feature_detected!("avx512f")
        );
        assert!(!has(Isa::Neon));
    }
    #[cfg(target_arch = "aarch64")]
    {
        assert_eq!(
            has(Isa::Neon),
            std::arch::is_aarch64_feature_detected!("neon")
        );
        assert!(!has(Isa::Avx2) && !has(Isa::Avx512));
    }
    #[cfg(target_arch = "wasm32")]
    {
        assert_eq!(has(Isa::Simd128), cfg!(target_feature = "simd128"));
        assert!(!has(Isa::Neon) && !has(Isa::Avx2));
    }
    for (isa, fast) in per_isa {
        let diff = max_abs_diff(&fast, &plain);
        assert!(diff <= 1e-4, "{isa} vs plain: max |Δlogit| = {diff}");
        let diff = max_abs_diff(&fast, &io["logits_f64"]);
        assert!(diff <= 1e-4, "{isa} vs PyTorch f64: max |Δlogit| = {diff}");
    }
}

#[test]
fn asking_for_an_instruction_set_the_cpu_lacks_runs_the_best_it_has() {
    let mut model = deterministic_model(small_config(10));
    let best = Isa::best();
    for isa in Isa::ALL {
        let runs = if isa.is_supported() { isa } else { best };
        assert_eq!(model.set_isa(isa).unwrap(), runs, "{isa}");
    }
    assert_eq!(model.isa(), Some(best));
}

#[test]
fn a_new_precision_keeps_the_instruction_set_asked_for() {
    let model = deterministic_model(small_config(10));
    let mut model = model.with_dtype(candle_core::DType::BF16).unwrap();
    model.set_isa(Isa::Portable).unwrap();
    for precision in ["int8", "f32"] {
        model = model
            .with_dtype(precision.parse::<densenet::Compute>().unwrap())
            .unwrap();
        assert_eq!(model.isa(), Some(Isa::Portable), "{precision}");
    }
}

#[test]
fn every_stem_and_transition_matches_plain() {
    for stem in [Stem::Cifar, Stem::CifarNorm, Stem::ImageNet] {
        for transition_relu in [false, true] {
            let config = Config {
                stem,
                transition_relu,
                ..small_config(10)
            };
            // 36 is not a power of two: odd sizes after the ImageNet stem and the transitions.
            let size = if stem == Stem::ImageNet { 36 } else { 20 };
            check(config, 3, size);
        }
    }
}

#[test]
fn imagenet_sizes_match_plain() {
    // 224: blocks at 56, 28, 14 and 7 pixels, as torchvision's densenet121 at its size; 225: odd
    // sizes after the stem's convolution, its pool and every transition.
    let config = Config {
        stem: Stem::ImageNet,
        block_config: vec![2, 2, 2, 2],
        ..small_config(10)
    };
    for size in [224, 225] {
        check(config.clone(), 2, size);
    }
}

#[test]
fn single_images_and_odd_batches_match_plain() {
    // 17: more images than one pass of the fast path takes.
    for batch in [1, 3, 17] {
        check(small_config(7), batch, 20);
    }
}

#[test]
fn predict_uses_the_fast_path_on_the_cpu() {
    let mut model = deterministic_model(small_config(10));
    let x = input(2, 32, "input.bias");
    let fast = model.logits(&x).unwrap();
    let default = model.predict(&x).unwrap();
    assert_eq!(default[0].logits, fast.to_vec2::<f32>().unwrap()[0]);
    model.set_compute_path(ComputePath::Plain).unwrap();
    assert_eq!(model.compute_path(), ComputePath::Plain);
    let plain = model.logits(&x).unwrap();
    assert_eq!(
        plain.to_vec2::<f32>().unwrap(),
        model
            .logits_reference(&x)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    );
    // The two paths round differently: equal logits would mean one path was not taken.
    assert_ne!(
        plain.to_vec2::<f32>().unwrap(),
        fast.to_vec2::<f32>().unwrap()
    );
    assert!(max_abs_diff(&plain, &fast) <= 1e-4);
}

#[test]
#[cfg_attr(target_os = "wasi", ignore = "WASI has no temporary directory")]
fn a_model_loaded_from_a_file_reads_its_plain_network_back_and_notices_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    deterministic_model(small_config(10))
        .save(&path, false)
        .unwrap();
    let x = input(2, 20, "input.bias");

    let model = densenet::Model::load(&path).unwrap();
    assert_eq!(model.compute_path(), ComputePath::Fast);
    let fast = model.logits(&x).unwrap();
    let plain = model.logits_reference(&x).unwrap();
    assert!(max_abs_diff(&fast, &plain) <= 1e-4);
    let copy = dir.path().join("copy.safetensors");
    model.save(&copy, false).unwrap();
    let again = densenet::Model::load(&copy).unwrap().logits(&x).unwrap();
    assert_eq!(
        again.to_vec2::<f32>().unwrap(),
        fast.to_vec2::<f32>().unwrap()
    );

    let mut model = densenet::Model::load(&path).unwrap();
    deterministic_model(small_config(7))
        .save(&path, true)
        .unwrap();
    // The fast path holds its own weights and goes on as loaded...
    assert_eq!(
        model.logits(&x).unwrap().to_vec2::<f32>().unwrap(),
        fast.to_vec2::<f32>().unwrap()
    );
    // ...but the plain network cannot come back from a file that has changed.
    for err in [
        model.logits_reference(&x).unwrap_err(),
        model.set_compute_path(ComputePath::Plain).unwrap_err(),
        model.save(&copy, true).unwrap_err(),
    ] {
        assert!(
            matches!(err, densenet::Error::ChangedSinceLoad { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("m.safetensors"), "{err}");
    }
    assert_eq!(model.compute_path(), ComputePath::Fast);
}
