//! `Model::predict` throughput on the CPU at batch 1, 16 and 64, for CIFAR DenseNet-121 and
//! DenseNet-BC-100 (k = 12, three blocks of 16) at 32×32, and at batch 1 and 16 for torchvision's
//! ImageNet densenet121 at 224×224, with the deterministic test weights.
//! Run with `make bench`; `make bench-compare` puts the same engine beside ONNX Runtime.

#[path = "../tests/common/mod.rs"]
mod common;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use densenet::{ComputePath, Config, Stem};

fn predict(c: &mut Criterion) {
    let imagenet = Config {
        stem: Stem::ImageNet,
        ..Config::densenet121(1000)
    };
    for (name, config, size, batches) in [
        (
            "densenet121",
            Config::densenet121(100),
            32,
            &[1usize, 16, 64][..],
        ),
        ("bc100", Config::densenet_bc100(100), 32, &[1, 16, 64]),
        ("densenet121_224", imagenet, 224, &[1, 16]),
    ] {
        let model = common::deterministic_model(config);
        assert_eq!(model.compute_path(), ComputePath::Fast);
        let mut group = c.benchmark_group(format!("predict/{name}"));
        group.sample_size(10);
        for &batch in batches {
            let x = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &Device::Cpu).unwrap();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::from_parameter(batch), &x, |b, x| {
                b.iter(|| model.predict(x).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, predict);
criterion_main!(benches);
