//! The trained reference model (tools/train_reference.py: a CIFAR-style DenseNet trained on
//! scikit-learn's handwritten digits): the engine scores its held-out images as PyTorch does.

mod common;

use candle_core::Tensor;
use common::{fixture, load_fixture, reference};
use densenet::eval::Evaluation;

/// PyTorch's logits for the held-out images, and how many of them it got right.
fn pytorch() -> (Tensor, usize) {
    let name = "reference/digits_test_io.safetensors";
    let tensors = load_fixture(name);
    let bytes = std::fs::read(fixture(name)).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let correct = header.metadata().as_ref().unwrap()["correct"]
        .parse()
        .unwrap();
    (tensors["logits"].clone(), correct)
}

#[test]
fn the_engine_scores_the_held_out_digits_as_pytorch_does() {
    let (model, images, labels) = reference();
    assert_eq!(model.labels().len(), 10);
    assert_eq!(labels.len(), 360);
    let (expected, pytorch_correct) = pytorch();

    // One pass of all 360 images (the tests run the crate unoptimised): logits and accuracy.
    let predictions = model.predict_top_k(&images, 5).unwrap();
    let expected = expected.to_vec2::<f32>().unwrap();
    let mut diff = 0f32;
    let mut evaluation = Evaluation::new(model.labels());
    for ((&label, prediction), theirs) in labels.iter().zip(&predictions).zip(&expected) {
        for (a, b) in prediction.logits.iter().zip(theirs) {
            diff = diff.max((a - b).abs());
        }
        evaluation.add(label as usize, prediction).unwrap();
    }
    assert!(diff <= 1e-4, "max |Δlogit| against PyTorch {diff}");
    // Real activations: the logits span a wide range, so 1e-4 is a sharp bound.
    let (lo, hi) = expected
        .iter()
        .flatten()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!(hi - lo > 10.0, "logit spread {}", hi - lo);

    let report = evaluation.report();
    let correct: u64 = report.per_class.iter().map(|c| c.correct).sum();
    assert_eq!(correct as usize, pytorch_correct, "top-1 {}", report.top1);
    assert!(correct >= 350, "a trained model: {correct} of 360");
}
