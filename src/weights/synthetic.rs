//! Deterministic synthetic weights, for tests, benchmarks and device checks without weight files.
//!
//! The rule is shared with `tools/densenet_ref.py::deterministic_state_dict`, so PyTorch and this
//! crate build bit-identical networks from a name alone and only the logits need committing.
//! Element `i` of tensor `name` draws `u ∈ [0, 1)` from SplitMix64 seeded by FNV-1a of the name:
//! kernels get `(2u − 1)·√(3 / fan_in)`, BatchNorm scales and running variances `u + 0.5`,
//! biases and running means `(2u − 1)·0.1`.

use candle_core::{Device, Result, Tensor};
use std::collections::HashMap;

use crate::config::Config;
use crate::weights::{state_dict_spec, TensorKind};

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn uniform(seed: u64, i: u64) -> f32 {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // 24 bits: exactly representable in f32, so both languages get the same value.
    (z >> 40) as f32 / (1u32 << 24) as f32
}

/// The synthetic F32 values of the state_dict entry `name` with `shape`.
///
/// ```
/// let t = densenet::weights::synthetic::tensor("conv1.weight", &[64, 3, 3, 3], &candle_core::Device::Cpu)?;
/// assert_eq!(t.flatten_all()?.get(0)?.to_scalar::<f32>()?.to_bits(), 0x3cf6_2b56);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn tensor(name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
    let seed = fnv1a64(name.as_bytes());
    let n: usize = shape.iter().product();
    let is_kernel = name.ends_with(".weight") && shape.len() >= 2;
    let scale = if is_kernel {
        let fan_in: usize = shape[1..].iter().product();
        (3.0f64 / fan_in as f64).sqrt() as f32
    } else {
        0.0
    };
    let values: Vec<f32> = (0..n as u64)
        .map(|i| {
            let u = uniform(seed, i);
            if is_kernel {
                (2.0 * u - 1.0) * scale
            } else if name.ends_with(".weight") || name.ends_with(".running_var") {
                u + 0.5
            } else {
                (2.0 * u - 1.0) * 0.1
            }
        })
        .collect();
    Tensor::from_vec(values, shape, device)
}

/// Every tensor of `config`'s state_dict but the BatchNorm counters, with its synthetic values.
pub fn state_dict(config: &Config, device: &Device) -> crate::Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    for spec in state_dict_spec(config)? {
        if spec.kind != TensorKind::Counter {
            let t = tensor(&spec.name, &spec.shape, device)?;
            tensors.insert(spec.name, t);
        }
    }
    Ok(tensors)
}
