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
//! - Every product has pixels as rows (`[pixels × c_in]·[c_in × c_out]`, in `gemm.rs`), the
//!   weights packed once at load, in tiles of rows, one tile per task, so that inputs stay in
//!   cache and memory stays small; a large batch runs in passes of 16 images for the same
//!   reason. The tasks of each step go to rayon's threads, which join a pass once as a team
//!   (`team.rs`).
//! - The dense layers' 3×3 convolutions go through Winograd's F(2×2, 3×3) (`winograd.rs`): 2.25×
//!   fewer multiplications. Other convolutions (the stem) gather patches (`im2col`).
//! - Every BatchNorm (+ReLU) becomes one per-channel scale-shift(-clamp) applied while the next
//!   product's input is gathered, or as a product's results leave the registers: nothing makes
//!   a separate pass over the activations.
//! - A transition average-pools before its 1×1 convolution (the two are linear and commute), so
//!   its product is four times smaller.
//!
//! The kernels are those of one instruction set ([`Isa`]: AVX-512, AVX2 or portable), chosen
//! once when the network is compiled: the best this CPU runs, capped by [`ISA_VARIABLE`]. Each
//! instruction set's code sits in its own module under `isa/`; the algorithms here are written
//! once over its vector type and call it through one dispatch.

mod gemm;
mod isa;
mod kernels;
mod team;
mod weights;
mod winograd;

pub use isa::{CpuFeatures, Isa, IsaChoice, Precision, ISA_VARIABLE};

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::Conv2d;
use rayon::prelude::*;
use std::cell::RefCell;

use crate::network::{Bottleneck, DenseNet, Transition};
use gemm::{product, Epilogue, Packed};
use isa::Kernels;
use kernels::{im2col, Affine, Grid, Mat, MatMut, Window};
use team::Team;
use weights::to_vec;
use winograd::{Tile, Winograd};

/// Most pixel rows one task gathers and multiplies at once: keeps a tile of gathered inputs
/// within a core's L2 cache.
const MAX_TILE_ROWS: usize = 240;

/// Most images one pass through the network takes: larger batches run in passes of this many,
/// which keeps a block's matrix small enough to stay in the caches (and memory bounded).
const MAX_IMAGES_PER_PASS: usize = 16;

/// Dense blocks, from the first, whose 3×3 convolutions use F(4×4, 3×3), where the feature
/// maps are largest; later ones use F(2×2, 3×3): their maps are small (a 4×4 tile wastes more
/// at the edges), and the F(4×4) kernel, four times the size of the original, would make the
/// weights in memory half as large again.
const F4_BLOCKS: usize = 2;

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

/// A row stride of at least `c` floats and an odd number of 64-byte cache lines: the rows a
/// product reads together then fall into different L1 cache sets (with a stride of 4 KiB they
/// would all compete for one).
fn padded(c: usize) -> usize {
    let lines = c.div_ceil(16);
    16 * (lines | 1)
}

/// Rows per tile for `rows` rows: see [`part_size`], with at most [`MAX_TILE_ROWS`] per tile.
fn tile_rows(rows: usize) -> usize {
    part_size(rows, MAX_TILE_ROWS)
}

/// The size of the parts `total` items are cut into for rayon's threads: at most `max` each,
/// as many parts as a multiple of the thread count, and equal parts where a few more of them
/// allow it, so that no thread is left with one part more than the others.
fn part_size(total: usize, max: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let base = total.div_ceil(max.max(1)).next_multiple_of(threads);
    let parts = (base..=2 * base)
        .step_by(threads)
        .find(|&p| total.is_multiple_of(p))
        .unwrap_or(base)
        .clamp(1, total.max(1));
    total.div_ceil(parts).max(1)
}

/// A PyTorch 1×1 kernel `[c_out, c_in, 1, 1]` (or linear weight `[c_out, c_in]`) as the
/// right-hand side [c_in × c_out] of a product, in `precision`.
fn pack_1x1(weight: &Tensor, precision: Precision) -> Result<Packed> {
    let (c_out, c_in) = weight.flatten_from(1)?.dims2()?;
    let w = to_vec(weight)?;
    Ok(Packed::new(precision, c_in, c_out, |ci, co| {
        w[co * c_in + ci]
    }))
}

/// A convolution as a product with gathered patches; the kernel as [k²·c_in × c_out].
#[derive(Clone, Debug)]
struct Conv {
    window: Window,
    c_in: usize,
    kernel: Packed,
}

impl Conv {
    fn new(conv: &Conv2d, precision: Precision) -> Result<Self> {
        let (c_out, c_in, k, k2) = conv.weight().dims4()?;
        let cfg = conv.config();
        if k != k2 || conv.bias().is_some() || cfg.groups != 1 || cfg.dilation != 1 {
            candle_core::bail!(
                "fast path: unsupported convolution {:?}",
                conv.weight().dims()
            );
        }
        let w = to_vec(conv.weight())?;
        // Rows in (ky, kx, c) order, as im2col gathers them.
        let kernel = Packed::new(precision, k * k * c_in, c_out, |r, co| {
            let (t, ci) = (r / c_in, r % c_in);
            w[(co * c_in + ci) * k * k + t]
        });
        Ok(Self {
            window: Window {
                kernel: k,
                stride: cfg.stride,
                pad: cfg.padding,
            },
            c_in,
            kernel,
        })
    }

    fn c_out(&self) -> usize {
        self.kernel.cols()
    }

    fn depth(&self) -> usize {
        self.window.kernel * self.window.kernel * self.c_in
    }

    /// Convolves `src` (over `grid`) into columns `0..c_out` of `dst`, one output pixel per
    /// row, then `epilogue`'s map.
    fn run(
        &self,
        kernels: Kernels,
        (src, grid): (Mat, Grid),
        dst: MatMut,
        epilogue: Option<Epilogue>,
    ) {
        let rows = self.window.output(grid).pixels();
        let tile = tile_rows(rows);
        let depth = self.depth();
        let dst_ld = dst.ld;
        let len = dst.data.len().min(rows * dst_ld);
        let tiles = dst.data[..len]
            .chunks_mut(tile * dst_ld)
            .enumerate()
            .collect();
        team::for_each(tiles, |(i, out): (usize, &mut [f32])| {
            let first = i * tile;
            let m = out.len().div_ceil(dst_ld);
            with_scratch(m * depth, |cols| {
                im2col(src, self.c_in, grid, self.window, first..first + m, cols);
                let cols = Mat {
                    data: cols,
                    ld: depth,
                };
                let out = MatMut {
                    data: out,
                    ld: dst_ld,
                };
                product(kernels, m, cols, &self.kernel, out, epilogue);
            });
        });
    }
}

/// A bottleneck's 3×3 convolution: by Winograd's method where it applies (stride 1,
/// padding 1), else by gathered patches.
#[derive(Clone, Debug)]
enum Conv3 {
    Winograd(Winograd),
    Direct(Conv),
}

impl Conv3 {
    fn new(conv: &Conv2d, tile: Tile, precision: Precision) -> Result<Self> {
        let (c_out, c_in, k, _) = conv.weight().dims4()?;
        let cfg = conv.config();
        let plain = conv.bias().is_none() && cfg.groups == 1 && cfg.dilation == 1;
        Ok(if plain && k == 3 && cfg.stride == 1 && cfg.padding == 1 {
            let w = to_vec(conv.weight())?;
            Self::Winograd(Winograd::new(tile, &w, (c_out, c_in), precision))
        } else {
            Self::Direct(Conv::new(conv, precision)?)
        })
    }

    fn c_in(&self) -> usize {
        match self {
            Self::Winograd(w) => w.c_in(),
            Self::Direct(c) => c.c_in,
        }
    }

    fn c_out(&self) -> usize {
        match self {
            Self::Winograd(w) => w.c_out(),
            Self::Direct(c) => c.c_out(),
        }
    }

    fn run(&self, kernels: Kernels, (src, grid): (Mat, Grid), dst: MatMut) {
        match self {
            Self::Winograd(w) => w.run(kernels, src, grid, dst),
            Self::Direct(c) => c.run(kernels, (src, grid), dst, None),
        }
    }
}

/// The stem: conv1, then (norm0, ReLU, applied as the product's epilogue) and (max pool)
/// where the network has them.
#[derive(Clone, Debug)]
struct Stem {
    conv: Conv,
    norm0: Option<Affine>,
    pool: bool,
}

impl Stem {
    /// The first block's matrix (`ld` columns) with the stem's output in its first columns.
    fn run(&self, kernels: Kernels, x: &[f32], grid: Grid, ld: usize) -> (Vec<f32>, Grid) {
        let conv_grid = self.conv.window.output(grid);
        let c = self.conv.c_out();
        let (mut out, out_ld) = if self.pool {
            (vec![0.0; conv_grid.pixels() * c], c)
        } else {
            (vec![0.0; conv_grid.pixels() * ld], ld)
        };
        let norm0 = self.norm0.as_ref().map(Affine::epilogue);
        let src = Mat { data: x, ld: 3 };
        let dst = MatMut {
            data: &mut out,
            ld: out_ld,
        };
        self.conv.run(kernels, (src, grid), dst, norm0);
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

/// One bottleneck layer: norm1 and ReLU applied while its input is gathered for the 1×1
/// product, norm2 and ReLU as that product's results leave the registers.
#[derive(Clone, Debug)]
struct Layer {
    norm1: Affine,
    conv1: Packed,
    norm2: Affine,
    conv2: Conv3,
}

impl Layer {
    fn new(b: &Bottleneck, tile: Tile, precision: Precision) -> Result<Self> {
        Ok(Self {
            norm1: Affine::from_bn(&b.norm1, true)?,
            conv1: pack_1x1(b.conv1.weight(), precision)?,
            norm2: Affine::from_bn(&b.norm2, true)?,
            conv2: Conv3::new(&b.conv2, tile, precision)?,
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
    fn run(&self, kernels: Kernels, buf: &mut [f32], grid: Grid) {
        let (ld, width, rows) = (self.c_out, self.width, grid.pixels());
        let tile = tile_rows(rows);
        let mut mid = vec![0.0; rows * width];
        let mut c = self.c_in;
        for layer in &self.layers {
            let input: &[f32] = buf;
            let tiles = mid.chunks_mut(tile * width).enumerate().collect();
            team::for_each(tiles, |(i, out): (usize, &mut [f32])| {
                let first = i * tile;
                let m = out.len() / width;
                let packed_ld = padded(c);
                with_scratch(m * packed_ld, |packed| {
                    for (r, dst) in packed.chunks_exact_mut(packed_ld).enumerate() {
                        layer.norm1.apply(kernels, &input[(first + r) * ld..], dst);
                    }
                    let packed = Mat {
                        data: packed,
                        ld: packed_ld,
                    };
                    let out = MatMut {
                        data: out,
                        ld: width,
                    };
                    let norm2 = Some(layer.norm2.epilogue());
                    product(kernels, m, packed, &layer.conv1, out, norm2);
                });
            });
            let mid = Mat {
                data: &mid,
                ld: width,
            };
            let dst = MatMut {
                data: &mut buf[c..],
                ld,
            };
            layer.conv2.run(kernels, (mid, grid), dst);
            c += layer.conv2.c_out();
        }
    }
}

/// A transition: BN (+ReLU) and the 2×2 average pool gathered together, then the 1×1 product.
#[derive(Clone, Debug)]
struct Down {
    act: Affine,
    conv: Packed,
}

impl Down {
    fn new(t: &Transition, precision: Precision) -> Result<Self> {
        Ok(Self {
            act: Affine::from_bn(&t.norm, t.relu)?,
            conv: pack_1x1(t.conv.weight(), precision)?,
        })
    }

    /// From a block's matrix (`ld` columns) to the next block's (`next_ld` columns).
    fn run(&self, kernels: Kernels, src: Mat, grid: Grid, next_ld: usize) -> (Vec<f32>, Grid) {
        let c = self.act.channels();
        let out_grid = Grid {
            n: grid.n,
            h: grid.h / 2,
            w: grid.w / 2,
        };
        let rows = out_grid.pixels();
        let tile = tile_rows(rows);
        let mut out = vec![0.0; rows * next_ld];
        let tiles = out.chunks_mut(tile * next_ld).enumerate().collect();
        team::for_each(tiles, |(i, dst): (usize, &mut [f32])| {
            let first = i * tile;
            let m = dst.len() / next_ld;
            with_scratch(m * c, |pooled| {
                pooled.fill(0.0);
                for (r, acc) in pooled.chunks_exact_mut(c).enumerate() {
                    let (n, oy, ox) = out_grid.position(first + r);
                    for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let row = grid.row(n, 2 * oy + dy, 2 * ox + dx);
                        self.act.accumulate(kernels, &src.data[row * src.ld..], acc);
                    }
                    acc.iter_mut().for_each(|v| *v *= 0.25);
                }
                let pooled = Mat {
                    data: pooled,
                    ld: c,
                };
                let dst = MatMut {
                    data: dst,
                    ld: next_ld,
                };
                product(kernels, m, pooled, &self.conv, dst, None);
            });
        });
        (out, out_grid)
    }
}

/// The final BatchNorm and ReLU gathered into the global average pool, then the classifier.
#[derive(Clone, Debug)]
struct Head {
    norm: Affine,
    weight: Packed,
    bias: Vec<f32>,
}

impl Head {
    fn run(&self, kernels: Kernels, src: Mat, grid: Grid) -> Vec<f32> {
        let c = self.norm.channels();
        let hw = grid.h * grid.w;
        let mut pooled = vec![0.0; grid.n * c];
        pooled.par_chunks_mut(c).enumerate().for_each(|(n, acc)| {
            for p in 0..hw {
                self.norm
                    .accumulate(kernels, &src.data[(n * hw + p) * src.ld..], acc);
            }
            acc.iter_mut().for_each(|v| *v /= hw as f32);
        });
        let classes = self.bias.len();
        let mut logits = vec![0.0; grid.n * classes];
        let ones = vec![1.0; classes];
        let bias = Epilogue {
            scale: &ones,
            shift: &self.bias,
            relu: false,
        };
        let pooled = Mat {
            data: &pooled,
            ld: c,
        };
        let dst = MatMut {
            data: &mut logits,
            ld: classes,
        };
        product(kernels, grid.n, pooled, &self.weight, dst, Some(bias));
        logits
    }
}

/// A DenseNet compiled for the CPU: fused kernels over NHWC matrices, threaded with rayon.
///
/// Built from the plain network by [`FastNet::compile`]; [`crate::Model`] does this on the CPU
/// and uses it for [`crate::Model::logits`] and [`crate::Model::predict`] by default.
#[derive(Clone, Debug)]
pub struct FastNet {
    kernels: Kernels,
    stem: Stem,
    blocks: Vec<Block>,
    downs: Vec<Down>,
    head: Head,
}

impl FastNet {
    /// Compiles `net`, whose weights must be on the CPU, for the instruction set `isa`, which
    /// this CPU must run (see [`Isa::is_supported`], [`Isa::from_env`]): every kernel is packed
    /// once here into the layout its product reads. `net` is consumed layer by layer, so that
    /// weights nothing else holds are freed as soon as they are packed.
    pub fn compile(net: DenseNet, isa: Isa) -> Result<Self> {
        Self::compile_in(net, isa, Precision::F32)
    }

    /// As [`FastNet::compile`], with the products in `precision`, which must be native to `isa`
    /// on this CPU ([`Precision::is_native`]). In bf16 the stem's, the dense layers' and the
    /// transitions' weights are packed as bf16 (half the memory); the classifier stays f32.
    pub fn compile_in(net: DenseNet, isa: Isa, precision: Precision) -> Result<Self> {
        let Some(kernels) = Kernels::with_precision(isa, precision) else {
            candle_core::bail!("fast path: this CPU does not run {isa} in {precision}");
        };
        let DenseNet {
            conv1,
            norm0,
            stem_pool,
            blocks: plain_blocks,
            transitions,
            norm,
            linear,
        } = net;
        let stem = Stem {
            conv: Conv::new(&conv1, precision)?,
            norm0: norm0
                .as_ref()
                .map(|bn| Affine::from_bn(bn, true))
                .transpose()?,
            pool: stem_pool,
        };
        let mut c = stem.conv.c_out();
        let mut blocks = Vec::with_capacity(plain_blocks.len());
        let mut downs = Vec::with_capacity(transitions.len());
        let mut transitions = transitions.into_iter();
        for (i, block) in plain_blocks.into_iter().enumerate() {
            let tile = if i < F4_BLOCKS { Tile::F4 } else { Tile::F2 };
            let layers = block
                .into_iter()
                .map(|layer| Layer::new(&layer, tile, precision))
                .collect::<Result<Vec<_>>>()?;
            let width = layers.first().map_or(0, |l| l.conv2.c_in());
            let c_out = c + layers.iter().map(|l| l.conv2.c_out()).sum::<usize>();
            blocks.push(Block {
                layers,
                c_in: c,
                c_out,
                width,
            });
            c = match transitions.next() {
                Some(t) => {
                    downs.push(Down::new(&t, precision)?);
                    t.conv.weight().dim(0)?
                }
                None => c_out,
            };
        }
        let (weight, bias) = (linear.weight(), linear.bias());
        let classes = weight.dim(0)?;
        Ok(Self {
            kernels,
            stem,
            blocks,
            downs,
            head: Head {
                norm: Affine::from_bn(&norm, true)?,
                weight: pack_1x1(weight, Precision::F32)?,
                bias: match bias {
                    Some(b) => to_vec(b)?,
                    None => vec![0.0; classes],
                },
            },
        })
    }

    /// The instruction set the kernels were compiled for.
    pub fn isa(&self) -> Isa {
        self.kernels.isa()
    }

    /// The precision the products compute in.
    pub fn precision(&self) -> Precision {
        self.kernels.precision()
    }

    /// Logits, row after row, for the NHWC images `x`.
    fn run(&self, x: &[f32], grid: Grid) -> Vec<f32> {
        let k = self.kernels;
        let first_ld = self.blocks.first().map_or(0, |b| b.c_out);
        let (mut buf, mut grid) = self.stem.run(k, x, grid, first_ld);
        for (i, block) in self.blocks.iter().enumerate() {
            block.run(k, &mut buf, grid);
            if let (Some(down), Some(next)) = (self.downs.get(i), self.blocks.get(i + 1)) {
                let src = Mat {
                    data: &buf,
                    ld: block.c_out,
                };
                (buf, grid) = down.run(k, src, grid, next.c_out);
            }
        }
        let ld = self.blocks.last().map_or(0, |b| b.c_out);
        self.head.run(k, Mat { data: &buf, ld }, grid)
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
        // The pool's threads join the pass once, as a team (see `team`), instead of being
        // woken for every step.
        let team = Team::default();
        rayon::scope(|s| {
            for _ in 1..rayon::current_num_threads() {
                s.spawn(|_| team.help());
            }
            team.lead(|| {
                for images in nhwc.chunks(MAX_IMAGES_PER_PASS * image) {
                    let grid = Grid {
                        n: images.len() / image,
                        h,
                        w,
                    };
                    logits.extend(self.run(images, grid));
                }
            });
        });
        Tensor::from_vec(logits, (n, classes), &Device::Cpu)
    }
}
