//! DenseNet image classifiers on [Candle](https://github.com/huggingface/candle).
//!
//! Loads the classic PyTorch CIFAR DenseNet from safetensors (metadata optional), runs it with
//! exact parity to PyTorch on the CPU, CUDA or Metal, and turns image files into predictions.
//!
//! ```no_run
//! use densenet::Model;
//! let model = Model::load("weights/densenet121_cifar100.safetensors")?;
//! let batch = model.preprocessing().load_batch(&["a.png", "b.jpg"], model.device())?;
//! for prediction in model.predict(&batch)? {
//!     println!("{}", prediction.top_k[0].label);
//! }
//! # Ok::<(), densenet::Error>(())
//! ```
//!
//! Cargo features, all on by default: `turbojpeg` (JPEGs decoded by libjpeg-turbo to Pillow's
//! exact pixels; needs CMake), `hub` (weights from the Hugging Face Hub), `serve` (the HTTP
//! server, `densenet::serve`) and `cli` (the `classify` and `densenet` binaries). With
//! `default-features = false` the library builds without a C toolchain; JPEGs are then decoded
//! by the `image` crate, not bit-exact with Pillow (see [`preprocess::load_rgb`]).

#![warn(missing_docs)]
// Each unsafe operation in its own block with its reason (`// SAFETY:`), even in unsafe fns.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod colormap;
pub mod config;
pub mod csv;
pub mod dataset;
pub mod device;
pub mod error;
pub mod eval;
pub mod explain;
pub mod fast;
pub mod inputs;
pub mod labels;
pub mod model;
pub mod network;
pub mod pipeline;
pub mod preprocess;
#[cfg(feature = "serve")]
pub mod serve;
pub mod weights;

pub use config::{Config, Interpolation, ModelInfo, Preprocessing, Resize, Stem};
pub use device::{Compute, DeviceSpec};
pub use error::{Error, Result};
pub use model::{ComputePath, Model, Prediction, TopK};

/// The README's code blocks, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
