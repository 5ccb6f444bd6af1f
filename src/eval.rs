//! Accuracy on a labelled dataset: top-1, top-5, per class, per superclass, throughput, and the
//! confusion matrix (as CSV or as a heat map).

use candle_core::{Device, Tensor};
use image::RgbImage;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::csv;
use crate::dataset::{CifarRecord, ImageFolder};
use crate::error::{Error, Result};
use crate::labels;
use crate::model::{Model, Prediction};
use crate::pipeline::{infer_decoded, Pipeline};
use crate::preprocess;
use crate::weights::write_atomically;

/// Counts gathered while a model answers for labelled images.
#[derive(Clone, Debug)]
pub struct Evaluation {
    labels: Vec<String>,
    /// `confusion[truth * n + predicted]`.
    confusion: Vec<u64>,
    top5: u64,
    coarse: Option<u64>,
    failed: u64,
    elapsed: Duration,
}

/// How one class fared.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ClassAccuracy {
    /// The class index.
    pub index: usize,
    /// The class name.
    pub label: String,
    /// Images of this class.
    pub images: u64,
    /// Of which predicted as this class.
    pub correct: u64,
    /// `correct / images`, or `None` for a class without images.
    pub accuracy: Option<f64>,
}

/// The figures of an [`Evaluation`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Report {
    /// Images the model answered for.
    pub images: u64,
    /// Images that could not be read (not counted in the accuracies).
    pub failed: u64,
    /// Fraction whose most probable class is the true one.
    pub top1: f64,
    /// Fraction whose true class is among the five most probable.
    pub top5: f64,
    /// Fraction whose most probable class is in the true superclass (CIFAR-100 labels only).
    pub coarse: Option<f64>,
    /// Wall-clock time from the first image read to the last answer, in seconds.
    pub seconds: f64,
    /// Images answered per second of that time.
    pub images_per_second: f64,
    /// Per class, in class order.
    pub per_class: Vec<ClassAccuracy>,
}

fn ratio(hits: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        hits as f64 / of as f64
    }
}

impl Evaluation {
    /// An empty evaluation over these classes; superclass accuracy is counted when they are the
    /// CIFAR-100 fine labels.
    pub fn new(class_labels: &[String]) -> Self {
        let n = class_labels.len();
        Self {
            labels: class_labels.to_vec(),
            confusion: vec![0; n * n],
            top5: 0,
            coarse: labels::is_cifar100(class_labels).then_some(0),
            failed: 0,
            elapsed: Duration::ZERO,
        }
    }

    /// Counts one answer for an image of class `truth`.
    ///
    /// The rank of the true class is taken from all the probabilities (ties go to the lower
    /// index, as in [`Prediction::top_k`]), so top-5 does not depend on how many classes the
    /// prediction lists.
    pub fn add(&mut self, truth: usize, prediction: &Prediction) -> Result<()> {
        let n = self.labels.len();
        let p = &prediction.probabilities;
        if truth >= n || p.len() != n {
            return Err(Error::InvalidInput(format!(
                "an evaluation over {n} classes got class {truth} with {} probabilities",
                p.len()
            )));
        }
        let rank_of = |c: usize| {
            p.iter()
                .enumerate()
                .filter(|&(i, &q)| q > p[c] || (q == p[c] && i < c))
                .count()
        };
        let predicted = (1..n).fold(0, |best, c| if p[c] > p[best] { c } else { best });
        self.confusion[truth * n + predicted] += 1;
        if rank_of(truth) < 5 {
            self.top5 += 1;
        }
        if let Some(coarse) = &mut self.coarse {
            if labels::cifar100_coarse_of(truth) == labels::cifar100_coarse_of(predicted) {
                *coarse += 1;
            }
        }
        Ok(())
    }

    /// Counts an image that could not be read.
    pub fn add_failure(&mut self) {
        self.failed += 1;
    }

    /// Sets the time the evaluation took (for images/s).
    pub fn set_elapsed(&mut self, elapsed: Duration) {
        self.elapsed = elapsed;
    }

    /// The class names.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The confusion matrix: `matrix[truth][predicted]` images.
    pub fn confusion(&self) -> Vec<Vec<u64>> {
        self.confusion
            .chunks(self.labels.len().max(1))
            .map(<[u64]>::to_vec)
            .collect()
    }

    /// The figures.
    pub fn report(&self) -> Report {
        let n = self.labels.len();
        let images: u64 = self.confusion.iter().sum();
        let per_class: Vec<ClassAccuracy> = (0..n)
            .map(|c| {
                let row = &self.confusion[c * n..(c + 1) * n];
                let total: u64 = row.iter().sum();
                ClassAccuracy {
                    index: c,
                    label: self.labels[c].clone(),
                    images: total,
                    correct: row[c],
                    accuracy: (total > 0).then(|| ratio(row[c], total)),
                }
            })
            .collect();
        let correct: u64 = per_class.iter().map(|c| c.correct).sum();
        let seconds = self.elapsed.as_secs_f64();
        Report {
            images,
            failed: self.failed,
            top1: ratio(correct, images),
            top5: ratio(self.top5, images),
            coarse: self.coarse.map(|c| ratio(c, images)),
            seconds,
            images_per_second: if seconds > 0.0 {
                images as f64 / seconds
            } else {
                0.0
            },
            per_class,
        }
    }

    /// Writes the confusion matrix as CSV: a header of predicted labels, then one row per true
    /// class, its label first. Written atomically; an existing file is replaced only with
    /// `overwrite`.
    pub fn write_confusion_csv(&self, path: &Path, overwrite: bool) -> Result<()> {
        let mut header = vec!["true \\ predicted".to_string()];
        header.extend(self.labels.iter().cloned());
        let mut text = csv::record(&header) + "\n";
        for (label, row) in self.labels.iter().zip(self.confusion()) {
            let mut record = vec![label.clone()];
            record.extend(row.iter().map(u64::to_string));
            text += &csv::record(&record);
            text.push('\n');
        }
        write_atomically(path, overwrite, |tmp| {
            std::fs::write(tmp, &text).map_err(|e| Error::io(path, e))
        })
    }

    /// The confusion matrix as a heat map: one square per cell (true class down, predicted class
    /// across), coloured by the fraction of the true class's images predicted as that class on a
    /// square-root scale (so that rare confusions show), a grey rule every ten classes, and a
    /// colour bar on the right. 100 classes give an 800-pixel square.
    pub fn confusion_heatmap(&self) -> RgbImage {
        let n = self.labels.len().max(1) as u32;
        let cell = (800 / n).clamp(2, 24);
        let rules = (n - 1) / 10;
        let side = n * cell + rules;
        let (margin, gap, bar) = (8, 12, 16);
        let width = margin + side + gap + bar + margin;
        let height = margin + side + margin;
        let mut picture = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
        let at = |i: u32| margin + i * cell + i / 10;
        let matrix = self.confusion();
        for (t, row) in matrix.iter().enumerate() {
            let total: u64 = row.iter().sum();
            for (p, &count) in row.iter().enumerate() {
                let v = (ratio(count, total) as f32).sqrt();
                let colour = image::Rgb(crate::colormap::ink(v));
                for y in 0..cell {
                    for x in 0..cell {
                        picture.put_pixel(at(p as u32) + x, at(t as u32) + y, colour);
                    }
                }
            }
        }
        let grey = image::Rgb([150, 150, 150]);
        for r in 1..=rules {
            let line = at(10 * r) - 1;
            for k in margin..margin + side {
                picture.put_pixel(line, k, grey);
                picture.put_pixel(k, line, grey);
            }
        }
        let black = image::Rgb([0, 0, 0]);
        let x0 = margin + side + gap;
        for y in 0..side {
            let v = 1.0 - y as f32 / (side - 1).max(1) as f32;
            for x in 0..bar {
                let edge = x == 0 || x + 1 == bar || y == 0 || y + 1 == side;
                let colour = if edge {
                    black
                } else {
                    image::Rgb(crate::colormap::ink(v))
                };
                picture.put_pixel(x0 + x, margin + y, colour);
            }
        }
        picture
    }

    /// Writes [`Evaluation::confusion_heatmap`] as a PNG, atomically; an existing file is
    /// replaced only with `overwrite`.
    pub fn write_confusion_png(&self, path: &Path, overwrite: bool) -> Result<()> {
        write_png(&self.confusion_heatmap(), path, overwrite)
    }
}

/// Writes a picture as a PNG through a temporary file; an existing file is replaced only with
/// `overwrite`.
pub(crate) fn write_png(picture: &RgbImage, path: &Path, overwrite: bool) -> Result<()> {
    write_atomically(path, overwrite, |tmp| {
        picture
            .save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| Error::io(path, std::io::Error::other(e)))
    })
}

/// Runs `model` over records in the CIFAR-100 binary layout and counts its answers: CIFAR-100
/// itself, or any set of 32×32 images written in that layout whose fine labels are the model's
/// class indices. `progress` is called after each batch with the number of images it held.
pub fn evaluate_cifar(
    model: &Model,
    records: &[CifarRecord],
    pipeline: &Pipeline,
    mut progress: impl FnMut(usize),
) -> Result<Evaluation> {
    let classes = model.labels().len();
    if let Some((i, record)) = records
        .iter()
        .enumerate()
        .find(|(_, r)| usize::from(r.fine) >= classes)
    {
        return Err(Error::InvalidConfig(format!(
            "record {i}: fine label {} is beyond this model's {classes} classes",
            record.fine
        )));
    }
    let mut evaluation = Evaluation::new(model.labels());
    let start = Instant::now();
    let preprocessing = model.preprocessing();
    pipeline.run(
        records,
        |r| preprocessing.to_tensor(&r.image, &Device::Cpu),
        |chunk, decoded| {
            let predictions = predict_decoded(model, decoded)?;
            for (record, prediction) in chunk.iter().zip(predictions) {
                evaluation.add(usize::from(record.fine), &prediction?)?;
            }
            progress(chunk.len());
            Ok(())
        },
    )?;
    evaluation.set_elapsed(start.elapsed());
    Ok(evaluation)
}

/// Runs `model` over an image folder and counts its answers. Images that cannot be read are
/// counted as failures and passed to `failed`; `progress` is called after each batch with the
/// number of images it held.
pub fn evaluate_folder(
    model: &Model,
    folder: &ImageFolder,
    pipeline: &Pipeline,
    mut progress: impl FnMut(usize),
    mut failed: impl FnMut(Error),
) -> Result<Evaluation> {
    let mut evaluation = Evaluation::new(model.labels());
    let start = Instant::now();
    let preprocessing = model.preprocessing();
    pipeline.run(
        &folder.samples,
        |(path, _)| preprocessing.load(path, &Device::Cpu),
        |chunk, decoded| {
            let predictions = predict_decoded(model, decoded)?;
            for ((_, truth), prediction) in chunk.iter().zip(predictions) {
                match prediction {
                    Ok(prediction) => evaluation.add(*truth, &prediction)?,
                    Err(e) => {
                        evaluation.add_failure();
                        failed(e);
                    }
                }
            }
            progress(chunk.len());
            Ok(())
        },
    )?;
    evaluation.set_elapsed(start.elapsed());
    Ok(evaluation)
}

fn predict_decoded(model: &Model, decoded: Vec<Result<Tensor>>) -> Result<Vec<Result<Prediction>>> {
    let results = infer_decoded(decoded, |images| {
        let images: Vec<Tensor> = images.iter().map(|&t| t.clone()).collect();
        model.predict_top_k(&preprocess::batch(&images)?, 5)
    })?;
    Ok(results.into_iter().map(|r| r.map(|(_, p)| p)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prediction certain of `class`, out of `n`.
    fn certain(class: usize, n: usize) -> Prediction {
        let mut probabilities = vec![0.0; n];
        probabilities[class] = 1.0;
        Prediction {
            logits: probabilities.clone(),
            probabilities,
            top_k: Vec::new(),
        }
    }

    #[test]
    fn confusion_csv_quotes_labels_with_commas_quotes_and_line_breaks() {
        let labels = ["plain", "a, b", "say \"hi\"", "two\nlines"].map(String::from);
        let mut evaluation = Evaluation::new(&labels);
        for (truth, answer) in [(0, 0), (1, 2), (3, 3), (3, 1)] {
            evaluation.add(truth, &certain(answer, 4)).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confusion.csv");
        evaluation.write_confusion_csv(&path, false).unwrap();
        let expected = "true \\ predicted,plain,\"a, b\",\"say \"\"hi\"\"\",\"two\nlines\"\n\
                        plain,1,0,0,0\n\
                        \"a, b\",0,0,1,0\n\
                        \"say \"\"hi\"\"\",0,0,0,0\n\
                        \"two\nlines\",0,1,0,1\n";
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    }
}
