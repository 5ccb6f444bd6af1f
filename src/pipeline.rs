//! Batched inference over many images: decoding runs on a thread pool, a few batches ahead of
//! the network, and results come back in input order.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::path::Path;

use crate::error::Result;
use crate::model::{Model, Prediction};
use crate::preprocess;

/// Images per forward pass unless told otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 64;

/// How many decoded batches may wait for the network: enough to keep it busy, few enough to
/// bound memory.
const LOOKAHEAD: usize = 2;

/// Splits inputs into batches, decodes each batch in parallel on its own threads while the
/// previous batch runs through the network, and hands every batch to the consumer in order.
///
/// ```no_run
/// use densenet::{pipeline::Pipeline, Model};
/// let model = Model::load("weights/model.safetensors")?;
/// let files = densenet::inputs::expand(["photos/"]).images;
/// Pipeline::new(32).classify_files(&model, &files, 3, |file, outcome| {
///     match outcome {
///         Ok(p) => println!("{}: {}", file.display(), p.top_k[0].label),
///         Err(e) => eprintln!("{e}"),
///     }
///     Ok(())
/// })?;
/// # Ok::<(), densenet::Error>(())
/// ```
#[derive(Debug)]
pub struct Pipeline {
    batch_size: usize,
    pool: Option<rayon::ThreadPool>,
}

impl Pipeline {
    /// A pipeline of batches of `batch_size` (at least 1), decoding on as many threads as the
    /// machine has cores.
    pub fn new(batch_size: usize) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_decode_threads(batch_size, threads)
    }

    /// As [`Pipeline::new`], decoding on `threads` threads (at least 1).
    pub fn with_decode_threads(batch_size: usize, threads: usize) -> Self {
        // A pool of its own keeps decoding from queueing behind the network's work on Rayon's
        // global pool; if its threads cannot be started, decoding falls back to that pool.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("densenet-decode-{i}"))
            .build()
            .ok();
        Self {
            batch_size: batch_size.max(1),
            pool,
        }
    }

    /// Images per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Decodes `sources` with `decode` (in parallel, up to two batches ahead) and calls
    /// `consume` with each batch of sources and their decoded values, in order. An error from
    /// `consume` stops the run and is returned; decoding errors are the consumer's to handle.
    pub fn run<S, D, F, C>(&self, sources: &[S], decode: F, mut consume: C) -> Result<()>
    where
        S: Sync,
        D: Send,
        F: Fn(&S) -> Result<D> + Sync,
        C: FnMut(&[S], Vec<Result<D>>) -> Result<()>,
    {
        let decode_chunk = |chunk: &[S]| -> Vec<Result<D>> {
            let work = || chunk.par_iter().map(&decode).collect();
            match &self.pool {
                Some(pool) => pool.install(work),
                None => work(),
            }
        };
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(LOOKAHEAD);
            scope.spawn(move || {
                for chunk in sources.chunks(self.batch_size) {
                    // A closed channel means the consumer stopped early: stop decoding too.
                    if tx.send(decode_chunk(chunk)).is_err() {
                        break;
                    }
                }
            });
            for (chunk, decoded) in sources.chunks(self.batch_size).zip(rx) {
                consume(chunk, decoded)?;
            }
            Ok(())
        })
    }

    /// Classifies image files, calling `each` with every file and its prediction (or the reason
    /// it could not be read) in input order.
    pub fn classify_files<P, E>(
        &self,
        model: &Model,
        files: &[P],
        k: usize,
        mut each: E,
    ) -> Result<()>
    where
        P: AsRef<Path> + Sync,
        E: FnMut(&Path, Result<Prediction>) -> Result<()>,
    {
        let preprocessing = model.preprocessing();
        self.run(
            files,
            |file| preprocessing.load(file.as_ref(), &Device::Cpu),
            |chunk, decoded| {
                let results = infer_decoded(decoded, |images| {
                    let images: Vec<Tensor> = images.iter().map(|&t| t.clone()).collect();
                    model.predict_top_k(&preprocess::batch(&images)?, k)
                })?;
                for (file, result) in chunk.iter().zip(results) {
                    each(file.as_ref(), result.map(|(_, prediction)| prediction))?;
                }
                Ok(())
            },
        )
    }
}

/// Runs `infer` once on the values that decoded, and pairs each with its output, keeping the
/// decoding errors in their places. `infer` must return one output per value it is given.
pub fn infer_decoded<D, O>(
    decoded: Vec<Result<D>>,
    infer: impl FnOnce(&[&D]) -> Result<Vec<O>>,
) -> Result<Vec<Result<(D, O)>>> {
    let good: Vec<&D> = decoded.iter().filter_map(|r| r.as_ref().ok()).collect();
    let outputs = if good.is_empty() {
        Vec::new()
    } else {
        let outputs = infer(&good)?;
        assert_eq!(outputs.len(), good.len(), "one output per decoded value");
        outputs
    };
    let mut outputs = outputs.into_iter();
    Ok(decoded
        .into_iter()
        .map(|r| r.map(|d| (d, outputs.next().expect("counted above"))))
        .collect())
}
