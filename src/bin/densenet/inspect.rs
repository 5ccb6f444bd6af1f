//! `densenet inspect`: what a model file holds.

use anyhow::Context;
use densenet::config::{Interpolation, Resize, Stem};
use densenet::weights::pth::{sniff, FileKind};
use densenet::weights::{parameter_count, Checkpoint};
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Arguments of `densenet inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model file: .safetensors or a PyTorch checkpoint (.pth/.pt/.bin); or a Hub
    /// reference `hf:OWNER/REPO[@REV][:FILE]`.
    #[arg(value_name = "FILE")]
    file: String,
}

/// Longest metadata value printed in full.
const MAX_VALUE: usize = 100;

/// Runs `densenet inspect`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = &crate::common::resolve_weights(Some(&args.file))?;
    // Its errors name the file.
    let checkpoint = Checkpoint::open(path)?;
    // Check every tensor, so that what is printed describes a file that loads.
    checkpoint
        .tensors(&candle_core::Device::Cpu)
        .with_context(|| format!("cannot load {}", path.display()))?;
    let info = &checkpoint.info;
    let config = &info.config;
    let format = match sniff(path)? {
        FileKind::Zip => "PyTorch checkpoint (zip)",
        _ => "safetensors",
    };
    let mut dtypes: BTreeMap<&str, usize> = BTreeMap::new();
    for t in checkpoint.raw.entries.values() {
        *dtypes.entry(t.dtype.as_str()).or_default() += 1;
    }
    let stem = match config.stem {
        Stem::Cifar => "3×3 conv",
        Stem::CifarNorm => "3×3 conv, BatchNorm, ReLU",
        Stem::ImageNet => "7×7/2 conv, BatchNorm, ReLU, 3×3/2 max pool",
    };
    let p = &info.preprocessing;
    let resize = match p.resize {
        Resize::Stretch => "resize to the input size".to_string(),
        Resize::ShorterSideThenCenterCrop(s) => {
            format!("shorter side to {s}, centre crop")
        }
    };
    let first: Vec<&str> = info.labels.iter().take(5).map(String::as_str).collect();

    println!("file:           {}", path.display());
    println!("format:         {format}");
    println!(
        "family:         {} ({})",
        checkpoint.family.id(),
        checkpoint.family.description()
    );
    println!(
        "architecture:   growth rate {}, blocks {:?}, initial features {}, bottleneck {}k, \
         reduction {}, stem: {stem}, transition ReLU: {}",
        config.growth_rate,
        config.block_config,
        config.init_features,
        config.bn_size,
        config.reduction,
        if config.transition_relu { "yes" } else { "no" }
    );
    println!("parameters:     {}", group(parameter_count(config)?));
    println!(
        "classes:        {} ({}{})",
        config.num_classes,
        first.join(", "),
        if info.labels.len() > first.len() {
            ", …"
        } else {
            ""
        }
    );
    let interpolation = match p.interpolation {
        Interpolation::Bilinear => "bilinear",
        Interpolation::Bicubic => "bicubic",
        Interpolation::Nearest => "nearest",
    };
    println!(
        "preprocessing:  {}×{}, {resize} ({interpolation}), mean {:?}, std {:?}",
        p.input_size[0], p.input_size[1], p.mean, p.std
    );
    println!(
        "dtype:          {}",
        dtypes
            .iter()
            .map(|(d, n)| format!("{d} ({n} tensors)"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let described = if checkpoint.self_describing {
        "from the file's metadata"
    } else {
        "recognised from tensor names and shapes"
    };
    println!("description:    {described}");
    let mut metadata: Vec<_> = checkpoint.raw.metadata.iter().collect();
    metadata.sort();
    if metadata.is_empty() {
        println!("metadata:       none");
    } else {
        println!("metadata:");
        for (k, v) in metadata {
            let v = if v.chars().count() > MAX_VALUE {
                format!(
                    "{}… ({} bytes)",
                    v.chars().take(MAX_VALUE).collect::<String>(),
                    v.len()
                )
            } else {
                v.clone()
            };
            println!("  {k}: {v}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// 7978856 → "7,978,856".
fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
