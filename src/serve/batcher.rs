//! The bounded queue of images and the thread that runs them through the model in batches.
//!
//! Requests put their images in the queue (all or none) and wait on one reply per image. The
//! batcher thread takes up to `max_batch` images, waiting at most `max_delay` after the oldest
//! arrived for more to come, and runs them in one forward pass: inference never runs on the async
//! runtime's threads. After a pass of a single image with nothing queued behind it (one client
//! at a time), the next image runs at once: waiting only helps when other requests are coming,
//! and a lone client would pay the whole delay on every request. An image whose request has gone
//! (client away, deadline passed) is dropped before its pass.
//!
//! Before it takes any image the thread warms the model up with a pass of `max_batch` images and
//! one of a single image, the largest and the commonest batch, so that the first requests do not
//! pay for the first passes (allocations, caches); the server is ready only once they are done.

use candle_core::{DType, Device, Tensor};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

use super::metrics::ModelMetrics;
use crate::model::{Model, Prediction};
use crate::preprocess;

/// One image's answer: its prediction with every class ranked, or why its batch failed.
pub(crate) type Answer = Result<Prediction, String>;

/// How the warm-up went: the time it took, or why it failed; `None` while it runs.
pub(crate) type Warmup = Option<Result<Duration, String>>;

/// An image waiting for its forward pass.
struct Job {
    image: Tensor,
    arrived: Instant,
    reply: oneshot::Sender<Answer>,
}

struct State {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// The queue shared by the request handlers and the batcher thread.
struct Queue {
    state: Mutex<State>,
    changed: Condvar,
    capacity: usize,
}

/// The queue had no room for a request's images.
#[derive(Debug)]
pub(crate) struct Full;

/// The handlers' side of the batcher.
#[derive(Clone)]
pub(crate) struct Batcher {
    queue: Arc<Queue>,
    metrics: ModelMetrics,
}

/// How the batcher gathers images.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batching {
    pub max_batch: usize,
    pub max_delay: Duration,
    pub capacity: usize,
}

impl Batcher {
    /// Starts the batcher thread over `model`.
    pub fn start(
        model: Arc<Model>,
        batching: Batching,
        metrics: ModelMetrics,
        warmup: watch::Sender<Warmup>,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let queue = Arc::new(Queue {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                closed: false,
            }),
            changed: Condvar::new(),
            capacity: batching.capacity,
        });
        let worker = Worker {
            queue: queue.clone(),
            metrics: metrics.clone(),
            model,
            batching,
        };
        let handle = std::thread::Builder::new()
            .name("densenet-batcher".into())
            .spawn(move || {
                let outcome = worker.warm_up();
                warmup.send_replace(Some(outcome));
                worker.run();
            })?;
        Ok((Self { queue, metrics }, handle))
    }

    /// The most images the queue holds.
    pub fn capacity(&self) -> usize {
        self.queue.capacity
    }

    /// Queues `images` ([3, H, W] tensors) together, or none of them if they do not all fit;
    /// answers come back on the receivers, in the same order.
    pub fn submit(&self, images: Vec<Tensor>) -> Result<Vec<oneshot::Receiver<Answer>>, Full> {
        let mut state = self.queue.state.lock().expect("queue lock");
        if state.closed || state.jobs.len() + images.len() > self.queue.capacity {
            return Err(Full);
        }
        let arrived = Instant::now();
        let receivers = images
            .into_iter()
            .map(|image| {
                let (reply, receiver) = oneshot::channel();
                state.jobs.push_back(Job {
                    image,
                    arrived,
                    reply,
                });
                receiver
            })
            .collect();
        self.metrics.queue_depth.set(state.jobs.len() as i64);
        drop(state);
        self.queue.changed.notify_one();
        Ok(receivers)
    }

    /// Stops the thread once the queue is empty (and its warm-up done); a closed queue takes no
    /// more images.
    pub fn close(&self) {
        self.queue.state.lock().expect("queue lock").closed = true;
        self.queue.changed.notify_one();
    }
}

/// The batcher thread.
struct Worker {
    queue: Arc<Queue>,
    metrics: ModelMetrics,
    model: Arc<Model>,
    batching: Batching,
}

impl Worker {
    /// A pass of `max_batch` blank images, then one of a single image, as the batches run; not
    /// counted as batches in the metrics.
    fn warm_up(&self) -> Result<Duration, String> {
        let start = Instant::now();
        let [h, w] = self.model.preprocessing().input_size;
        let classes = self.model.labels().len();
        for n in [self.batching.max_batch, 1] {
            let images = vec![
                Tensor::zeros((3, h, w), DType::F32, &Device::Cpu)
                    .map_err(|e| e.to_string())?;
                n
            ];
            preprocess::batch(&images)
                .and_then(|batch| self.model.predict_top_k(&batch, classes))
                .map_err(|e| format!("warm-up pass of {n} images: {e}"))?;
        }
        let took = start.elapsed();
        self.metrics.warmup_seconds.set(took.as_secs_f64());
        Ok(took)
    }

    fn run(self) {
        // Until a pass shows otherwise, expect company: the first image waits for others.
        let mut alone = false;
        while let Some(jobs) = self.next_batch(alone) {
            alone = self.infer(jobs);
        }
    }

    /// Waits for a batch: `max_batch` images, or fewer once the oldest has waited `max_delay`
    /// (at once if the last pass was `alone`); `None` once the queue is closed and empty.
    fn next_batch(&self, alone: bool) -> Option<Vec<Job>> {
        let mut state = self.queue.state.lock().expect("queue lock");
        loop {
            self.drop_abandoned(&mut state);
            let Some(oldest) = state.jobs.front() else {
                if state.closed {
                    return None;
                }
                state = self.queue.changed.wait(state).expect("queue lock");
                continue;
            };
            let wait = (oldest.arrived + self.batching.max_delay)
                .saturating_duration_since(Instant::now());
            if state.jobs.len() >= self.batching.max_batch
                || wait.is_zero()
                || alone
                || state.closed
            {
                let n = state.jobs.len().min(self.batching.max_batch);
                let jobs: Vec<Job> = state.jobs.drain(..n).collect();
                self.metrics.queue_depth.set(state.jobs.len() as i64);
                return Some(jobs);
            }
            state = self
                .queue
                .changed
                .wait_timeout(state, wait)
                .expect("queue lock")
                .0;
        }
    }

    /// Removes the images nobody waits for any more.
    fn drop_abandoned(&self, state: &mut State) {
        let before = state.jobs.len();
        state.jobs.retain(|job| !job.reply.is_closed());
        let dropped = before - state.jobs.len();
        if dropped > 0 {
            self.metrics.dropped.inc_by(dropped as u64);
            self.metrics.queue_depth.set(state.jobs.len() as i64);
        }
    }

    /// One forward pass; every image of the batch gets its answer, or the batch's error. Returns
    /// whether the pass was alone: one image, and nothing queued by the time it was answered
    /// (looked at before the answer goes, so that a lone client's next request cannot be there).
    fn infer(&self, jobs: Vec<Job>) -> bool {
        let start = Instant::now();
        let images: Vec<Tensor> = jobs.iter().map(|job| job.image.clone()).collect();
        let classes = self.model.labels().len();
        let outcome =
            preprocess::batch(&images).and_then(|batch| self.model.predict_top_k(&batch, classes));
        self.metrics.batch_size.observe(jobs.len() as f64);
        self.metrics
            .batch_seconds
            .observe(start.elapsed().as_secs_f64());
        let alone = jobs.len() == 1 && self.queue.state.lock().expect("queue lock").jobs.is_empty();
        match outcome {
            Ok(predictions) => {
                self.metrics.images.inc_by(jobs.len() as u64);
                for (job, prediction) in jobs.into_iter().zip(predictions) {
                    // A request that went away meanwhile no longer listens: nothing to do.
                    let _ = job.reply.send(Ok(prediction));
                }
            }
            Err(e) => {
                let message = format!("inference failed: {e}");
                for job in jobs {
                    let _ = job.reply.send(Err(message.clone()));
                }
            }
        }
        alone
    }
}
