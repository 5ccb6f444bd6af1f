//! The library's errors as the package's exceptions (`densenet/_errors.py`), with the library's
//! messages.

use densenet::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// The exception class of the package that stands for `error`.
fn class_name(error: &Error) -> &'static str {
    match error {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            "NotFoundError"
        }
        Error::Io { .. } => "FileError",
        Error::InvalidWeights { .. }
        | Error::MissingTensor { .. }
        | Error::ShapeMismatch { .. }
        | Error::UnsupportedDtype { .. }
        | Error::UnexpectedTensors { .. }
        | Error::UnknownArchitecture { .. }
        | Error::InvalidMetadata { .. }
        | Error::ChangedSinceLoad { .. } => "WeightsError",
        Error::Image { .. } => "ImageError",
        Error::InvalidInput(_) => "InputError",
        Error::InvalidConfig(_) | Error::Device { .. } | Error::Isa { .. } => "ConfigError",
        Error::Hub { .. } | Error::HubNotBuilt { .. } => "HubError",
        _ => "Error",
    }
}

/// `error` raised as its exception of `densenet`.
pub fn to_py(py: Python<'_>, error: Error) -> PyErr {
    let message = error.to_string();
    let class = py
        .import("densenet._errors")
        .and_then(|m| m.getattr(class_name(&error)))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(class) => PyErr::from_type(class, (message,)),
        // The package is importable wherever this module is; were it not, the message survives.
        Err(_) => PyRuntimeError::new_err(message),
    }
}

/// Maps a library result to a Python one.
pub trait OrRaise<T> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> OrRaise<T> for densenet::Result<T> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}
