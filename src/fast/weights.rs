//! Weights as the fast path reads them: small ones copied out, large 1×1 kernels read in place
//! from the tensors the plain network already holds (no second copy in memory).

use candle_core::{DType, Result, Storage, Tensor};

/// A tensor's values, flattened, as f32.
pub(crate) fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// A contiguous f32 CPU tensor, borrowed as a slice while a kernel runs.
#[derive(Clone, Debug)]
pub(crate) struct Shared(Tensor);

impl Shared {
    pub(crate) fn new(t: &Tensor) -> Result<Self> {
        if !t.device().is_cpu() {
            candle_core::bail!(
                "the fast path runs on the CPU, the weights are on {:?}",
                t.device()
            )
        }
        Ok(Self(t.to_dtype(DType::F32)?.contiguous()?))
    }

    /// Runs `f` on the values, in row-major order.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
        let (storage, layout) = self.0.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("fast path weight is not on the CPU")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fast path weight is not contiguous")
        };
        Ok(f(&cpu.as_slice::<f32>()?[start..end]))
    }
}
