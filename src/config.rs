//! What a model is: the DenseNet architecture, its preprocessing, and how both are stored in a
//! safetensors file's `__metadata__`.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::error::{Error, Result};

/// The architecture of a CIFAR-style DenseNet (bottleneck layers and compressing transitions).
///
/// ```
/// let config = densenet::Config::densenet121(100);
/// assert_eq!(config.block_config, vec![6, 12, 24, 16]);
/// assert_eq!(config.num_features(), 1024);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Channels each bottleneck layer adds (k).
    pub growth_rate: usize,
    /// Number of bottleneck layers in each dense block.
    pub block_config: Vec<usize>,
    /// Output channels of the first convolution (2k in the classic CIFAR network).
    pub init_features: usize,
    /// Width of a bottleneck's 1×1 convolution, in multiples of k (4 in the paper).
    pub bn_size: usize,
    /// Compression of each transition: it keeps floor(reduction·c) channels.
    pub reduction: f64,
    /// Number of output classes.
    pub num_classes: usize,
    /// The layers before the first dense block.
    #[serde(default)]
    pub stem: Stem,
    /// Whether transitions apply a ReLU between their BatchNorm and convolution (torchvision and
    /// timm do; the classic CIFAR network does not).
    #[serde(default)]
    pub transition_relu: bool,
}

/// The layers before the first dense block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stem {
    /// A 3×3 convolution, stride 1, padding 1 (the classic CIFAR network).
    #[default]
    Cifar,
    /// A 3×3 convolution, stride 1, padding 1, then BatchNorm and ReLU.
    CifarNorm,
    /// A 7×7 convolution, stride 2, padding 3, BatchNorm, ReLU, and a 3×3 max pool, stride 2,
    /// padding 1 (the ImageNet networks).
    ImageNet,
}

impl Stem {
    /// How many times the stem shrinks the input.
    pub fn downsampling(self) -> usize {
        match self {
            Stem::Cifar | Stem::CifarNorm => 1,
            Stem::ImageNet => 4,
        }
    }
}

impl Config {
    fn preset(growth_rate: usize, block_config: &[usize], num_classes: usize) -> Self {
        Self {
            growth_rate,
            block_config: block_config.to_vec(),
            init_features: 2 * growth_rate,
            bn_size: 4,
            reduction: 0.5,
            num_classes,
            stem: Stem::Cifar,
            transition_relu: false,
        }
    }

    /// DenseNet-121: blocks [6, 12, 24, 16], k = 32.
    pub fn densenet121(num_classes: usize) -> Self {
        Self::preset(32, &[6, 12, 24, 16], num_classes)
    }

    /// DenseNet-169: blocks [6, 12, 32, 32], k = 32.
    pub fn densenet169(num_classes: usize) -> Self {
        Self::preset(32, &[6, 12, 32, 32], num_classes)
    }

    /// DenseNet-201: blocks [6, 12, 48, 32], k = 32.
    pub fn densenet201(num_classes: usize) -> Self {
        Self::preset(32, &[6, 12, 48, 32], num_classes)
    }

    /// DenseNet-161: blocks [6, 12, 36, 24], k = 48.
    pub fn densenet161(num_classes: usize) -> Self {
        Self::preset(48, &[6, 12, 36, 24], num_classes)
    }

    /// DenseNet-BC-100 for CIFAR (Huang et al.): three blocks of 16 layers, k = 12, 24 initial
    /// features, compression 0.5.
    pub fn densenet_bc100(num_classes: usize) -> Self {
        Self {
            init_features: 24,
            ..Self::preset(12, &[16, 16, 16], num_classes)
        }
    }

    /// A preset by name (`densenet121`, `densenet169`, `densenet201`, `densenet161`).
    pub fn by_name(name: &str, num_classes: usize) -> Option<Self> {
        match name {
            "densenet121" => Some(Self::densenet121(num_classes)),
            "densenet169" => Some(Self::densenet169(num_classes)),
            "densenet201" => Some(Self::densenet201(num_classes)),
            "densenet161" => Some(Self::densenet161(num_classes)),
            _ => None,
        }
    }

    /// Channels entering each transition, then the final BatchNorm, in network order.
    pub fn block_channels(&self) -> Vec<(usize, usize)> {
        let mut c = self.init_features;
        let mut out = Vec::with_capacity(self.block_config.len());
        for (i, &n) in self.block_config.iter().enumerate() {
            let input = c;
            c += n * self.growth_rate;
            out.push((input, c));
            if i + 1 < self.block_config.len() {
                c = self.transition_channels(c);
            }
        }
        out
    }

    /// Channels a transition keeps out of `c`: floor(reduction·c), as PyTorch's `int()` does.
    pub fn transition_channels(&self, c: usize) -> usize {
        (self.reduction * c as f64).floor() as usize
    }

    /// Channels entering the classifier.
    pub fn num_features(&self) -> usize {
        self.block_channels()
            .last()
            .map_or(self.init_features, |b| b.1)
    }

    /// By how much the network shrinks its input before the final pooling (the stem, then a
    /// halving per transition): the smallest input side it accepts.
    pub fn downsampling(&self) -> usize {
        self.stem.downsampling() << self.block_config.len().saturating_sub(1)
    }

    /// Checks that the configuration describes a network that can be built.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::InvalidConfig(m));
        if self.block_config.is_empty() || self.block_config.contains(&0) {
            return fail(format!(
                "block_config {:?} must list at least one block, each with at least one layer",
                self.block_config
            ));
        }
        if self.growth_rate == 0 || self.init_features == 0 || self.bn_size == 0 {
            return fail("growth_rate, init_features and bn_size must be positive".into());
        }
        if self.num_classes == 0 {
            return fail("num_classes must be positive".into());
        }
        if !(self.reduction > 0.0 && self.reduction <= 1.0) {
            return fail(format!("reduction {} must lie in (0, 1]", self.reduction));
        }
        if self.block_channels()[..self.block_config.len() - 1]
            .iter()
            .any(|&(_, c)| self.transition_channels(c) == 0)
        {
            return fail(format!(
                "reduction {} leaves a transition with no channels",
                self.reduction
            ));
        }
        Ok(())
    }
}

/// How an image becomes the network's input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Height and width the network takes.
    pub input_size: [usize; 2],
    /// Per-channel mean (RGB) subtracted after scaling pixels to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB) divided by after the mean.
    pub std: [f32; 3],
    /// How an image of another size is brought to `input_size`.
    #[serde(default)]
    pub resize: Resize,
    /// The resampling filter of every resize.
    #[serde(default)]
    pub interpolation: Interpolation,
}

/// How an image whose size differs from the input size is resized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// Resize the whole image to the input size (aspect ratio not kept).
    #[default]
    Stretch,
    /// Resize the shorter side to this length, then crop the centre to the input size.
    ShorterSideThenCenterCrop(u32),
}

/// The resampling filter of a resize, named as timm's `pretrained_cfg.interpolation` names it,
/// and recorded in a weights file's metadata (`densenet.preprocessing`). Bilinear and bicubic are
/// Pillow's (`Image.resize`, which torchvision's `Resize` calls on PIL images), pixel for pixel:
/// both average every source pixel when shrinking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    /// Pillow's `BILINEAR` (torchvision's default).
    #[default]
    Bilinear,
    /// Pillow's `BICUBIC` (Keys' cubic, a = −0.5), which timm configurations often name.
    Bicubic,
    /// Nearest neighbour, the `image` crate's (not guaranteed to pick Pillow's `NEAREST` pixels).
    Nearest,
}

impl std::str::FromStr for Interpolation {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "bilinear" => Ok(Self::Bilinear),
            "bicubic" => Ok(Self::Bicubic),
            "nearest" => Ok(Self::Nearest),
            _ => Err(format!("`{s}` is not bilinear, bicubic or nearest")),
        }
    }
}

/// CIFAR-100 training-set channel means, as used by the PyTorch CIFAR-100 recipes.
pub const CIFAR100_MEAN: [f32; 3] = [0.507_075_16, 0.486_548_87, 0.440_917_84];
/// CIFAR-100 training-set channel standard deviations.
pub const CIFAR100_STD: [f32; 3] = [0.267_334_29, 0.256_438_43, 0.276_150_47];

impl Preprocessing {
    /// CIFAR-100: 32×32, the CIFAR-100 mean and std.
    pub fn cifar100() -> Self {
        Self {
            input_size: [32, 32],
            mean: CIFAR100_MEAN,
            std: CIFAR100_STD,
            resize: Resize::Stretch,
            interpolation: Interpolation::Bilinear,
        }
    }

    /// ImageNet, as torchvision evaluates its classifiers: shorter side resized to 256
    /// (bilinear), centre crop 224, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    pub fn imagenet() -> Self {
        Self {
            input_size: [224, 224],
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            resize: Resize::ShorterSideThenCenterCrop(256),
            interpolation: Interpolation::Bilinear,
        }
    }
}

/// ImageNet channel means, as torchvision's classifiers use them.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

const KEY_CONFIG: &str = "densenet.config";
const KEY_PREPROCESSING: &str = "densenet.preprocessing";
const KEY_LABELS: &str = "densenet.labels";

/// Everything a self-describing weights file says about its model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// The architecture.
    pub config: Config,
    /// The input pipeline.
    pub preprocessing: Preprocessing,
    /// One name per class, in output order.
    pub labels: Vec<String>,
}

impl ModelInfo {
    /// The `__metadata__` entries that describe this model (`format` is `pt`, as PyTorch's
    /// safetensors exporter writes, so that `safetensors.torch` reads the file too).
    pub fn to_metadata(&self) -> HashMap<String, String> {
        // Plain structs of numbers and strings: serialising them cannot fail.
        let config = serde_json::to_string(&self.config).expect("config serialises");
        let prep = serde_json::to_string(&self.preprocessing).expect("preprocessing serialises");
        let labels = serde_json::to_string(&self.labels).expect("labels serialise");
        HashMap::from([
            ("format".to_string(), "pt".to_string()),
            (KEY_CONFIG.to_string(), config),
            (KEY_PREPROCESSING.to_string(), prep),
            (KEY_LABELS.to_string(), labels),
        ])
    }

    /// Reads the entries written by [`ModelInfo::to_metadata`]; `Ok(None)` when the file carries
    /// no configuration. A missing preprocessing or label entry falls back to `defaults`.
    pub fn from_metadata(
        metadata: &HashMap<String, String>,
        path: &std::path::Path,
        defaults: impl FnOnce(&Config) -> (Preprocessing, Vec<String>),
    ) -> Result<Option<Self>> {
        fn parse<T: serde::de::DeserializeOwned>(
            metadata: &HashMap<String, String>,
            key: &str,
            path: &std::path::Path,
        ) -> Result<Option<T>> {
            metadata
                .get(key)
                .map(|s| {
                    serde_json::from_str(s).map_err(|e| Error::InvalidMetadata {
                        path: path.to_path_buf(),
                        key: key.to_string(),
                        reason: e.to_string(),
                    })
                })
                .transpose()
        }
        let Some(config) = parse::<Config>(metadata, KEY_CONFIG, path)? else {
            return Ok(None);
        };
        let (default_prep, default_labels) = defaults(&config);
        let preprocessing = parse(metadata, KEY_PREPROCESSING, path)?.unwrap_or(default_prep);
        let labels: Vec<String> = parse(metadata, KEY_LABELS, path)?.unwrap_or(default_labels);
        if labels.len() != config.num_classes {
            return Err(Error::InvalidMetadata {
                path: path.to_path_buf(),
                key: KEY_LABELS.to_string(),
                reason: format!("{} labels for {} classes", labels.len(), config.num_classes),
            });
        }
        Ok(Some(Self {
            config,
            preprocessing,
            labels,
        }))
    }
}
