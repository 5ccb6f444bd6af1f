//! Weights as the fast path reads them.

use candle_core::{DType, Result, Tensor};

/// A tensor's values, flattened, as f32.
pub(crate) fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}
