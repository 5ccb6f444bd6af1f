//! `densenet._densenet`: the engine as Python sees it. The public API, its argument checks and
//! its docstrings are in the Python package (`densenet/`); this module holds the model and
//! turns the library's errors into the package's exceptions.

mod errors;
mod model;

use pyo3::prelude::*;

#[pymodule]
fn _densenet(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<model::Engine>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
