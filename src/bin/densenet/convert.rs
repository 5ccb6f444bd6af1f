//! `densenet convert`: any supported checkpoint → a self-describing safetensors file.

use anyhow::{bail, Context};
use densenet::weights::Checkpoint;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `densenet convert`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The checkpoint: .pth/.pt/.bin (PyTorch zip format) or .safetensors, recognised by content; or a Hub
    /// reference `hf:OWNER/REPO[@REV][:FILE]`.
    #[arg(value_name = "IN")]
    input: String,

    /// The .safetensors file to write.
    #[arg(value_name = "OUT")]
    output: PathBuf,

    /// Replace OUT if it exists.
    #[arg(long)]
    force: bool,
}

/// Runs `densenet convert`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Refuse before reading a possibly large input.
    if !args.force && args.output.exists() {
        bail!(
            "{}: already exists (use --force to overwrite)",
            args.output.display()
        );
    }
    let input = crate::common::resolve_weights(Some(&args.input))?;
    // Its errors name the file.
    let checkpoint = Checkpoint::open(&input)?;
    checkpoint
        .save_safetensors(&args.output, args.force)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let config = &checkpoint.info.config;
    println!(
        "{} → {}: {} ({}), growth rate {}, blocks {:?}, {} classes",
        input.display(),
        args.output.display(),
        checkpoint.family.id(),
        checkpoint.family.description(),
        config.growth_rate,
        config.block_config,
        config.num_classes
    );
    Ok(ExitCode::SUCCESS)
}
