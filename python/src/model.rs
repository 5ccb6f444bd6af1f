//! [`Engine`]: one loaded model, shared by every Python thread, computing with the GIL released.

use candle_core::{Device, Tensor};
use densenet::pipeline::Pipeline;
use densenet::{labels, Model, Prediction};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::prelude::*;
use std::path::PathBuf;

use crate::errors::OrRaise;

/// One image's most probable classes, `(index, label, probability)`, and the CIFAR-100 coarse
/// class of the first where the labels are CIFAR-100's: what `classify --json` prints.
type Classified = (Vec<(usize, String, f32)>, Option<&'static str>);

/// A loaded model. Immutable once loaded (`frozen`), so that threads share it without a lock.
#[pyclass(frozen, module = "densenet._densenet")]
pub struct Engine {
    model: Model,
}

#[pymethods]
impl Engine {
    /// Finds the weights (a file, or `hf:OWNER/REPO[@REV][:FILE]`) and loads them on the CPU in
    /// `precision` (f32, bf16 or int8), as `classify --weights … --precision …` does.
    #[staticmethod]
    fn load(py: Python<'_>, weights: &str, precision: &str) -> PyResult<Self> {
        let compute = densenet::device::parse_precision(precision).or_raise(py)?;
        let loaded = py.detach(|| {
            let path = densenet::weights::resolve(Some(weights))?;
            Model::load_in(path, &Device::Cpu, compute)
        });
        Ok(Self {
            model: loaded.or_raise(py)?,
        })
    }

    /// Logits, or their softmax with `probabilities`, [N, classes] for a batch [N, 3, H, W].
    fn predict<'py>(
        &self,
        py: Python<'py>,
        batch: PyReadonlyArray4<'py, f32>,
        probabilities: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        // The one copy: the engine's tensor owns its values, and the GIL is released below.
        let input = Tensor::from_slice(batch.as_slice()?, batch.shape(), &Device::Cpu)
            .map_err(densenet::Error::from)
            .or_raise(py)?;
        let classes = self.model.labels().len();
        let predictions = py
            .detach(|| self.model.predict_top_k(&input, 0))
            .or_raise(py)?;
        let values: Vec<f32> = predictions
            .into_iter()
            .flat_map(|p| match probabilities {
                true => p.probabilities,
                false => p.logits,
            })
            .collect();
        let rows = values.len() / classes;
        let array = Array2::from_shape_vec((rows, classes), values)
            .expect("one row of `classes` values per image");
        Ok(array.into_pyarray(py))
    }

    /// Classifies image files with the CLI's preprocessing and batching; the first file that
    /// cannot be classified (in input order) raises.
    fn classify(
        &self,
        py: Python<'_>,
        paths: Vec<PathBuf>,
        top_k: usize,
    ) -> PyResult<Vec<Classified>> {
        let outcomes = py.detach(|| {
            let mut outcomes = Vec::with_capacity(paths.len());
            Pipeline::new(densenet::pipeline::DEFAULT_BATCH_SIZE).classify_files(
                &self.model,
                &paths,
                top_k,
                |_, outcome| {
                    outcomes.push(outcome);
                    Ok(())
                },
            )?;
            Ok(outcomes)
        });
        let coarse = labels::is_cifar100(self.model.labels());
        outcomes
            .and_then(|o| o.into_iter().collect::<densenet::Result<Vec<Prediction>>>())
            .map(|predictions| {
                predictions
                    .into_iter()
                    .map(|p| classified(p, coarse))
                    .collect()
            })
            .or_raise(py)
    }

    /// Class names, in output order.
    #[getter]
    fn labels(&self) -> Vec<String> {
        self.model.labels().to_vec()
    }

    /// The architecture, as JSON (the safetensors metadata's form).
    #[getter]
    fn config_json(&self) -> String {
        serde_json::to_string(self.model.config()).expect("a config serialises")
    }

    /// How images are prepared for the model, as JSON.
    #[getter]
    fn preprocessing_json(&self) -> String {
        serde_json::to_string(self.model.preprocessing()).expect("preprocessing serialises")
    }

    /// What computes: f32, bf16 or int8.
    #[getter]
    fn precision(&self) -> String {
        self.model.compute().to_string()
    }

    /// The instruction set of the CPU's fast path.
    #[getter]
    fn isa(&self) -> Option<&'static str> {
        self.model.isa().map(|isa| isa.name())
    }

    /// What runs other than as asked, and why.
    #[getter]
    fn fallbacks(&self) -> Vec<String> {
        self.model
            .fallbacks()
            .iter()
            .map(ToString::to_string)
            .collect()
    }
}

fn classified(prediction: Prediction, coarse: bool) -> Classified {
    let first = prediction.top_k.first().map(|t| t.index);
    let top_k = prediction
        .top_k
        .into_iter()
        .map(|t| (t.index, t.label, t.probability))
        .collect();
    let coarse = first
        .filter(|_| coarse)
        .and_then(labels::cifar100_coarse_of);
    (top_k, coarse)
}
