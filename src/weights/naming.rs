//! Naming families: how each kind of checkpoint names the network's tensors, and recognising the
//! family and the architecture from tensor names and shapes.
//!
//! The network is built under one set of canonical names (the seed CIFAR naming, plus `norm0`);
//! a family maps each canonical name to the name its files use, so the network code never learns
//! a family's names.

use std::collections::BTreeMap;

use crate::config::{Config, Preprocessing, Stem};
use crate::labels;
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

    let reduction = reduction(
        block_config.len(),
        "features.transition_layer_0.down_sample.1.weight",
        shape,
    )?;

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

/// The compression of the first transition, whose 1×1 convolution is `name`: the classic 0.5
/// whenever it explains the shape (PyTorch floors odd channel counts), else out/in. A network of
/// one block has no transition and keeps the default 0.5.
fn reduction<'a>(
    blocks: usize,
    name: &str,
    shape: impl Fn(&str) -> Option<&'a [usize]>,
) -> Result<f64, String> {
    if blocks < 2 {
        return Ok(0.5);
    }
    match shape(name) {
        Some([out, inp, 1, 1]) if *inp > 0 && inp / 2 == *out => Ok(0.5),
        Some([out, inp, 1, 1]) if *inp > 0 => Ok(*out as f64 / *inp as f64),
        other => Err(format!(
            "`{name}` should be [out, in, 1, 1], found {other:?}"
        )),
    }
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

/// A way of naming a DenseNet's tensors, with the architecture family it goes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// The classic PyTorch CIFAR DenseNet (`conv1`, `features.dense_block_layer_{i}`, `linear`;
    /// transitions without ReLU).
    SeedCifar,
    /// torchvision's ImageNet DenseNets (`features.conv0` 7×7/2, `norm0`, max pool,
    /// `features.denseblock{b}.denselayer{l}`, `features.norm5`, `classifier`).
    TorchvisionImageNet,
    /// CIFAR DenseNets in torchvision/timm naming: a 3×3 stride-1 `features.conv0`, with or without
    /// `features.norm0`, no max pool (DenseNet-BC, timm's `densenet121_cifar100`).
    TorchvisionCifar,
}

impl Family {
    /// A short identifier, as stored in converted files' metadata.
    pub fn id(self) -> &'static str {
        match self {
            Family::SeedCifar => "seed-cifar",
            Family::TorchvisionImageNet => "torchvision-imagenet",
            Family::TorchvisionCifar => "torchvision-cifar",
        }
    }

    /// A one-line description for people.
    pub fn description(self) -> &'static str {
        match self {
            Family::SeedCifar => "seed CIFAR naming (conv1, dense_block_layer_*, linear)",
            Family::TorchvisionImageNet => {
                "ImageNet DenseNet, torchvision naming (7×7/2 conv0, max pool, denseblock*, classifier)"
            }
            Family::TorchvisionCifar => {
                "CIFAR DenseNet, torchvision/timm naming (3×3 conv0, denseblock*, classifier)"
            }
        }
    }

    fn torchvision_naming(self) -> bool {
        self != Family::SeedCifar
    }

    /// The family of a network of `config` whose files use torchvision names (`torchvision`) or
    /// not.
    pub fn of(config: &Config, torchvision: bool) -> Self {
        match (torchvision, config.stem) {
            (false, _) => Family::SeedCifar,
            (true, Stem::ImageNet) => Family::TorchvisionImageNet,
            (true, _) => Family::TorchvisionCifar,
        }
    }

    /// The name this family's files give the tensor the network calls `canonical`.
    ///
    /// ```
    /// use densenet::weights::naming::Family;
    /// let f = Family::TorchvisionImageNet;
    /// assert_eq!(f.file_name("conv1.weight", 4), "features.conv0.weight");
    /// assert_eq!(
    ///     f.file_name("features.dense_block3.bottle_neck_layer_0.bottle_neck.5.weight", 4),
    ///     "features.denseblock4.denselayer1.conv2.weight"
    /// );
    /// ```
    pub fn file_name(self, canonical: &str, num_blocks: usize) -> String {
        if !self.torchvision_naming() {
            return canonical.to_string();
        }
        torchvision_name(canonical, num_blocks).unwrap_or_else(|| canonical.to_string())
    }

    /// The preprocessing and labels a file of this family implies when it names none.
    pub fn defaults(self, config: &Config) -> (Preprocessing, Vec<String>) {
        match self {
            Family::TorchvisionImageNet => (
                Preprocessing::imagenet(),
                labels::default_imagenet_labels(config.num_classes),
            ),
            Family::SeedCifar | Family::TorchvisionCifar => (
                Preprocessing::cifar100(),
                labels::default_labels(config.num_classes),
            ),
        }
    }
}

/// canonical → torchvision; `None` for a name outside the canonical scheme.
fn torchvision_name(canonical: &str, num_blocks: usize) -> Option<String> {
    let (module, param) = canonical.rsplit_once('.')?;
    let module = match module {
        "conv1" => "features.conv0".to_string(),
        "norm0" => "features.norm0".to_string(),
        "features.bn" => "features.norm5".to_string(),
        "linear" => "classifier".to_string(),
        _ => {
            let rest = module.strip_prefix("features.")?;
            if let Some(rest) = rest.strip_prefix("transition_layer_") {
                let (t, layer) = rest.split_once(".down_sample.")?;
                let t: usize = t.parse().ok()?;
                let layer = match layer {
                    "0" => "norm",
                    "1" => "conv",
                    _ => return None,
                };
                format!("features.transition{}.{layer}", t + 1)
            } else {
                let (block, rest) = rest.split_once(".bottle_neck_layer_")?;
                let b = (0..num_blocks).find(|&b| block_name(b, num_blocks) == block)?;
                let (l, layer) = rest.split_once(".bottle_neck.")?;
                let l: usize = l.parse().ok()?;
                let layer = match layer {
                    "0" => "norm1",
                    "2" => "conv1",
                    "3" => "norm2",
                    "5" => "conv2",
                    _ => return None,
                };
                format!("features.denseblock{}.denselayer{}.{layer}", b + 1, l + 1)
            }
        }
    };
    Some(format!("{module}.{param}"))
}

/// Renames keys of torchvision before 0.3 (`denselayer1.norm.1.weight`) as torchvision's own
/// loader does (`denselayer1.norm1.weight`); other names are returned unchanged.
///
/// ```
/// use densenet::weights::naming::modernise_name;
/// assert_eq!(
///     modernise_name("features.denseblock1.denselayer2.conv.2.weight"),
///     "features.denseblock1.denselayer2.conv2.weight"
/// );
/// assert_eq!(modernise_name("features.norm0.weight"), "features.norm0.weight");
/// ```
pub fn modernise_name(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    if let Some(i) = parts.iter().position(|p| p.starts_with("denselayer")) {
        if let [layer @ ("norm" | "relu" | "conv"), n @ ("1" | "2"), _param] = &parts[i + 1..] {
            let mut out = parts[..=i].join(".");
            out.push_str(&format!(".{layer}{n}.{}", parts[i + 3]));
            return out;
        }
    }
    name.to_string()
}

/// Whether the tensors are named as torchvision and timm name them.
pub fn uses_torchvision_naming(shapes: &BTreeMap<&str, &[usize]>) -> bool {
    shapes.contains_key("features.conv0.weight")
}

/// Recognises the family and the architecture from tensor names and shapes. The error says what
/// was expected and what was found.
pub fn recognise(shapes: &BTreeMap<&str, &[usize]>) -> Result<(Family, Config), String> {
    if uses_torchvision_naming(shapes) {
        let config = infer_torchvision_config(shapes)?;
        Ok((Family::of(&config, true), config))
    } else if shapes.contains_key("conv1.weight") {
        Ok((Family::SeedCifar, infer_config(shapes)?))
    } else {
        Err(format!(
            "not a recognised DenseNet checkpoint: expected either torchvision/timm names \
             (`features.conv0.weight`, `features.denseblock1.denselayer1.…`, `classifier.weight`) \
             or the CIFAR names (`conv1.weight`, `features.dense_block_layer_0.…`, \
             `linear.weight`); found {}",
            summarise(shapes)
        ))
    }
}

/// Infers the configuration of a network in torchvision/timm naming.
fn infer_torchvision_config(shapes: &BTreeMap<&str, &[usize]>) -> Result<Config, String> {
    let shape = |name: &str| shapes.get(name).copied();
    let has_norm0 = shapes.contains_key("features.norm0.weight");
    let (init_features, stem) =
        match shape("features.conv0.weight") {
            Some([init, 3, 7, 7]) if has_norm0 => (*init, Stem::ImageNet),
            Some([init, 3, 3, 3]) if has_norm0 => (*init, Stem::CifarNorm),
            Some([init, 3, 3, 3]) => (*init, Stem::Cifar),
            other => {
                return Err(format!(
                "`features.conv0.weight` should be [C, 3, 7, 7] (ImageNet, with `features.norm0`) \
                 or [C, 3, 3, 3] (CIFAR), found {other:?}{}",
                if has_norm0 { "" } else { " without `features.norm0`" }
            ))
            }
        };
    let num_classes = match shape("classifier.weight") {
        Some([classes, _]) => *classes,
        other => {
            return Err(format!(
                "`classifier.weight` should be [classes, C], found {other:?}"
            ))
        }
    };
    let layer_key =
        |b: usize, l: usize| format!("features.denseblock{b}.denselayer{l}.norm1.weight");
    let block_config: Vec<usize> = (1..)
        .map(|b| {
            (1..)
                .take_while(|&l| shapes.contains_key(layer_key(b, l).as_str()))
                .count()
        })
        .take_while(|&layers| layers > 0)
        .collect();
    if block_config.is_empty() {
        return Err(
            "no dense block found (`features.denseblock1.denselayer1.norm1.weight`)".into(),
        );
    }
    let first = "features.denseblock1.denselayer1.conv2.weight";
    let (growth_rate, width) = match shape(first) {
        Some([k, width, 3, 3]) if *k > 0 && width % k == 0 => (*k, *width),
        other => {
            return Err(format!(
                "`{first}` should be [k, width, 3, 3] with width a multiple of k, found {other:?}"
            ))
        }
    };
    let reduction = reduction(
        block_config.len(),
        "features.transition1.conv.weight",
        shape,
    )?;
    Ok(Config {
        growth_rate,
        block_config,
        init_features,
        bn_size: width / growth_rate,
        reduction,
        num_classes,
        stem,
        transition_relu: true,
    })
}
