//! `densenet`: tools for model files and datasets (convert, inspect, eval), the machine (system)
//! and the HTTP inference server (serve).

#[path = "../common/mod.rs"]
mod common;
mod convert;
mod eval;
mod inspect;
#[cfg(feature = "serve")]
mod serve;
mod system;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Tools for DenseNet model files: convert checkpoints, inspect them, measure accuracy, serve them
/// over HTTP.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Convert a checkpoint into a self-describing .safetensors file.
    Convert(convert::Args),
    /// Describe a model file: family, architecture, parameters, classes, dtype, metadata.
    Inspect(inspect::Args),
    /// Measure a model's accuracy on a labelled dataset.
    Eval(eval::Args),
    /// Show the CPU's features, the instruction set the fast path runs, threads and backends.
    System(system::Args),
    /// Serve models over HTTP: /v1/classify, the Open Inference Protocol (v2) with its model
    /// repository routes (index, load, unload), /metrics; SIGHUP loads every model again.
    #[cfg(feature = "serve")]
    Serve(serve::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Convert(args) => convert::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Eval(args) => eval::run(args),
        Command::System(args) => system::run(args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", common::report(&e));
            ExitCode::from(2)
        }
    }
}
