//! Recognising an architecture from tensor names and shapes, for files without metadata.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::network::block_name;

/// Infers the configuration of a network in the CIFAR DenseNet naming (`conv1`,
/// `features.dense_block_layer_{i}`, `features.dense_block{n-1}`, `linear`) from its tensors'
/// names and shapes. The error says what was expected and what was found.
pub fn infer_config(shapes: &BTreeMap<&str, &[usize]>) -> Result<Config, String> {
    let shape = |name: &str| shapes.get(name).copied();
    let conv1 = shape("conv1.weight").ok_or_else(|| {
        format!(
            "not a CIFAR DenseNet: expected tensors `conv1.weight`, `features.dense_block…`, \
             `linear.weight`; found {}",
            summarise(shapes)
        )
    })?;
    let linear = shape("linear.weight").ok_or("tensor `linear.weight` is missing")?;
    let (init_features, num_classes) = match (conv1, linear) {
        ([init, 3, 3, 3], [classes, _]) => (*init, *classes),
        _ => {
            return Err(format!(
                "`conv1.weight` {conv1:?} should be [C, 3, 3, 3] and `linear.weight` {linear:?} [classes, C]"
            ))
        }
    };

    // Blocks are numbered from 0; only the last is named `dense_block{n-1}`.
    let count_layers = |block: &str| {
        (0..)
            .take_while(|j| {
                let key = format!("features.{block}.bottle_neck_layer_{j}.bottle_neck.0.weight");
                shapes.contains_key(key.as_str())
            })
            .count()
    };
    let mut block_config = Vec::new();
    loop {
        let i = block_config.len();
        let last = count_layers(&block_name(i, i + 1));
        if last > 0 {
            block_config.push(last);
            break;
        }
        let inner = count_layers(&block_name(i, i + 2));
        if inner == 0 {
            return Err(format!("no dense block {i} (`features.dense_block_layer_{i}` or `features.dense_block{i}`) found"));
        }
        block_config.push(inner);
    }

    let first = format!(
        "features.{}.bottle_neck_layer_0.bottle_neck",
        block_name(0, block_config.len())
    );
    let (growth_rate, width) = match shape(&format!("{first}.5.weight")) {
        Some([k, width, 3, 3]) => (*k, *width),
        other => {
            return Err(format!(
                "`{first}.5.weight` should be [k, width, 3, 3], found {other:?}"
            ))
        }
    };
    if growth_rate == 0 || width % growth_rate != 0 {
        return Err(format!(
            "bottleneck width {width} is not a multiple of the growth rate {growth_rate}"
        ));
    }

    let reduction = if block_config.len() > 1 {
        match shape("features.transition_layer_0.down_sample.1.weight") {
            // The classic 0.5 whenever it explains the shape; PyTorch floors odd channel counts.
            Some([out, inp, 1, 1]) if *inp > 0 && inp / 2 == *out => 0.5,
            Some([out, inp, 1, 1]) if *inp > 0 => *out as f64 / *inp as f64,
            other => {
                return Err(format!(
                    "`features.transition_layer_0.down_sample.1.weight` should be [out, in, 1, 1], found {other:?}"
                ))
            }
        }
    } else {
        0.5
    };

    Ok(Config {
        growth_rate,
        block_config,
        init_features,
        bn_size: width / growth_rate,
        reduction,
        num_classes,
        stem: crate::config::Stem::Cifar,
        transition_relu: false,
    })
}

/// A few of the names found, for error messages.
pub(crate) fn summarise(shapes: &BTreeMap<&str, &[usize]>) -> String {
    if shapes.is_empty() {
        return "no tensors".to_string();
    }
    let names: Vec<_> = shapes.keys().take(4).map(|n| format!("`{n}`")).collect();
    let more = shapes.len().saturating_sub(names.len());
    if more > 0 {
        format!("{} and {more} more", names.join(", "))
    } else {
        names.join(", ")
    }
}
