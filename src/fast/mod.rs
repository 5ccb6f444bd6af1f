//! The CPU fast path: the plain network compiled into a plan of fused kernels.
//!
//! [`FastNet::compile`] reads a [`DenseNet`] once; [`FastNet::forward`] then computes the same
//! logits (within float rounding: max |Δlogit| ≤ 1e-4 on densenet121, checked by the tests) as
//! the plain network, as a plain function from an input [`Tensor`] to a logits [`Tensor`].
//!
//! What it does differently from the plain layers, all exact in real arithmetic:
//! - Activations live in NHWC matrices (a row per pixel, a column per channel). Each dense block
//!   allocates one matrix as wide as its output and every layer writes its k channels into its
//!   own columns: no concatenation copies anything.
//! - Convolutions are matrix products with pixels as rows (`[pixels × k²·c]·[k²·c × c_out]`),
//!   the orientation in which `gemm` runs fastest for these narrow outputs, computed in tiles of
//!   rows, one tile per task on rayon's threads, so the gathered patches stay in cache and memory
//!   stays small; a large batch runs in passes of 16 images for the same reason.
//! - Every BatchNorm (+ReLU) becomes one per-channel scale-shift(-clamp) applied while the next
//!   product's input is gathered: nothing makes a separate pass over the activations.
//! - A transition average-pools before its 1×1 convolution (the two are linear and commute), so
//!   its product is four times smaller.
//! - The 1×1 kernels are read in place from the plain network's tensors (the PyTorch `[out, in]`
//!   layout is the transposed right-hand side `gemm` wants, through strides); only the 3×3
//!   kernels are copied, reordered to (ky, kx, c) rows.

mod kernels;
mod weights;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::Conv2d;
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;

use crate::network::{Bottleneck, DenseNet, Transition};
use kernels::{im2col, matmul, Affine, Grid, Rhs, Window};
use weights::{to_vec, Shared};

/// Most pixel rows one task gathers and multiplies at once: keeps a tile of 3×3 patches
/// (rows × 9·128 floats for k = 32) within a core's L2 cache.
const MAX_TILE_ROWS: usize = 256;

/// Most images one pass through the network takes: larger batches run in passes of this many,
/// which keeps a block's matrix small enough to stay in the caches (and memory bounded).
const MAX_IMAGES_PER_PASS: usize = 16;

thread_local! {
    /// Per-thread room for gathered patches and activated inputs, reused across tiles.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch space of `len` floats (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// Rows per tile for `rows` rows: at least one tile per thread, at most [`MAX_TILE_ROWS`] each.
fn tile_rows(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let tiles = rows.div_ceil(MAX_TILE_ROWS).max(threads).min(rows.max(1));
    rows.div_ceil(tiles).max(1)
}

/// A convolution as a product with gathered patches; the kernel as [k²·c_in × c_out].
#[derive(Clone, Debug)]
struct Conv {
    window: Window,
    c_in: usize,
    c_out: usize,
    kernel: Vec<f32>,
}

impl Conv {
    fn new(conv: &Conv2d) -> Result<Self> {
        let (c_out, c_in, k, k2) = conv.weight().dims4()?;
        let cfg = conv.config();
        if k != k2 || conv.bias().is_some() || cfg.groups != 1 || cfg.dilation != 1 {
            candle_core::bail!(
                "fast path: unsupported convolution {:?}",
                conv.weight().dims()
            );
        }
        let w = to_vec(conv.weight())?;
        let mut kernel = vec![0.0; k * k * c_in * c_out];
        for co in 0..c_out {
            for ci in 0..c_in {
                for t in 0..k * k {
                    kernel[(t * c_in + ci) * c_out + co] = w[(co * c_in + ci) * k * k + t];
                }
            }
        }
        Ok(Self {
            window: Window {
                kernel: k,
                stride: cfg.stride,
                pad: cfg.padding,
            },
            c_in,
            c_out,
            kernel,
        })
    }

    fn depth(&self) -> usize {
        self.window.kernel * self.window.kernel * self.c_in
    }

    /// Convolves `act(src)` (rows `ld` apart, over `grid`) into columns `0..c_out` of `dst`
    /// (rows `dst_ld` apart), one output pixel per row.
    fn run(
        &self,
        (src, ld, grid): (&[f32], usize, Grid),
        act: Option<&Affine>,
        dst: &mut [f32],
        dst_ld: usize,
    ) {
        let rows = self.window.output(grid).pixels();
        let tile = tile_rows(rows);
        let depth = self.depth();
        let len = dst.len().min(rows * dst_ld);
        dst[..len]
            .par_chunks_mut(tile * dst_ld)
            .enumerate()
            .for_each(|(i, out)| {
                let first = i * tile;
                let m = out.len().div_ceil(dst_ld);
                with_scratch(m * depth, |cols| {
                    im2col(
                        src,
                        ld,
                        self.c_in,
                        grid,
                        self.window,
                        first..first + m,
                        act,
                        cols,
                    );
                    let rhs = Rhs {
                        data: &self.kernel,
                        row_stride: self.c_out,
                        col_stride: 1,
                    };
                    matmul(
                        (m, self.c_out, depth),
                        out,
                        dst_ld,
                        cols,
                        depth,
                        rhs,
                        Parallelism::None,
                    );
                });
            });
    }
}

/// The stem: conv1, then (norm0, ReLU) and (max pool) where the network has them.
#[derive(Clone, Debug)]
struct Stem {
    conv: Conv,
    norm0: Option<Affine>,
    pool: bool,
}

impl Stem {
    /// The first block's matrix (`ld` columns) with the stem's output in its first columns.
    fn run(&self, x: &[f32], grid: Grid, ld: usize) -> (Vec<f32>, Grid) {
        let conv_grid = self.conv.window.output(grid);
        let c = self.conv.c_out;
        let (mut out, out_ld) = if self.pool {
            (vec![0.0; conv_grid.pixels() * c], c)
        } else {
            (vec![0.0; conv_grid.pixels() * ld], ld)
        };
        self.conv.run((x, 3, grid), None, &mut out, out_ld);
        if let Some(norm0) = &self.norm0 {
            out.par_chunks_mut(out_ld)
                .for_each(|row| norm0.apply_in_place(&mut row[..c]));
        }
        if !self.pool {
            return (out, conv_grid);
        }
        // Max pool 3×3, stride 2, padding 1: padded taps are skipped, as PyTorch's -∞ padding.
        let window = Window {
            kernel: 3,
            stride: 2,
            pad: 1,
        };
        let pooled_grid = window.output(conv_grid);
        let mut pooled = vec![0.0; pooled_grid.pixels() * ld];
        pooled.par_chunks_mut(ld).enumerate().for_each(|(r, row)| {
            let dst = &mut row[..c];
            dst.fill(f32::NEG_INFINITY);
            let (n, oy, ox) = pooled_grid.position(r);
            for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(conv_grid.h) {
                for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(conv_grid.w) {
                    let src = &out[conv_grid.row(n, iy, ix) * c..][..c];
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = d.max(v);
                    }
                }
            }
        });
        (pooled, pooled_grid)
    }
}

/// One bottleneck layer: norm1 and ReLU gathered into the 1×1 product, norm2 and ReLU applied
/// to its output tile while still in cache.
#[derive(Clone, Debug)]
struct Layer {
    norm1: Affine,
    conv1: Shared,
    norm2: Affine,
    conv2: Conv,
}

impl Layer {
    fn new(b: &Bottleneck) -> Result<Self> {
        Ok(Self {
            norm1: Affine::from_bn(&b.norm1, true)?,
            conv1: Shared::new(&b.conv1.weight().flatten_from(1)?)?,
            norm2: Affine::from_bn(&b.norm2, true)?,
            conv2: Conv::new(&b.conv2)?,
        })
    }
}

/// A dense block, run in place on its output matrix.
#[derive(Clone, Debug)]
struct Block {
    layers: Vec<Layer>,
    c_in: usize,
    c_out: usize,
    width: usize,
}

impl Block {
    /// Runs the layers on `buf` ([pixels × c_out], the first `c_in` columns filled).
    fn run(&self, buf: &mut [f32], grid: Grid) -> Result<()> {
        let (ld, width, rows) = (self.c_out, self.width, grid.pixels());
        let tile = tile_rows(rows);
        let mut mid = vec![0.0; rows * width];
        let mut c = self.c_in;
        for layer in &self.layers {
            let input: &[f32] = buf;
            layer.conv1.with(|w1| {
                mid.par_chunks_mut(tile * width)
                    .enumerate()
                    .for_each(|(i, out)| {
                        let first = i * tile;
                        let m = out.len() / width;
                        with_scratch(m * c, |packed| {
                            for (r, dst) in packed.chunks_exact_mut(c).enumerate() {
                                layer.norm1.apply(&input[(first + r) * ld..], dst);
                            }
                            let rhs = Rhs {
                                data: w1,
                                row_stride: 1,
                                col_stride: c,
                            };
                            let shape = (m, width, c);
                            matmul(shape, out, width, packed, c, rhs, Parallelism::None);
                        });
                        // norm2 and ReLU once per value here, not once per 3×3 tap.
                        for row in out.chunks_exact_mut(width) {
                            layer.norm2.apply_in_place(row);
                        }
                    })
            })?;
            layer
                .conv2
                .run((&mid, width, grid), None, &mut buf[c..], ld);
            c += layer.conv2.c_out;
        }
        Ok(())
    }
}

/// A transition: BN (+ReLU) and the 2×2 average pool gathered together, then the 1×1 product.
#[derive(Clone, Debug)]
struct Down {
    act: Affine,
    conv: Shared,
    c_out: usize,
}

impl Down {
    fn new(t: &Transition) -> Result<Self> {
        Ok(Self {
            act: Affine::from_bn(&t.norm, t.relu)?,
            conv: Shared::new(&t.conv.weight().flatten_from(1)?)?,
            c_out: t.conv.weight().dim(0)?,
        })
    }

    /// From a block's matrix (`ld` columns) to the next block's (`next_ld` columns).
    fn run(&self, src: &[f32], ld: usize, grid: Grid, next_ld: usize) -> Result<(Vec<f32>, Grid)> {
        let c = self.act.channels();
        let out_grid = Grid {
            n: grid.n,
            h: grid.h / 2,
            w: grid.w / 2,
        };
        let rows = out_grid.pixels();
        let tile = tile_rows(rows);
        let mut out = vec![0.0; rows * next_ld];
        self.conv.with(|w| {
            out.par_chunks_mut(tile * next_ld)
                .enumerate()
                .for_each(|(i, dst)| {
                    let first = i * tile;
                    let m = dst.len() / next_ld;
                    with_scratch(m * c, |pooled| {
                        pooled.fill(0.0);
                        for (r, acc) in pooled.chunks_exact_mut(c).enumerate() {
                            let (n, oy, ox) = out_grid.position(first + r);
                            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                                let row = grid.row(n, 2 * oy + dy, 2 * ox + dx);
                                self.act.accumulate(&src[row * ld..], acc);
                            }
                            acc.iter_mut().for_each(|v| *v *= 0.25);
                        }
                        let rhs = Rhs {
                            data: w,
                            row_stride: 1,
                            col_stride: c,
                        };
                        let shape = (m, self.c_out, c);
                        matmul(shape, dst, next_ld, pooled, c, rhs, Parallelism::None);
                    });
                })
        })?;
        Ok((out, out_grid))
    }
}

/// The final BatchNorm and ReLU gathered into the global average pool, then the classifier.
#[derive(Clone, Debug)]
struct Head {
    norm: Affine,
    weight: Shared,
    bias: Vec<f32>,
}

impl Head {
    fn run(&self, src: &[f32], ld: usize, grid: Grid) -> Result<Vec<f32>> {
        let c = self.norm.channels();
        let hw = grid.h * grid.w;
        let mut pooled = vec![0.0; grid.n * c];
        pooled.par_chunks_mut(c).enumerate().for_each(|(n, acc)| {
            for p in 0..hw {
                self.norm.accumulate(&src[(n * hw + p) * ld..], acc);
            }
            acc.iter_mut().for_each(|v| *v /= hw as f32);
        });
        let classes = self.bias.len();
        let mut logits = vec![0.0; grid.n * classes];
        self.weight.with(|w| {
            let rhs = Rhs {
                data: w,
                row_stride: 1,
                col_stride: c,
            };
            let shape = (grid.n, classes, c);
            matmul(
                shape,
                &mut logits,
                classes,
                &pooled,
                c,
                rhs,
                Parallelism::None,
            );
        })?;
        for row in logits.chunks_exact_mut(classes) {
            row.iter_mut().zip(&self.bias).for_each(|(v, b)| *v += b);
        }
        Ok(logits)
    }
}

/// A DenseNet compiled for the CPU: fused kernels over NHWC matrices, threaded with rayon.
///
/// Built from the plain network by [`FastNet::compile`]; [`crate::Model`] does this on the CPU
/// and uses it for [`crate::Model::logits`] and [`crate::Model::predict`] by default.
#[derive(Clone, Debug)]
pub struct FastNet {
    stem: Stem,
    blocks: Vec<Block>,
    downs: Vec<Down>,
    head: Head,
}

impl FastNet {
    /// Compiles `net`, whose weights must be on the CPU. The 1×1 kernels are shared with `net`,
    /// not copied.
    pub fn compile(net: &DenseNet) -> Result<Self> {
        let stem = Stem {
            conv: Conv::new(&net.conv1)?,
            norm0: net
                .norm0
                .as_ref()
                .map(|bn| Affine::from_bn(bn, true))
                .transpose()?,
            pool: net.stem_pool,
        };
        let mut c = stem.conv.c_out;
        let mut blocks = Vec::with_capacity(net.blocks.len());
        for (i, block) in net.blocks.iter().enumerate() {
            let layers = block.iter().map(Layer::new).collect::<Result<Vec<_>>>()?;
            let width = layers.first().map_or(0, |l| l.conv2.c_in);
            let c_out = c + layers.iter().map(|l| l.conv2.c_out).sum::<usize>();
            blocks.push(Block {
                layers,
                c_in: c,
                c_out,
                width,
            });
            c = match net.transitions.get(i) {
                Some(t) => t.conv.weight().dim(0)?,
                None => c_out,
            };
        }
        let (weight, bias) = (net.linear.weight(), net.linear.bias());
        let classes = weight.dim(0)?;
        Ok(Self {
            stem,
            blocks,
            downs: net
                .transitions
                .iter()
                .map(Down::new)
                .collect::<Result<_>>()?,
            head: Head {
                norm: Affine::from_bn(&net.norm, true)?,
                weight: Shared::new(weight)?,
                bias: match bias {
                    Some(b) => to_vec(b)?,
                    None => vec![0.0; classes],
                },
            },
        })
    }

    /// Logits, row after row, for the NHWC images `x`.
    fn run(&self, x: &[f32], grid: Grid) -> Result<Vec<f32>> {
        let first_ld = self.blocks.first().map_or(0, |b| b.c_out);
        let (mut buf, mut grid) = self.stem.run(x, grid, first_ld);
        for (i, block) in self.blocks.iter().enumerate() {
            block.run(&mut buf, grid)?;
            if let (Some(down), Some(next)) = (self.downs.get(i), self.blocks.get(i + 1)) {
                (buf, grid) = down.run(&buf, block.c_out, grid, next.c_out)?;
            }
        }
        let ld = self.blocks.last().map_or(0, |b| b.c_out);
        self.head.run(&buf, ld, grid)
    }

    /// Logits [N, classes] for a batch [N, 3, H, W] on the CPU, as a CPU F32 tensor.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = input.dims4()?;
        if c != self.stem.conv.c_in {
            candle_core::bail!(
                "fast path: expected {} channels, got {c}",
                self.stem.conv.c_in
            )
        }
        let nhwc = input
            .to_dtype(DType::F32)?
            .permute((0, 2, 3, 1))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let image = h * w * c;
        let classes = self.head.bias.len();
        let mut logits = Vec::with_capacity(n * classes);
        for images in nhwc.chunks(MAX_IMAGES_PER_PASS * image) {
            let grid = Grid {
                n: images.len() / image,
                h,
                w,
            };
            logits.extend(self.run(images, grid)?);
        }
        Tensor::from_vec(logits, (n, classes), &Device::Cpu)
    }
}
