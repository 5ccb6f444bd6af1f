//! `densenet convert` (being written).

use std::process::ExitCode;

/// Arguments of `densenet convert`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `densenet convert`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`densenet convert` is not available yet")
}
