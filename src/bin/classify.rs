//! `classify`: label images with a DenseNet.

mod common;

use clap::Parser;
use common::{images_bar, positive, ModelArgs};
use densenet::explain::{self, ExplanationWriter};
use densenet::inputs::Shard;
use densenet::pipeline::{Pipeline, DEFAULT_BATCH_SIZE};
use densenet::{labels, Model, Prediction};
use indicatif::{ProgressBar, ProgressDrawTarget};
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Classify images with a DenseNet (CIFAR-100 by default) and print the most probable labels.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Image files, directories (searched recursively for images) or glob patterns
    /// (quoted, such as 'photos/**/*.jpg').
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<OsString>,

    #[command(flatten)]
    model: ModelArgs,

    /// How many labels to print per image.
    #[arg(short = 'k', long, default_value_t = densenet::model::DEFAULT_TOP_K, value_parser = positive)]
    top_k: usize,

    /// One JSON object per image (JSON Lines) instead of the table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,

    /// CSV with a header row, one row per image, instead of the table.
    #[arg(long)]
    csv: bool,

    /// Images per forward pass.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_parser = positive)]
    batch_size: usize,

    /// No progress bar and no summary on stderr (errors are still reported).
    #[arg(short, long)]
    quiet: bool,

    /// Also write, into DIR, a picture per image of where the evidence for its top label lies
    /// (a class activation map), named after the image: NAME.cam.png.
    #[arg(long, value_name = "DIR")]
    explain: Option<PathBuf>,

    /// Overwrite existing pictures in the --explain folder.
    #[arg(long, requires = "explain")]
    force: bool,

    /// Classify only the K-th of N disjoint shards of the images (K from 0, e.g. 3/8): the
    /// images are sorted by path and cut into N runs, for a Kubernetes Indexed Job or a Slurm
    /// array. Results then come in path order.
    #[arg(long, value_name = "K/N")]
    shard: Option<Shard>,
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
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", common::report(&e));
            ExitCode::from(FATAL)
        }
    }
}

/// Classifies every image found in the inputs, printing results in input order; returns
/// whether every input gave its images and every image was classified.
fn run(args: &Args) -> anyhow::Result<bool> {
    let mut found = densenet::inputs::expand(&args.inputs);
    let mut empty_shard = false;
    if let Some(shard) = args.shard {
        let all = found.images.len();
        found.images = shard.select(&found.images);
        // More shards than images leaves some empty: not a failure of this one.
        empty_shard = all > 0 && found.images.is_empty();
    }
    let mut failed = found.problems.len();
    for problem in &found.problems {
        eprintln!("error: {problem}");
    }
    if !found.skipped.is_empty() && !args.quiet {
        eprintln!(
            "note: skipped {} file(s) that are not images (by their extension)",
            found.skipped.len()
        );
    }
    let (model, _) = args.model.load()?;
    if empty_shard {
        if !args.quiet {
            eprintln!("note: this shard holds none of the images");
        }
        return Ok(failed == 0);
    }
    if found.images.is_empty() {
        eprintln!("error: no images to classify");
        return Ok(false);
    }
    let format = if args.json {
        Format::Json
    } else if args.csv {
        Format::Csv
    } else {
        Format::Table
    };
    let mut printer = Printer::new(format, &model, args.top_k);
    let mut progress = Progress::new(found.images.len(), args.quiet);
    let pipeline = Pipeline::new(args.batch_size);
    let total = found.images.len();
    let mut done = 0;
    // Every image's outcome, in input order; output is flushed batch by batch, between redraws
    // of the progress bar.
    let mut record = |file: &Path, outcome: densenet::Result<Prediction>| {
        match outcome {
            Ok(prediction) => printer.prediction(file, &prediction),
            Err(e) => {
                failed += 1;
                printer.error(&e);
            }
        }
        done += 1;
        if done % args.batch_size == 0 || done == total {
            progress.suspend(|| printer.flush()).map_err(to_library)?;
            progress.advance(done);
        }
        Ok(())
    };
    match &args.explain {
        None => pipeline.classify_files(&model, &found.images, args.top_k, &mut record)?,
        Some(dir) => {
            let mut writer = ExplanationWriter::new(dir, args.force)?;
            explain::explain_files(
                &pipeline,
                &model,
                &found.images,
                args.top_k,
                |file, outcome| {
                    let outcome = outcome.and_then(|(prediction, picture)| {
                        writer.write(file, &picture).map(|_| prediction)
                    });
                    record(file, outcome)
                },
            )?
        }
    }
    let unreadable = failed - found.problems.len();
    progress.finish(total - unreadable, unreadable, found.skipped.len());
    Ok(failed == 0)
}

/// Writing to stdout failed: carried through the library's callbacks.
fn to_library(source: std::io::Error) -> densenet::Error {
    densenet::Error::Io {
        path: "<stdout>".into(),
        source,
    }
}

/// Whether the reader of stdout went away (`classify … | head`): the run stops quietly.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<densenet::Error>(),
        Some(densenet::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Table,
    Json,
    Csv,
}

/// Formats results and errors, holding them until [`Printer::flush`] so that a batch is written
/// at once, between redraws of the progress bar.
struct Printer {
    format: Format,
    coarse: bool,
    pending: Vec<Line>,
}

enum Line {
    Out(String),
    Err(String),
}

impl Printer {
    fn new(format: Format, model: &Model, k: usize) -> Self {
        let mut printer = Self {
            format,
            coarse: labels::is_cifar100(model.labels()),
            pending: Vec::new(),
        };
        if format == Format::Csv {
            let mut header = vec!["file".to_string(), "coarse".to_string()];
            for rank in 1..=k.min(model.labels().len()) {
                header.extend(["label", "index", "probability"].map(|c| format!("{c}_{rank}")));
            }
            printer
                .pending
                .push(Line::Out(densenet::csv::record(&header)));
        }
        printer
    }

    fn coarse_of(&self, p: &Prediction) -> Option<&'static str> {
        self.coarse
            .then(|| labels::cifar100_coarse_of(p.top_k[0].index))
            .flatten()
    }

    fn prediction(&mut self, file: &Path, p: &Prediction) {
        let coarse = self.coarse_of(p);
        let text = match self.format {
            Format::Json => serde_json::json!({
                "file": file.display().to_string(),
                "top_k": p.top_k,
                "coarse": coarse,
            })
            .to_string(),
            Format::Csv => {
                let mut fields = vec![
                    file.display().to_string(),
                    coarse.unwrap_or_default().to_string(),
                ];
                for t in &p.top_k {
                    fields.extend([
                        t.label.clone(),
                        t.index.to_string(),
                        t.probability.to_string(),
                    ]);
                }
                densenet::csv::record(&fields)
            }
            Format::Table => {
                let mut text = file.display().to_string();
                for (rank, t) in p.top_k.iter().enumerate() {
                    let label = match coarse {
                        Some(coarse) if rank == 0 => format!("{} ({coarse})", t.label),
                        _ => t.label.clone(),
                    };
                    text += &format!(
                        "\n  {:>2}. {:<40} {:>7.2}%",
                        rank + 1,
                        label,
                        100.0 * t.probability
                    );
                }
                text
            }
        };
        self.pending.push(Line::Out(text));
    }

    fn error(&mut self, e: &densenet::Error) {
        self.pending.push(Line::Err(format!("error: {e}")));
    }

    /// Writes what is pending.
    fn flush(&mut self) -> std::io::Result<()> {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for line in self.pending.drain(..) {
            match line {
                Line::Out(text) => writeln!(out, "{text}")?,
                Line::Err(text) => {
                    out.flush()?;
                    eprintln!("{text}");
                }
            }
        }
        out.flush()
    }
}

/// Runs shorter than this get no progress bar.
const QUIET_FOR: Duration = Duration::from_secs(1);

/// A progress bar on stderr, shown once a run has lasted [`QUIET_FOR`] and only when stderr is a
/// terminal, so that it never reaches a file or a pipe.
struct Progress {
    bar: ProgressBar,
    start: Instant,
    allowed: bool,
    shown: bool,
}

impl Progress {
    fn new(total: usize, quiet: bool) -> Self {
        Self {
            bar: images_bar(total, ProgressDrawTarget::hidden()),
            start: Instant::now(),
            allowed: !quiet && std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn advance(&mut self, done: usize) {
        if self.allowed && !self.shown && self.start.elapsed() >= QUIET_FOR {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
        self.bar.set_position(done as u64);
    }

    fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        self.bar.suspend(f)
    }

    /// Clears the bar; after a run long enough to show it, sums the run up.
    fn finish(&self, classified: usize, failed: usize, skipped: usize) {
        self.bar.finish_and_clear();
        if self.shown {
            let seconds = self.start.elapsed().as_secs_f64();
            eprintln!(
                "classified {classified} image(s) in {seconds:.1} s ({:.0} images/s); \
                 {failed} failed, {skipped} skipped",
                classified as f64 / seconds.max(1e-9)
            );
        }
    }
}
