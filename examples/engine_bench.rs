//! Benchmark helper for `make bench-compare` (tools/bench_compare.py) and memory checks.
//!
//! ```text
//! engine_bench write MODEL OUT.safetensors    deterministic weights (densenet121 | bc100 |
//!                                             densenet121-imagenet: torchvision's, 224×224)
//! engine_bench time WEIGHTS BATCH ITERS [plain] [SIZE]  seconds per batch, median of ITERS,
//!                                             on SIZE×SIZE inputs (default: the model's size)
//! engine_bench serve WEIGHTS [PRECISION]      reads commands on stdin, one answer line each:
//!     time BATCH ITERS [SIZE]   → median seconds per batch
//!     logits IN OUT             → writes `logits` for IN's `input` tensor; answers `ok`
//!     isa                       → the instruction set the fast path runs
//!     precision                 → the precision it computes in (f32 | bf16 | int8)
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use densenet::{ComputePath, Config, Model, ModelInfo, Preprocessing, Stem};
use std::io::{BufRead, Write};
use std::time::Instant;

/// The median seconds of `iters` batches of `batch` images of `size` (default: the model's).
fn median_seconds(model: &Model, batch: usize, iters: usize, size: Option<usize>) -> Result<f64> {
    let [h, w] = size.map_or(model.preprocessing().input_size, |s| [s, s]);
    let x = Tensor::randn(0f32, 1.0, (batch, 3, h, w), &Device::Cpu)?;
    model.logits(&x)?; // warm-up
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        model.logits(&x)?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        args.get(i)
            .map(String::as_str)
            .context("missing argument (see --help)")
    };
    match arg(0)? {
        "write" => {
            let model = match arg(1)? {
                "densenet121" => common::deterministic_model(Config::densenet121(100)),
                "bc100" => common::deterministic_model(Config::densenet_bc100(100)),
                // torchvision's densenet121: the ImageNet stem, 1000 classes, 224×224 inputs.
                "densenet121-imagenet" => {
                    let config = Config {
                        stem: Stem::ImageNet,
                        ..Config::densenet121(1000)
                    };
                    let info = ModelInfo {
                        labels: densenet::labels::default_imagenet_labels(1000),
                        config,
                        preprocessing: Preprocessing::imagenet(),
                    };
                    Model::synthetic(info, &Device::Cpu)?
                }
                other => bail!("unknown model {other}: densenet121, bc100 or densenet121-imagenet"),
            };
            model.save(arg(2)?, true)?;
        }
        "time" => {
            let mut model = Model::load(arg(1)?)?;
            let mut size = None;
            for extra in &args[4.min(args.len())..] {
                match extra.as_str() {
                    "plain" => {
                        model.set_compute_path(ComputePath::Plain)?;
                    }
                    s => size = Some(s.parse().with_context(|| format!("bad size {s:?}"))?),
                }
            }
            let batch: usize = arg(2)?.parse()?;
            let secs = median_seconds(&model, batch, arg(3)?.parse()?, size)?;
            println!(
                "batch {batch}: {:.2} ms, {:.1} img/s",
                secs * 1e3,
                batch as f64 / secs
            );
        }
        "serve" => {
            let precision = args.get(2).map_or("f32", String::as_str);
            let dtype = densenet::device::parse_precision(precision)?;
            let model = Model::load_in(arg(1)?, &Device::Cpu, dtype)?;
            let mut out = std::io::stdout().lock();
            for line in std::io::stdin().lock().lines() {
                let line = line?;
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["time", batch, iters, size @ ..] => {
                        let size = size.first().map(|s| s.parse()).transpose()?;
                        let secs = median_seconds(&model, batch.parse()?, iters.parse()?, size)?;
                        writeln!(out, "{secs}")?;
                    }
                    ["precision"] => {
                        writeln!(out, "{}", model.compute())?;
                    }
                    ["isa"] => {
                        let isa = model.isa().context("no fast path on this device")?;
                        writeln!(out, "{isa}")?;
                    }
                    ["logits", input, output] => {
                        let tensors = candle_core::safetensors::load(input, &Device::Cpu)?;
                        let x = tensors.get("input").context("no `input` tensor")?;
                        let logits = model.logits(x)?;
                        candle_core::safetensors::save(
                            &std::collections::HashMap::from([("logits".to_string(), logits)]),
                            output,
                        )?;
                        writeln!(out, "ok")?;
                    }
                    _ => bail!("unknown command {line:?}"),
                }
                out.flush()?;
            }
        }
        "--help" | "-h" => println!(
            "{}",
            include_str!("engine_bench.rs")
                .lines()
                .skip(2)
                .take(11)
                .map(|l| l.trim_start_matches("//! "))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        other => bail!("unknown command {other} (see --help)"),
    }
    Ok(())
}
