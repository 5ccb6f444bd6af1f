//! The plain DenseNet, built from candle-nn layers over a [`VarBuilder`].
//!
//! It mirrors the PyTorch CIFAR DenseNet line by line, and every `pp(...)` path is a PyTorch
//! state_dict name, so the two can be read side by side:
//!
//! ```text
//! conv1                                            3×3 conv, 3 → init_features
//! features.dense_block_layer_{i}                   every block but the last
//!     .bottle_neck_layer_{j}.bottle_neck           0 BN, 1 ReLU, 2 1×1 conv → bn_size·k,
//!                                                  3 BN, 4 ReLU, 5 3×3 conv → k; cat([x, new])
//! features.transition_layer_{i}.down_sample        0 BN, 1 1×1 conv → floor(r·c), 2 avg pool 2×2
//! features.dense_block{n-1}                        the last block
//! features.bn, ReLU, global average pool, linear
//! ```
//!
//! Two knobs of [`Config`] cover the torchvision and timm variants, whose files are renamed to
//! these names on loading: the stem ([`Stem`]: a 7×7 stride-2 `conv1` with BatchNorm `norm0`,
//! ReLU and max pool for ImageNet, or a 3×3 `conv1` with or without `norm0`), and a ReLU inside
//! every transition.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{
    batch_norm, conv2d_no_bias, linear, BatchNorm, Conv2d, Conv2dConfig, Linear, VarBuilder,
};

use crate::config::{Config, Stem};

const BN_EPS: f64 = 1e-5;

fn conv(vb: VarBuilder, c_in: usize, c_out: usize, kernel: usize) -> Result<Conv2d> {
    strided_conv(vb, c_in, c_out, kernel, 1)
}

fn strided_conv(
    vb: VarBuilder,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: kernel / 2,
        stride,
        ..Default::default()
    };
    conv2d_no_bias(c_in, c_out, kernel, cfg, vb)
}

fn bn(vb: VarBuilder, c: usize) -> Result<BatchNorm> {
    batch_norm(c, BN_EPS, vb)
}

/// One bottleneck layer: BN-ReLU-1×1 conv-BN-ReLU-3×3 conv, its k outputs appended to its input.
#[derive(Clone, Debug)]
pub struct DenseLayer {
    /// `bottle_neck.0`
    pub norm1: BatchNorm,
    /// `bottle_neck.2`
    pub conv1: Conv2d,
    /// `bottle_neck.3`
    pub norm2: BatchNorm,
    /// `bottle_neck.5`
    pub conv2: Conv2d,
}

impl DenseLayer {
    fn new(vb: VarBuilder, c_in: usize, cfg: &Config) -> Result<Self> {
        let width = cfg.bn_size * cfg.growth_rate;
        let vb = vb.pp("bottle_neck");
        Ok(Self {
            norm1: bn(vb.pp(0), c_in)?,
            conv1: conv(vb.pp(2), c_in, width, 1)?,
            norm2: bn(vb.pp(3), width)?,
            conv2: conv(vb.pp(5), width, cfg.growth_rate, 3)?,
        })
    }

    /// The k new channels for input `xs`.
    pub fn new_features(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.norm1.forward_t(xs, false)?.relu()?;
        let xs = self.conv1.forward(&xs)?;
        let xs = self.norm2.forward_t(&xs, false)?.relu()?;
        self.conv2.forward(&xs)
    }
}

impl Module for DenseLayer {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Tensor::cat(&[xs, &self.new_features(xs)?], 1)
    }
}

/// A transition: BN, (ReLU,) 1×1 conv, 2×2 average pool.
#[derive(Clone, Debug)]
pub struct Transition {
    /// `down_sample.0`
    pub norm: BatchNorm,
    /// `down_sample.1`
    pub conv: Conv2d,
    /// Whether a ReLU follows the BatchNorm (not in the classic CIFAR network).
    pub relu: bool,
}

impl Transition {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, relu: bool) -> Result<Self> {
        let vb = vb.pp("down_sample");
        Ok(Self {
            norm: bn(vb.pp(0), c_in)?,
            conv: conv(vb.pp(1), c_in, c_out, 1)?,
            relu,
        })
    }
}

impl Module for Transition {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.norm.forward_t(xs, false)?;
        if self.relu {
            xs = xs.relu()?;
        }
        self.conv.forward(&xs)?.avg_pool2d(2)
    }
}

/// The whole network.
#[derive(Clone, Debug)]
pub struct DenseNet {
    /// `conv1`
    pub conv1: Conv2d,
    /// `norm0`, the stem's BatchNorm (followed by ReLU), if it has one.
    pub norm0: Option<BatchNorm>,
    /// Whether the stem ends with a 3×3 stride-2 max pool.
    pub stem_pool: bool,
    /// The dense blocks, each a list of bottleneck layers.
    pub blocks: Vec<Vec<DenseLayer>>,
    /// The transitions, one after every block but the last.
    pub transitions: Vec<Transition>,
    /// `features.bn`
    pub norm: BatchNorm,
    /// `linear`
    pub linear: Linear,
}

/// The state_dict name of dense block `i` of `n`: the last one is named without `_layer_`.
pub fn block_name(i: usize, n: usize) -> String {
    if i + 1 == n {
        format!("dense_block{i}")
    } else {
        format!("dense_block_layer_{i}")
    }
}

impl DenseNet {
    /// Builds the network from `vb`, whose paths are the PyTorch state_dict names.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let features = vb.pp("features");
        let (kernel, stride) = match cfg.stem {
            Stem::Cifar | Stem::CifarNorm => (3, 1),
            Stem::ImageNet => (7, 2),
        };
        let conv1 = strided_conv(vb.pp("conv1"), 3, cfg.init_features, kernel, stride)?;
        let norm0 = match cfg.stem {
            Stem::Cifar => None,
            Stem::CifarNorm | Stem::ImageNet => Some(bn(vb.pp("norm0"), cfg.init_features)?),
        };
        let n = cfg.block_config.len();
        let mut blocks = Vec::with_capacity(n);
        let mut transitions = Vec::with_capacity(n.saturating_sub(1));
        let mut c = cfg.init_features;
        for (i, &layers) in cfg.block_config.iter().enumerate() {
            let vb_block = features.pp(block_name(i, n));
            let mut block = Vec::with_capacity(layers);
            for j in 0..layers {
                block.push(DenseLayer::new(
                    vb_block.pp(format!("bottle_neck_layer_{j}")),
                    c,
                    cfg,
                )?);
                c += cfg.growth_rate;
            }
            blocks.push(block);
            if i + 1 < n {
                let c_out = cfg.transition_channels(c);
                transitions.push(Transition::new(
                    features.pp(format!("transition_layer_{i}")),
                    c,
                    c_out,
                    cfg.transition_relu,
                )?);
                c = c_out;
            }
        }
        Ok(Self {
            conv1,
            norm0,
            stem_pool: cfg.stem == Stem::ImageNet,
            blocks,
            transitions,
            norm: bn(features.pp("bn"), c)?,
            linear: linear(c, cfg.num_classes, vb.pp("linear"))?,
        })
    }

    /// The final feature maps, after `features.bn` and its ReLU: [N, C, h, w].
    pub fn features(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv1.forward(xs)?;
        if let Some(norm0) = &self.norm0 {
            xs = norm0.forward_t(&xs, false)?.relu()?;
        }
        if self.stem_pool {
            // Max pool 3×3, stride 2, padding 1. The input is post-ReLU (≥ 0), so zero padding
            // gives the same maxima as PyTorch's -∞ padding.
            xs = xs
                .pad_with_zeros(2, 1, 1)?
                .pad_with_zeros(3, 1, 1)?
                .max_pool2d_with_stride(3, 2)?;
        }
        for (i, block) in self.blocks.iter().enumerate() {
            for layer in block {
                xs = layer.forward(&xs)?;
            }
            if let Some(transition) = self.transitions.get(i) {
                xs = transition.forward(&xs)?;
            }
        }
        self.norm.forward_t(&xs, false)?.relu()
    }
}

impl Module for DenseNet {
    /// Logits [N, classes] for a normalised batch [N, 3, H, W].
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let pooled = self.features(xs)?.mean((2, 3))?;
        self.linear.forward(&pooled)
    }
}
