//! `densenet eval` (being written).

use std::process::ExitCode;

/// Arguments of `densenet eval`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `densenet eval`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`densenet eval` is not available yet")
}
