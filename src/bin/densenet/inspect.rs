//! `densenet inspect` (being written).

use std::process::ExitCode;

/// Arguments of `densenet inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `densenet inspect`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`densenet inspect` is not available yet")
}
