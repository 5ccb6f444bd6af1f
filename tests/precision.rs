//! The compute precision on the CPU: bf16 against f32 on densenet121 and on the trained
//! reference model (`tools/train_reference.py`), what `Model` reports when bf16 is or is not
//! native, and `densenet eval --precision`.

mod common;

use candle_core::{DType, Tensor};
use common::*;
use densenet::fast::{Isa, Precision};
use densenet::Config;

/// Whether this CPU computes bf16 natively (AVX-512 BF16); the bf16 assertions below need it,
/// and say so when they are skipped.
fn bf16_native() -> bool {
    let native = Precision::Bf16.is_native(Isa::best());
    if !native {
        eprintln!("note: this CPU has no AVX-512 BF16: bf16 falls back to f32, checked as such");
    }
    native
}

/// `max |a − b| / max |b|`.
fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    max_abs_diff(a, b) / scale.to_scalar::<f32>().unwrap()
}

/// The bound on bf16 logits against f32, relative to the largest |logit|: bf16 keeps 8 bits of
/// mantissa (relative rounding 2⁻⁹ ≈ 2e-3 per value), and the roundings of some fifty products
/// in a row partly average out. Measured: 2.6e-3 on densenet121 (deterministic weights), 9.2e-3
/// on the trained reference model.
const BF16_RELATIVE_BOUND: f32 = 2e-2;

#[test]
fn densenet121_bf16_logits_stay_within_the_bound_of_f32() {
    let model = deterministic_model(Config::densenet121(100));
    let io = load_fixture("densenet121_io.safetensors");
    let f32 = model.logits(&io["input"]).unwrap();
    assert_eq!(model.dtype(), DType::F32);
    let model = model.with_dtype(DType::BF16).unwrap();
    let bf16 = model.logits(&io["input"]).unwrap();
    if !bf16_native() {
        assert_eq!(model.dtype(), DType::F32);
        assert_eq!(max_abs_diff(&bf16, &f32), 0.0);
        return;
    }
    assert_eq!(model.dtype(), DType::BF16);
    let rel = relative_error(&bf16, &f32);
    eprintln!("densenet121: bf16 vs f32, max |Δlogit| / max |logit| = {rel:.2e}");
    assert!(rel <= BF16_RELATIVE_BOUND, "relative error {rel}");
    assert!(
        rel > 0.0,
        "bf16 computed exactly as f32: was it run at all?"
    );
    // The plain reference stays f32 whatever the fast path's precision.
    let plain = model.logits_reference(&io["input"]).unwrap();
    assert!(max_abs_diff(&plain, &f32) <= 1e-4);
}

#[test]
fn the_model_reports_the_precision_that_runs_and_keeps_the_one_asked_for() {
    let mut model = deterministic_model(small_config(10))
        .with_dtype(DType::BF16)
        .unwrap();
    let native = bf16_native();
    let want = |isa: Isa| {
        if Precision::Bf16.is_native(isa) {
            DType::BF16
        } else {
            DType::F32
        }
    };
    assert_eq!(model.dtype(), want(Isa::best()));
    for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
        model.set_isa(isa).unwrap();
        assert_eq!(model.dtype(), want(isa), "{isa}");
    }
    // Back on the best instruction set, bf16 runs again where it is native.
    model.set_isa(Isa::best()).unwrap();
    assert_eq!(model.dtype() == DType::BF16, native);
    let model = model.with_dtype(DType::F32).unwrap();
    assert_eq!(model.dtype(), DType::F32);
    let err = model
        .with_dtype(DType::F16)
        .err()
        .expect("f16 is refused on the CPU");
    assert!(err.to_string().contains("F16"), "{err}");
}

/// The index of each row's largest logit.
fn top1(logits: &Tensor) -> Vec<u32> {
    logits.argmax(1).unwrap().to_vec1().unwrap()
}

fn correct(answers: &[u32], labels: &[u32]) -> usize {
    answers.iter().zip(labels).filter(|(a, l)| a == l).count()
}

#[test]
fn bf16_on_the_trained_model_agrees_with_f32_within_the_stated_bounds() {
    let (model, images, labels) = reference();
    let f32 = model.logits(&images).unwrap();
    let model = model.with_dtype(DType::BF16).unwrap();
    let bf16 = model.logits(&images).unwrap();
    if !bf16_native() {
        assert_eq!(max_abs_diff(&bf16, &f32), 0.0);
        return;
    }
    assert_eq!(model.dtype(), DType::BF16);
    let rel = relative_error(&bf16, &f32);
    let (a, b) = (top1(&f32), top1(&bf16));
    let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    let n = labels.len();
    assert_eq!(n, 360);
    let (acc_f32, acc_bf16) = (correct(&a, &labels), correct(&b, &labels));
    eprintln!(
        "trained model, {n} images: bf16 vs f32 relative error {rel:.2e}, top-1 agreement \
         {agree}/{n}, correct {acc_bf16} (bf16) vs {acc_f32} (f32)"
    );
    assert!(rel <= BF16_RELATIVE_BOUND, "relative error {rel}");
    assert!(
        agree as f64 >= 0.995 * n as f64,
        "top-1 agreement {agree}/{n}"
    );
    let drop = 100.0 * (acc_f32 as f64 - acc_bf16 as f64) / n as f64;
    assert!(drop <= 0.3, "accuracy drops by {drop:.2} points");
}

/// `densenet eval` with a small CIFAR-100 model on generated records, with `args`: its exit
/// status, stdout and stderr.
fn eval_cli(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    deterministic_model(small_config(100))
        .save(&model, false)
        .unwrap();
    let data = dir.path().join("test.bin");
    let record = densenet::dataset::CIFAR100_RECORD_BYTES;
    let bytes: Vec<u8> = (0..6 * record)
        .map(|i| match i % record {
            0 => densenet::labels::CIFAR100_FINE_TO_COARSE[i / record],
            1 => (i / record) as u8,
            _ => (i * 37 % 251) as u8,
        })
        .collect();
    std::fs::write(&data, bytes).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_densenet"))
        .args(["eval", "-q", "--json", "--weights"])
        .arg(&model)
        .arg(&data)
        .args(args)
        .env_remove("DENSENET_CPU_ISA")
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status, text(out.stdout), text(out.stderr))
}

#[test]
fn eval_takes_the_precision_and_reports_what_ran() {
    for (args, want) in [
        (
            &["--precision", "bf16"][..],
            if bf16_native() { "bf16" } else { "f32" },
        ),
        (
            &["--dtype", "bf16"][..],
            if bf16_native() { "bf16" } else { "f32" },
        ),
        (&[][..], "f32"),
    ] {
        let (status, stdout, stderr) = eval_cli(args);
        assert!(status.success(), "{args:?}: {stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["precision"], want, "{args:?}");
        assert_eq!(report["images"], 6, "{args:?}");
    }
    let (status, stdout, stderr) = eval_cli(&["--precision", "f16"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("F16") && stderr.contains("CPU"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
