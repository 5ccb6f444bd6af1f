//! `densenet eval`: accuracy on the CIFAR-100 binary files or an image folder.

use anyhow::bail;
use densenet::dataset;
use densenet::eval::{self, Report};
use densenet::pipeline::{Pipeline, DEFAULT_BATCH_SIZE};
use indicatif::{ProgressBar, ProgressDrawTarget};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::common::{images_bar, positive, ModelArgs};

/// Arguments of `densenet eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A CIFAR-100 binary file (test.bin or train.bin), or a folder with one sub-folder of images
    /// per class, named by the class's label.
    #[arg(value_name = "DATASET")]
    dataset: PathBuf,

    #[command(flatten)]
    model: ModelArgs,

    /// Images per forward pass.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_parser = positive)]
    batch_size: usize,

    /// Evaluate only the first N images (of a CIFAR file, or of the folder in path order).
    #[arg(long, value_name = "N", value_parser = positive)]
    limit: Option<usize>,

    /// Write the confusion matrix (rows: true class, columns: predicted) as CSV.
    #[arg(long, value_name = "FILE.csv")]
    confusion: Option<PathBuf>,

    /// Draw the confusion matrix as a PNG heat map.
    #[arg(long, value_name = "FILE.png")]
    confusion_png: Option<PathBuf>,

    /// Overwrite the --confusion and --confusion-png files if they exist.
    #[arg(long)]
    force: bool,

    /// Print the figures as one JSON object instead of the text report.
    #[arg(long)]
    json: bool,

    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

/// Runs `densenet eval`: exit status 0, or 1 when some images of a folder could not be read.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Refuse to clobber before spending minutes on the dataset.
    for path in [&args.confusion, &args.confusion_png].into_iter().flatten() {
        if path.exists() && !args.force {
            bail!(
                "{}: already exists (use --force to overwrite)",
                path.display()
            );
        }
    }
    let (model, _) = args.model.load()?;
    let pipeline = Pipeline::new(args.batch_size);
    let limit = |n: usize| args.limit.map_or(n, |l| l.min(n));
    let evaluation = if args.dataset.is_dir() {
        let mut folder = dataset::image_folder(&args.dataset, model.labels())?;
        folder.samples.truncate(limit(folder.samples.len()));
        if folder.samples.is_empty() {
            bail!(
                "{}: the class folders hold no images",
                args.dataset.display()
            );
        }
        if !folder.skipped.is_empty() && !args.quiet {
            eprintln!(
                "note: skipped {} file(s) that are not images (by their extension)",
                folder.skipped.len()
            );
        }
        let bar = progress_bar(folder.samples.len(), args.quiet);
        let evaluation = eval::evaluate_folder(
            &model,
            &folder,
            &pipeline,
            |n| bar.inc(n as u64),
            |e| bar.suspend(|| eprintln!("error: {e}")),
        )?;
        bar.finish_and_clear();
        evaluation
    } else {
        let mut records = dataset::read_cifar100_binary(&args.dataset)?;
        records.truncate(limit(records.len()));
        let bar = progress_bar(records.len(), args.quiet);
        let evaluation = eval::evaluate_cifar(&model, &records, &pipeline, |n| bar.inc(n as u64))?;
        bar.finish_and_clear();
        evaluation
    };
    if let Some(path) = &args.confusion {
        evaluation.write_confusion_csv(path, args.force)?;
    }
    if let Some(path) = &args.confusion_png {
        evaluation.write_confusion_png(path, args.force)?;
    }
    let report = evaluation.report();
    // What ran, which is a more exact precision where the CPU lacks the one asked for.
    let precision = model.compute().to_string();
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        json["precision"] = precision.into();
        print(&format!("{json}\n"))?;
    } else {
        print(&report_text(&report, &precision))?;
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn progress_bar(total: usize, quiet: bool) -> ProgressBar {
    let target = if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    images_bar(total, target)
}

fn percent(v: f64) -> String {
    format!("{:.2}%", 100.0 * v)
}

fn report_text(report: &Report, precision: &str) -> String {
    let mut text = format!("precision   {precision}\nimages      {}\n", report.images);
    if report.failed > 0 {
        text += &format!("unreadable  {}\n", report.failed);
    }
    text += &format!("top-1       {}\n", percent(report.top1));
    text += &format!("top-5       {}\n", percent(report.top5));
    if let Some(coarse) = report.coarse {
        text += &format!("superclass  {}\n", percent(coarse));
    }
    text += &format!(
        "speed       {:.1} images/s ({:.2} s)\n\n",
        report.images_per_second, report.seconds
    );
    text += &format!(
        "{:>5}  {:<24} {:>7} {:>9}\n",
        "class", "label", "images", "accuracy"
    );
    for class in &report.per_class {
        let accuracy = class.accuracy.map_or_else(|| "-".to_string(), percent);
        text += &format!(
            "{:>5}  {:<24} {:>7} {:>9}\n",
            class.index, class.label, class.images, accuracy
        );
    }
    text
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
