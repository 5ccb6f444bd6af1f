//! Soak benchmark: classifies a generated batch of image files again and again, the whole way
//! from file to prediction, and prints the resident memory after each round, to show that it
//! does not grow.
//!
//! `make bench-soak` (`cargo bench --bench soak`); `SOAK_ROUNDS` and `SOAK_BATCH` change the
//! number of rounds (default 40) and images per round (default 128). Exits with status 1 if the
//! resident set grows by more than 10% + 16 MiB between the end of the warm-up (round 5) and the
//! last round. Under `cargo test` (no `--bench` argument) it runs two short rounds on a small
//! network, as a smoke test.

use candle_core::Device;
use densenet::{Config, Model, ModelInfo, Preprocessing, Stem};
use image::{Rgb, RgbImage};
use std::path::PathBuf;
use std::time::Instant;

/// `VmRSS` and `VmHWM` (peak) of this process in KiB, from /proc/self/status (Linux).
fn memory_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (config, rounds, batch) = if bench {
        (
            Config::densenet121(100),
            env_or("SOAK_ROUNDS", 40),
            env_or("SOAK_BATCH", 128),
        )
    } else {
        let small = Config {
            growth_rate: 6,
            block_config: vec![2, 3, 2],
            init_features: 12,
            bn_size: 4,
            reduction: 0.5,
            num_classes: 100,
            stem: Stem::Cifar,
            transition_relu: false,
        };
        (small, 2, 8)
    };
    let info = ModelInfo {
        labels: densenet::labels::default_labels(config.num_classes),
        config,
        preprocessing: Preprocessing::cifar100(),
    };
    let model = Model::synthetic(info, &Device::Cpu).expect("synthetic model");

    // Images of assorted sizes, so that resizing is exercised too.
    let dir = tempfile::tempdir().expect("temporary directory");
    let paths: Vec<PathBuf> = (0..batch as u32)
        .map(|i| {
            let (w, h) = (32 + (i % 5) * 12, 32 + (i % 3) * 20);
            let image = RgbImage::from_fn(w, h, |x, y| {
                Rgb([(x * 7 + i) as u8, (y * 5 + 3 * i) as u8, (x * y + i) as u8])
            });
            let path = dir.path().join(format!("{i:04}.png"));
            image.save(&path).expect("write image");
            path
        })
        .collect();

    let parameters = densenet::weights::parameter_count(model.config()).expect("parameters");
    println!("soak: {parameters} parameters, {batch} image files per round, {rounds} rounds");
    println!("round   seconds   images/s   VmRSS MiB   VmHWM MiB");
    let warm_up = 5.min(rounds);
    let mut after_warm_up = None;
    let mut last = 0;
    let mut checksum = 0f32;
    for round in 1..=rounds {
        let start = Instant::now();
        let input = model
            .preprocessing()
            .load_batch(&paths, model.device())
            .expect("images load");
        let predictions = model.predict(&input).expect("prediction");
        checksum += predictions
            .iter()
            .map(|p| p.top_k[0].probability)
            .sum::<f32>();
        let seconds = start.elapsed().as_secs_f64();
        let (rss, hwm) = memory_kib().unwrap_or((0, 0));
        println!(
            "{round:5} {seconds:9.3} {:10.1} {:11.1} {:11.1}",
            batch as f64 / seconds,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
        if round == warm_up {
            after_warm_up = Some(rss);
        }
        last = rss;
    }
    println!("(checksum of top-1 probabilities: {checksum:.4})");
    if let Some(base) = after_warm_up.filter(|&b| b > 0 && rounds > warm_up) {
        let growth = last as f64 - base as f64;
        println!(
            "VmRSS after round {warm_up}: {:.1} MiB; after round {rounds}: {:.1} MiB; growth {:+.1} MiB",
            base as f64 / 1024.0,
            last as f64 / 1024.0,
            growth / 1024.0
        );
        if growth > base as f64 * 0.10 + 16.0 * 1024.0 {
            eprintln!("memory grew during the soak");
            std::process::exit(1);
        }
    }
}
