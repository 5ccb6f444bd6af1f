//! The library's typed error.

use std::path::PathBuf;

/// Everything that can go wrong while loading, saving or running a model.
///
/// Variants that concern a file carry its path, and those that concern a tensor carry its name, so
/// that the message alone says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// A weights file is not a readable checkpoint (bad header, bad offsets, unknown format...).
    #[error("{}: not a valid {format} file: {reason}", path.display())]
    InvalidWeights {
        /// The weights file.
        path: PathBuf,
        /// The format it was read as.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// A tensor the network needs is absent from the weights.
    #[error("{}: tensor `{name}` is missing", path.display())]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The missing tensor's name.
        name: String,
    },

    /// A tensor has another shape than the network needs.
    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected:?}", path.display())]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the configuration calls for.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// A tensor is stored with a dtype that cannot hold weights (an integer type, say).
    #[error("{}: tensor `{name}` has dtype {dtype}, expected a float type (F16, BF16, F32 or F64)", path.display())]
    UnsupportedDtype {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The dtype found, as the file names it.
        dtype: String,
    },

    /// The file holds tensors the network has no place for.
    #[error("{}: unexpected tensor(s) {}: the file does not match the architecture", path.display(), names.join(", "))]
    UnexpectedTensors {
        /// The weights file.
        path: PathBuf,
        /// The first few unexpected names.
        names: Vec<String>,
    },

    /// The architecture could not be recognised from the tensor names and shapes.
    #[error("{}: {reason}", path.display())]
    UnknownArchitecture {
        /// The weights file.
        path: PathBuf,
        /// What was expected and what was found.
        reason: String,
    },

    /// A `__metadata__` entry written by this crate could not be parsed.
    #[error("{}: metadata entry `{key}` is invalid: {reason}", path.display())]
    InvalidMetadata {
        /// The weights file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// A file exists where a new one would be written.
    #[error("{}: already exists (use --force to overwrite)", path.display())]
    AlreadyExists {
        /// The file that exists.
        path: PathBuf,
    },

    /// An image could not be decoded.
    #[error("{}: {reason}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// Why it could not be used.
        reason: String,
    },

    /// A glob pattern given as an input is malformed or matches nothing.
    #[error("pattern `{pattern}`: {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong.
        reason: String,
    },

    /// A dataset file or folder is malformed (a truncated record, a label out of range, a class
    /// folder the model does not know...).
    #[error("{}: {reason}", path.display())]
    Dataset {
        /// The dataset file or folder.
        path: PathBuf,
        /// What is wrong, naming the record or folder.
        reason: String,
    },

    /// A tensor given to the model has the wrong rank, channels or size.
    #[error("input tensor: {0}")]
    InvalidInput(String),

    /// A configuration that describes no valid network.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// A device was asked for that cannot be used.
    #[error("device `{device}`: {reason}")]
    Device {
        /// The device as asked for (`cuda:1`, say).
        device: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// An instruction set for the CPU fast path that is not known (from `DENSENET_CPU_ISA`, or
    /// parsed as a [`crate::fast::Isa`]).
    #[error("instruction set `{value}`: {reason}")]
    Isa {
        /// The value as given.
        value: String,
        /// What was expected.
        reason: String,
    },

    /// Weights could not be had from the Hugging Face Hub.
    #[error("hf:{repo}: {reason}")]
    Hub {
        /// The repository (`OWNER/REPO`), or the reference as given if it does not parse.
        repo: String,
        /// What went wrong and how to get the file by hand.
        reason: String,
    },

    /// Weights from the Hugging Face Hub were asked for (`hf:…`, or no weights where the default
    /// model is on the Hub) in a build without the crate's `hub` feature.
    #[error(
        "{reference}: weights from the Hugging Face Hub need densenet's `hub` feature, which this \
         build was compiled without; download the file and give its path instead"
    )]
    HubNotBuilt {
        /// The reference, `hf:OWNER/REPO[@REVISION][:FILE]`.
        reference: String,
    },

    /// A weights file was replaced or modified after the model was loaded from it, when the
    /// model went back to it for its plain network.
    #[error("{}: changed since the model was loaded from it; load the model again", path.display())]
    ChangedSinceLoad {
        /// The weights file.
        path: PathBuf,
    },

    /// A shard of the inputs (`K/N`) that does not parse or does not exist.
    #[error("shard `{value}`: {reason}")]
    Shard {
        /// The value as given.
        value: String,
        /// What was expected.
        reason: String,
    },

    /// The HTTP server could not start or stopped on an error (an address in use, say).
    #[error("server: {0}")]
    Server(String),

    /// The server's models could not be found, loaded or started.
    #[cfg(feature = "serve")]
    #[error(transparent)]
    Repository(#[from] crate::serve::RepositoryError),

    /// An error raised by Candle while computing.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
