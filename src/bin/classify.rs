//! `classify`: label images with a DenseNet.

use anyhow::Context;
use clap::Parser;
use densenet::{DeviceSpec, Model, Prediction};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Classify images with a DenseNet (CIFAR-100 by default) and print the most probable labels.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Image files (PNG, JPEG, BMP, GIF, WebP, TIFF).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,

    /// Weights: a .safetensors or PyTorch (.pth/.pt/.bin) file, or `hf:OWNER/REPO[@REV][:FILE]`.
    /// Default: the model in ./weights/, else hf:edadaltocg/densenet121_cifar100.
    #[arg(short, long, value_name = "PATH")]
    weights: Option<String>,

    /// Where to run: auto, cpu, cuda, cuda:N or metal.
    #[arg(short, long, default_value = "auto", value_name = "DEVICE")]
    device: DeviceSpec,

    /// Compute type on GPUs: f32, f16 or bf16 (weights converted at load; the CPU uses f32).
    #[arg(long, default_value = "f32", value_parser = densenet::device::parse_dtype, value_name = "DTYPE")]
    dtype: candle_core::DType,

    /// How many labels to print per image.
    #[arg(short = 'k', long, default_value_t = densenet::model::DEFAULT_TOP_K, value_parser = positive)]
    top_k: usize,

    /// One JSON object per image (JSON Lines) instead of the table.
    #[arg(long)]
    json: bool,

    /// Images per forward pass.
    #[arg(long, default_value_t = 64, value_parser = positive)]
    batch_size: usize,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive whole number")),
    }
}

/// Exit status when some images could not be classified (the others were).
const SOME_FAILED: u8 = 1;
/// Exit status when nothing could be done (no weights, bad arguments).
const FATAL: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(SOME_FAILED),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(FATAL)
        }
    }
}

/// Classifies every image, printing results in input order; returns whether all succeeded.
fn run(args: &Args) -> anyhow::Result<bool> {
    let device = args.device.device()?;
    let path = densenet::weights::resolve(args.weights.as_deref())?;
    let model = Model::load_on(&path, &device)
        .and_then(|m| m.with_dtype(args.dtype))
        .with_context(|| "cannot load the model")?;
    let mut all_ok = true;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for chunk in args.images.chunks(args.batch_size) {
        let loaded: Vec<_> = chunk
            .iter()
            .map(|p| model.preprocessing().load(p, model.device()))
            .collect();
        let good: Vec<_> = loaded
            .iter()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect();
        let mut predictions = if good.is_empty() {
            Vec::new()
        } else {
            model.predict_top_k(&densenet::preprocess::batch(&good)?, args.top_k)?
        }
        .into_iter();
        for (file, result) in chunk.iter().zip(loaded) {
            match result {
                Ok(_) => {
                    let prediction = predictions
                        .next()
                        .expect("one prediction per decoded image");
                    write_prediction(&mut out, file, &prediction, args.json)?;
                }
                Err(e) => {
                    all_ok = false;
                    out.flush()?;
                    eprintln!("error: {e}");
                }
            }
        }
    }
    out.flush()?;
    Ok(all_ok)
}

fn write_prediction(
    out: &mut impl Write,
    file: &std::path::Path,
    p: &Prediction,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let record = serde_json::json!({
            "file": file.display().to_string(),
            "top_k": p.top_k,
        });
        writeln!(out, "{record}")?;
    } else {
        writeln!(out, "{}", file.display())?;
        for (rank, t) in p.top_k.iter().enumerate() {
            writeln!(
                out,
                "  {:>2}. {:<24} {:>7.2}%",
                rank + 1,
                t.label,
                100.0 * t.probability
            )?;
        }
    }
    Ok(())
}
