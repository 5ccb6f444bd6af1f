//! What the `classify` and `densenet` binaries share: the arguments that choose and load the
//! model, the parser of counts, and the look of the progress bar.

use anyhow::Context;
use densenet::device::Compute;
use densenet::{DeviceSpec, Model};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;

/// An error and its causes on one line (`what: why: …`), leaving out a cause whose text already
/// ends the line: the library's errors give their cause in their own message too.
pub fn report(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `--weights`, `--device` and `--precision`.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Weights: a .safetensors or PyTorch (.pth/.pt/.bin) file, or `hf:OWNER/REPO[@REV][:FILE]`.
    /// Default: the model in ./weights/, else hf:edadaltocg/densenet121_cifar100.
    #[arg(short, long, value_name = "PATH")]
    weights: Option<String>,

    /// Where to run: auto, cpu, cuda, cuda:N or metal.
    #[arg(short, long, default_value = "auto", value_name = "DEVICE")]
    device: DeviceSpec,

    /// Compute precision: f32 (default, exact), bf16 (CPU with AVX-512 BF16, CUDA, Metal; other
    /// CPUs run f32 and say so), int8 (CPU with AVX2 or AVX-512 VNNI; other CPUs run f32 and
    /// say so) or f16 (CUDA, Metal). `--dtype` is the same option.
    #[arg(long, visible_alias = "dtype", default_value = "f32", value_parser = densenet::device::parse_precision, value_name = "PRECISION")]
    precision: Compute,
}

impl ModelArgs {
    /// Opens the device, finds the weights and loads the model; returns it with its file. What
    /// runs other than as asked (the library says, the binary prints) is noted on stderr, even
    /// when the binary is quiet.
    pub fn load(&self) -> anyhow::Result<(Model, PathBuf)> {
        let device = self.device.device()?;
        let path = resolve_weights(self.weights.as_deref())?;
        let model =
            Model::load_in(&path, &device, self.precision).context("cannot load the model")?;
        for fallback in model.fallbacks() {
            eprintln!("note: {fallback}");
        }
        Ok((model, path))
    }
}

impl ModelArgs {
    /// `--weights` as given.
    #[allow(dead_code)] // `densenet serve` only.
    pub fn weights(&self) -> Option<&str> {
        self.weights.as_deref()
    }

    /// The device `--device` names, opened.
    #[allow(dead_code)] // `densenet serve` only.
    pub fn device(&self) -> anyhow::Result<candle_core::Device> {
        Ok(self.device.device()?)
    }

    /// `--precision`.
    #[allow(dead_code)] // `densenet serve` only.
    pub fn precision(&self) -> Compute {
        self.precision
    }
}

/// A count that must be at least 1 (`--batch-size`, `--top-k`...).
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive whole number")),
    }
}

/// A bar counting `total` images, drawn to `target`.
pub fn images_bar(total: usize, target: ProgressDrawTarget) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total as u64), target);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec:.0}  eta {eta}")
            .expect("a valid template"),
    );
    bar
}

/// The model file `--weights` names, as [`densenet::weights::resolve`] finds it, with a progress
/// bar on stderr while a Hub download runs.
#[cfg(feature = "hub")]
pub fn resolve_weights(weights: Option<&str>) -> densenet::Result<PathBuf> {
    let hub = || Ok(densenet::weights::hub::Hub::from_env()?.progress(true));
    let dir = std::path::Path::new(densenet::weights::DEFAULT_DIR);
    densenet::weights::resolve_with(weights, dir, hub)
}

/// The model file `--weights` names, as [`densenet::weights::resolve`] finds it.
#[cfg(not(feature = "hub"))]
pub fn resolve_weights(weights: Option<&str>) -> densenet::Result<PathBuf> {
    densenet::weights::resolve(weights)
}
