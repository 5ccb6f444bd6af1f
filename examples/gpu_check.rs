//! Checks a GPU against the CPU on the same synthetic DenseNet-121 and times both.
//!
//! Built by `make build-cuda` (with `--features cuda`) and run by `tools/gpu_check.sh` on a GPU
//! machine: it classifies the example images and a generated batch of 1024 on the CPU (f32) and on
//! the GPU in f32, f16 and bf16, requires identical top-1 and max |Δprob| ≤ 1e-4 for f32, reports
//! agreement for f16/bf16, and prints images/s at batch 1, 64 and 256 for each.
//!
//! cargo run --release --features cuda --example gpu_check -- [--device cuda:0] [IMAGE...]

use candle_core::{DType, Device, Tensor};
use densenet::{Config, DeviceSpec, Model, ModelInfo, Preprocessing};
use std::time::Instant;

const GENERATED: usize = 1024;
const F32_TOLERANCE: f32 = 1e-4;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut spec = DeviceSpec::Cuda(0);
    if let Some(i) = args.iter().position(|a| a == "--device") {
        spec = args.get(i + 1).ok_or("--device needs a value")?.parse()?;
        args.drain(i..i + 2);
    }
    let gpu = spec.device()?;
    let info = ModelInfo {
        config: Config::densenet121(100),
        preprocessing: Preprocessing::cifar100(),
        labels: densenet::labels::default_labels(100),
    };
    let cpu_model = Model::synthetic(info.clone(), &Device::Cpu)?;

    let mut images = Vec::new();
    for path in &args {
        images.push(
            cpu_model
                .preprocessing()
                .load(path.as_ref(), &Device::Cpu)?,
        );
    }
    // Synthetic inputs of roughly unit variance, the same on every run.
    let generated = (densenet::weights::synthetic::tensor(
        "input.bias",
        &[GENERATED, 3, 32, 32],
        &Device::Cpu,
    )? * 10.0)?;
    let mut inputs = vec![generated];
    if !images.is_empty() {
        inputs.insert(0, densenet::preprocess::batch(&images)?);
    }
    let input = Tensor::cat(&inputs, 0)?;
    let n = input.dim(0)?;
    println!(
        "inputs: {} example images + {GENERATED} generated; device {spec}",
        images.len()
    );

    let reference = probabilities(&cpu_model, &input, 256)?;
    let mut ok = true;
    let mut rows = vec![("cpu".to_string(), "f32", throughput(&cpu_model, &input)?)];
    for (name, dtype) in [
        ("f32", DType::F32),
        ("f16", DType::F16),
        ("bf16", DType::BF16),
    ] {
        let model = Model::synthetic(info.clone(), &gpu)?.with_dtype(dtype)?;
        let probs = probabilities(&model, &input, 256)?;
        let (agree, max_delta) = compare(&reference, &probs);
        println!(
            "{spec} {name}: top-1 agrees with the CPU on {agree}/{n} images, max |Δprob| = {max_delta:.2e}"
        );
        if dtype == DType::F32 && (agree != n || max_delta > F32_TOLERANCE) {
            println!("FAIL: f32 on {spec} must match the CPU (top-1 identical, max |Δprob| ≤ {F32_TOLERANCE:e})");
            ok = false;
        }
        rows.push((spec.to_string(), name, throughput(&model, &input)?));
    }

    println!("\n| device | dtype | batch 1, img/s | batch 64, img/s | batch 256, img/s |");
    println!("|---|---|---|---|---|");
    for (device, dtype, t) in rows {
        println!(
            "| {device} | {dtype} | {:.0} | {:.0} | {:.0} |",
            t[0], t[1], t[2]
        );
    }
    if !ok {
        return Err("the GPU's f32 results differ from the CPU's".into());
    }
    println!("\nPASS");
    Ok(())
}

fn probabilities(
    model: &Model,
    input: &Tensor,
    batch: usize,
) -> Result<Vec<Vec<f32>>, densenet::Error> {
    let mut out = Vec::new();
    let n = input.dim(0)?;
    for start in (0..n).step_by(batch) {
        let chunk = input.narrow(0, start, batch.min(n - start))?;
        out.extend(
            model
                .predict_top_k(&chunk, 1)?
                .into_iter()
                .map(|p| p.probabilities),
        );
    }
    Ok(out)
}

fn compare(a: &[Vec<f32>], b: &[Vec<f32>]) -> (usize, f32) {
    let argmax = |v: &[f32]| {
        (0..v.len())
            .max_by(|&i, &j| v[i].total_cmp(&v[j]))
            .unwrap_or(0)
    };
    let agree = a
        .iter()
        .zip(b)
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    let delta = a
        .iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max);
    (agree, delta)
}

/// Images per second at batch 1, 64 and 256 (median of a few timed runs after a warm-up).
fn throughput(model: &Model, input: &Tensor) -> Result<[f64; 3], densenet::Error> {
    let mut out = [0.0; 3];
    for (slot, batch) in [1usize, 64, 256].into_iter().enumerate() {
        let x = input.narrow(0, 0, batch)?;
        model.logits(&x)?.to_vec2::<f32>()?;
        let runs = if batch == 1 { 20 } else { 5 };
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = Instant::now();
            // Reading the logits back waits for the device to finish.
            model.logits(&x)?.to_vec2::<f32>()?;
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        out[slot] = batch as f64 / times[runs / 2];
    }
    Ok(out)
}
