//! `Model::predict` throughput on the CPU at batch 1, 16 and 64, for CIFAR DenseNet-121 and
//! DenseNet-BC-100 (k = 12, three blocks of 16), with the deterministic test weights.
//! Run with `make bench`; `make bench-compare` puts the same engine beside ONNX Runtime.

#[path = "../tests/common/mod.rs"]
mod common;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use densenet::{ComputePath, Config};

fn predict(c: &mut Criterion) {
    for (name, config) in [
        ("densenet121", Config::densenet121(100)),
        ("bc100", Config::densenet_bc100(100)),
    ] {
        let model = common::deterministic_model(config);
        assert_eq!(model.compute_path(), ComputePath::Fast);
        let mut group = c.benchmark_group(format!("predict/{name}"));
        group.sample_size(10);
        for batch in [1usize, 16, 64] {
            let x = Tensor::randn(0f32, 1.0, (batch, 3, 32, 32), &Device::Cpu).unwrap();
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
