//! The network's parts as the fast path computes them, named as in `network.rs`: the stem, the
//! dense layers of a dense block, the transitions and the head. Each is built once from its plain
//! counterpart (weights packed, BatchNorms folded) and runs on NHWC matrices through the drivers
//! of `ops/`.

use candle_core::{Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, Linear};

use crate::device::host_values;
use crate::fast::isa::Kernels;
use crate::fast::mat::{Affine, Epilogue, Grid, Mat, MatMut, Window};
use crate::fast::memory::{
    part_size, row_tiles, split_disjoint, tile_rows, with_scratch, Buffers, MAX_TILE_ROWS,
};
use crate::fast::ops::direct::{Bordered, PixelRows, TapConv};
use crate::fast::ops::gemm::{product, product_activated, Packed};
use crate::fast::ops::im2col::im2col;
use crate::fast::ops::winograd::Winograd;
use crate::fast::team;
use crate::fast::ukernel::reduced::{level_step, signed_level_step, Format};
use crate::fast::ukernel::winograd::Tile;
use crate::network;

thread_local! {
    /// The bordered input of a dense block's int8 3×3 convolutions, reused from one run of a
    /// block to the next on this thread.
    static BORDERED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A PyTorch 1×1 kernel `[c_out, c_in, 1, 1]` (or linear weight `[c_out, c_in]`) as the
/// right-hand side [c_in × c_out] of a product, in `format`; with `steps`, each input channel's
/// row multiplied by its step (an int8 product's input in levels, see [`levels_from_bn`]).
fn pack_1x1(weight: &Tensor, format: Format, steps: Option<&[f32]>) -> Result<Packed> {
    let (c_out, c_in) = weight.flatten_from(1)?.dims2()?;
    let w = host_values(weight)?;
    Ok(Packed::new(format, c_in, c_out, |ci, co| {
        let v = w[co * c_in + ci];
        steps.map_or(v, |s| v * s[ci])
    }))
}

/// A 1×1 convolution after a BatchNorm and ReLU: the map applied to its input as it is
/// gathered, and its weights. In int8 the map gives the input's static uint8 levels
/// ([`levels_from_bn`]) and the weights carry their steps; otherwise the map is the
/// BatchNorm's and ReLU's.
fn activated_1x1(bn: &BatchNorm, weight: &Tensor, format: Format) -> Result<(Affine, Packed)> {
    Ok(match format {
        Format::Int8 { inputs, .. } => {
            let (levels, steps) = levels_from_bn(bn, inputs)?;
            (levels, pack_1x1(weight, format, Some(&steps))?)
        }
        _ => (affine_from_bn(bn, true)?, pack_1x1(weight, format, None)?),
    })
}

/// A convolution as a product with gathered patches; the kernel as [k²·c_in × c_out].
#[derive(Clone, Debug)]
struct PatchConv {
    window: Window,
    c_in: usize,
    kernel: Packed,
}

impl PatchConv {
    fn new(conv: &Conv2d, format: Format) -> Result<Self> {
        let (c_out, c_in, k, k2) = conv.weight().dims4()?;
        let cfg = conv.config();
        if k != k2 || conv.bias().is_some() || cfg.groups != 1 || cfg.dilation != 1 {
            candle_core::bail!(
                "fast path: unsupported convolution {:?}",
                conv.weight().dims()
            );
        }
        let w = host_values(conv.weight())?;
        // Rows in (ky, kx, c) order, as im2col gathers them.
        let kernel = Packed::new(format, k * k * c_in, c_out, |r, co| {
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
        let depth = self.depth();
        team::for_each(
            row_tiles(dst, rows),
            |(first, m, out): (usize, usize, MatMut)| {
                with_scratch(m * depth, |cols| {
                    im2col(src, self.c_in, grid, self.window, first..first + m, cols);
                    let cols = Mat {
                        data: cols,
                        ld: depth,
                    };
                    product(kernels, m, cols, &self.kernel, out, epilogue);
                });
            },
        );
    }
}

/// A dense layer's 3×3 convolution: where it is stride 1, padding 1, in int8 tap by tap for an
/// int8 network whose kernels have it (`Kernels::int8_taps`; its input in levels, see
/// [`DenseLayer::new`]), else by Winograd's method; otherwise by gathered patches.
#[derive(Clone, Debug)]
enum Conv3 {
    Taps(TapConv),
    Winograd(Winograd),
    Patches(PatchConv),
}

/// Whether `conv` is a plain 3×3 convolution of stride 1 and padding 1: the ones that run tap
/// by tap or by Winograd's method.
fn is_plain_3x3(conv: &Conv2d) -> Result<bool> {
    let (_, _, k, k2) = conv.weight().dims4()?;
    let cfg = conv.config();
    Ok(conv.bias().is_none()
        && cfg.groups == 1
        && cfg.dilation == 1
        && (k, k2) == (3, 3)
        && cfg.stride == 1
        && cfg.padding == 1)
}

impl Conv3 {
    /// By Winograd's method or by patches, in the kernels' precision (its input comes after a
    /// ReLU), else in their float precision for an int8 network (its 3×3 convolutions are
    /// faster by Winograd's method in f32 where the kernels have no int8 taps).
    fn float(conv: &Conv2d, tile: Tile, kernels: Kernels) -> Result<Self> {
        let (c_out, c_in, _, _) = conv.weight().dims4()?;
        let float = kernels.format(kernels.float_precision());
        Ok(if is_plain_3x3(conv)? {
            let w = host_values(conv.weight())?;
            let format = match kernels.format(kernels.precision()) {
                Format::Int8 { .. } => float,
                format => format,
            };
            Self::Winograd(Winograd::new(tile, &w, (c_out, c_in), format))
        } else {
            Self::Patches(PatchConv::new(conv, float)?)
        })
    }

    fn c_in(&self) -> usize {
        match self {
            Self::Taps(d) => d.c_in(),
            Self::Winograd(w) => w.c_in(),
            Self::Patches(c) => c.c_in,
        }
    }

    fn c_out(&self) -> usize {
        match self {
            Self::Taps(d) => d.c_out(),
            Self::Winograd(w) => w.c_out(),
            Self::Patches(c) => c.c_out(),
        }
    }

    /// A float convolution of `src` (over `grid`) into `dst`; the taps read their input in
    /// levels instead ([`TapConv::run`]).
    fn run(&self, kernels: Kernels, (src, grid): (Mat, Grid), dst: MatMut) {
        match self {
            Self::Taps(_) => unreachable!("int8 taps read a bordered input of levels"),
            Self::Winograd(w) => w.run(kernels, src, grid, dst),
            Self::Patches(c) => c.run(kernels, (src, grid), dst, None),
        }
    }
}

/// The stem's max pool: 3×3, stride 2, padding 1 (padded taps skipped, as PyTorch's -∞ padding).
const POOL: Window = Window {
    kernel: 3,
    stride: 2,
    pad: 1,
};

/// The stem: conv1, then (norm0, ReLU, applied as the product's epilogue) and (max pool)
/// where the network has them.
#[derive(Clone, Debug)]
pub(crate) struct Stem {
    conv: PatchConv,
    norm0: Option<Affine>,
    pool: bool,
}

impl Stem {
    /// In `format` (its input, the image, is not after a ReLU: never int8).
    pub(crate) fn new(
        conv1: &Conv2d,
        norm0: Option<&BatchNorm>,
        pool: bool,
        format: Format,
    ) -> Result<Self> {
        Ok(Self {
            conv: PatchConv::new(conv1, format)?,
            norm0: norm0.map(|bn| affine_from_bn(bn, true)).transpose()?,
            pool,
        })
    }

    /// Channels of the input (the image's).
    pub(crate) fn c_in(&self) -> usize {
        self.conv.c_in
    }

    /// Channels of the output (the first dense block's input).
    pub(crate) fn c_out(&self) -> usize {
        self.conv.c_out()
    }

    /// The grid of the stem's output for inputs over `grid`.
    pub(crate) fn output(&self, grid: Grid) -> Grid {
        let conv = self.conv.window.output(grid);
        if self.pool {
            POOL.output(conv)
        } else {
            conv
        }
    }

    /// Writes the stem's output for the NHWC images `x` (over `grid`) into the first columns of
    /// `dst`, one pixel per row.
    pub(crate) fn run(&self, kernels: Kernels, x: &[f32], grid: Grid, dst: MatMut) {
        let src = Mat { data: x, ld: 3 };
        let norm0 = self.norm0.as_ref().map(Affine::epilogue);
        if !self.pool {
            return self.conv.run(kernels, (src, grid), dst, norm0);
        }
        // Each task convolves the rows a band of pooled rows needs (one more at its top, shared
        // with the band above) and pools them in its scratch, so the convolution's output,
        // four times the pooled one, never goes to memory.
        let conv = self.conv.window.output(grid);
        let pooled = POOL.output(conv);
        let band = part_size(pooled.h, (MAX_TILE_ROWS * 8 / (2 * conv.w)).max(1));
        let (c, depth, ld) = (self.conv.c_out(), self.conv.depth(), dst.ld);
        let bands = (0..pooled.n).flat_map(|n| {
            (0..pooled.h).step_by(band).map(move |y0| {
                let y1 = (y0 + band).min(pooled.h);
                ((n, y0..y1), (y1 - y0) * pooled.w * ld)
            })
        });
        team::for_each(
            split_disjoint(dst.data, bands),
            |((n, rows), out): ((usize, std::ops::Range<usize>), &mut [f32])| {
                // Convolution rows 2y − 1 ..= 2y + 1 for each pooled row y, where they exist.
                let (top, bottom) = (
                    (2 * rows.start).saturating_sub(1),
                    (2 * rows.end).min(conv.h),
                );
                let first = conv.row(n, top, 0);
                let m = (bottom - top) * conv.w;
                with_scratch(m * (depth + c), |scratch| {
                    let (cols, maps) = scratch.split_at_mut(m * depth);
                    im2col(src, 3, grid, self.conv.window, first..first + m, cols);
                    let cols = Mat {
                        data: cols,
                        ld: depth,
                    };
                    let maps_out = MatMut { data: maps, ld: c };
                    product(kernels, m, cols, &self.conv.kernel, maps_out, norm0);
                    for (r, y) in rows.clone().enumerate() {
                        for x in 0..pooled.w {
                            let dst = &mut out[(r * pooled.w + x) * ld..][..c];
                            dst.fill(f32::NEG_INFINITY);
                            for iy in (2 * y).saturating_sub(1)..(2 * y + 2).min(conv.h) {
                                for ix in (2 * x).saturating_sub(1)..(2 * x + 2).min(conv.w) {
                                    let src = &maps[((iy - top) * conv.w + ix) * c..][..c];
                                    for (d, &v) in dst.iter_mut().zip(src) {
                                        *d = d.max(v);
                                    }
                                }
                            }
                        }
                    }
                });
            },
        );
    }
}

/// A dense layer (a bottleneck): norm1 and ReLU applied while its input is gathered for the 1×1
/// product (in int8, into uint8 levels), norm2 and ReLU as that product's results leave the
/// registers (into the levels of the 3×3 convolution's input where it runs tap by tap).
#[derive(Clone, Debug)]
struct DenseLayer {
    norm1: Affine,
    conv1: Packed,
    norm2: Affine,
    conv2: Conv3,
}

impl DenseLayer {
    /// Both products in the kernels' precision (their inputs come after a ReLU: levels from 0).
    fn new(b: &network::DenseLayer, tile: Tile, kernels: Kernels) -> Result<Self> {
        let format = kernels.format(kernels.precision());
        let (norm1, conv1) = activated_1x1(&b.norm1, b.conv1.weight(), format)?;
        let (norm2, conv2) = match format {
            Format::Int8 { levels, inputs } if kernels.int8_taps() && is_plain_3x3(&b.conv2)? => {
                // The 1×1 product's epilogue gives the 3×3's input levels; its weights carry
                // their steps.
                let (c_out, c_in, _, _) = b.conv2.weight().dims4()?;
                let (map, steps) = levels_from_bn(&b.norm2, inputs)?;
                let w = host_values(b.conv2.weight())?;
                let taps = TapConv::new(&w, (c_out, c_in), &steps, levels);
                (map, Conv3::Taps(taps))
            }
            _ => (
                affine_from_bn(&b.norm2, true)?,
                Conv3::float(&b.conv2, tile, kernels)?,
            ),
        };
        Ok(Self {
            norm1,
            conv1,
            norm2,
            conv2,
        })
    }

    /// The 1×1 product of rows `first..first + m` of the block's matrix `block` (rows `ld`
    /// apart) through norm1, norm2 as its epilogue, into `out` (`m` rows of the bottleneck's
    /// width): in int8 its results are the 3×3's input levels.
    fn bottleneck(
        &self,
        kernels: Kernels,
        (block, ld): (&[f32], usize),
        (first, m): (usize, usize),
        out: &mut [f32],
    ) {
        let lhs = Mat {
            data: &block[first * ld..],
            ld,
        };
        let out = MatMut {
            data: out,
            ld: self.conv1.cols(),
        };
        let norm2 = Some(self.norm2.epilogue());
        product_activated(kernels, m, (lhs, &self.norm1), &self.conv1, out, norm2);
    }
}

/// A dense block, run in place on its output matrix.
#[derive(Clone, Debug)]
pub(crate) struct DenseBlock {
    layers: Vec<DenseLayer>,
    /// Channels of the block's input: the first columns of its matrix.
    pub(crate) c_in: usize,
    /// Channels of its output: the width of its matrix.
    pub(crate) c_out: usize,
    /// Channels between a layer's two convolutions (the bottleneck's width).
    pub(crate) width: usize,
}

impl DenseBlock {
    /// From the plain layers of a block whose input has `c_in` channels, its 3×3 convolutions
    /// by Winograd's method with `tile` where they do not run in int8.
    pub(crate) fn new(
        layers: Vec<network::DenseLayer>,
        c_in: usize,
        tile: Tile,
        kernels: Kernels,
    ) -> Result<Self> {
        // Each plain layer is dropped once packed.
        let layers = layers
            .into_iter()
            .map(|layer| DenseLayer::new(&layer, tile, kernels))
            .collect::<Result<Vec<_>>>()?;
        let width = layers.first().map_or(0, |l| l.conv2.c_in());
        let c_out = c_in + layers.iter().map(|l| l.conv2.c_out()).sum::<usize>();
        Ok(Self {
            layers,
            c_in,
            c_out,
            width,
        })
    }

    /// Runs the layers on `buf` ([pixels × c_out], the first `c_in` columns filled).
    pub(crate) fn run(&self, kernels: Kernels, buf: &mut [f32], grid: Grid, buffers: &Buffers) {
        match self.layers.first().map(|l| &l.conv2) {
            Some(Conv3::Taps(taps)) => self.run_levels(kernels, buf, grid, taps.depth()),
            _ => self.run_float(kernels, buf, grid, buffers),
        }
    }

    /// The layers in int8 with their 3×3 convolutions tap by tap: each 1×1 product's results,
    /// through norm2 into levels, go from a tile of scratch straight into the bordered input
    /// of the 3×3 convolution (`depth` bytes per position), whose border stays zero.
    fn run_levels(&self, kernels: Kernels, buf: &mut [f32], grid: Grid, depth: usize) {
        let (ld, width) = (self.c_out, self.width);
        let tile = tile_rows(grid.pixels());
        BORDERED.with(|room| {
            let mut room = room.borrow_mut();
            let mut input = Bordered::zeroed(&mut room, grid, depth);
            let mut c = self.c_in;
            for layer in &self.layers {
                let Conv3::Taps(taps) = &layer.conv2 else {
                    unreachable!("a block's layers all run tap by tap or none does");
                };
                let src: &[f32] = buf;
                team::for_each(
                    input.by_tiles(tile),
                    |((first, m), mut part): ((usize, usize), PixelRows)| {
                        with_scratch(m * width, |levels| {
                            layer.bottleneck(kernels, (src, ld), (first, m), levels);
                            for (r, row) in levels.chunks_exact(width).enumerate() {
                                kernels.to_levels(row, &mut part.pixel(first + r)[..width]);
                            }
                        });
                    },
                );
                let dst = MatMut {
                    data: &mut buf[c..],
                    ld,
                };
                taps.run(kernels, &input, dst);
                c += taps.c_out();
            }
        });
    }

    /// The layers in f32 or bf16, or in int8 with Winograd's 3×3 convolutions: each 1×1
    /// product into the bottleneck's matrix, then the 3×3 convolution from it.
    fn run_float(&self, kernels: Kernels, buf: &mut [f32], grid: Grid, buffers: &Buffers) {
        let (ld, width, rows) = (self.c_out, self.width, grid.pixels());
        let tile = tile_rows(rows);
        let mut mid = buffers.take(rows * width);
        let mut c = self.c_in;
        for layer in &self.layers {
            let input: &[f32] = buf;
            let tiles = mid.chunks_mut(tile * width).enumerate().collect();
            team::for_each(tiles, |(i, out): (usize, &mut [f32])| {
                let rows = (i * tile, out.len() / width);
                layer.bottleneck(kernels, (input, ld), rows, out);
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
        buffers.give(mid);
    }
}

/// A transition: BN (+ReLU) and the 2×2 average pool gathered together, then the 1×1 product
/// (in int8, of the pooled values' uint8 levels).
#[derive(Clone, Debug)]
pub(crate) struct Transition {
    act: Affine,
    /// In int8: the map from the pooled values to their levels (each channel's inverse step,
    /// and its zero point where there is no ReLU), and the product's epilogue that takes the
    /// zero points off (see [`Packed::int8_offsets`]).
    levels: Option<(Affine, Option<Affine>)>,
    conv: Packed,
}

impl Transition {
    /// The product in the kernels' precision: in int8 the pooled values' levels are those of
    /// the BatchNorm's output (the average of four values of a channel lies in its range as
    /// they do), from 0 after a ReLU, else around a zero point.
    pub(crate) fn new(t: &network::Transition, kernels: Kernels) -> Result<Self> {
        let format = kernels.format(kernels.precision());
        let weight = t.conv.weight();
        let channels = fold_bn(&t.norm)?;
        let act = affine_of(&channels, t.relu);
        let Format::Int8 { inputs, .. } = format else {
            return Ok(Self {
                act,
                levels: None,
                conv: pack_1x1(weight, format, None)?,
            });
        };
        let (steps, zeros) = level_steps(&channels, t.relu, inputs);
        let conv = pack_1x1(weight, format, Some(&steps))?;
        let inverse = steps.iter().map(|s| 1.0 / s).collect();
        let offsets = (!t.relu).then(|| {
            let shift = conv.int8_offsets(&zeros).iter().map(|o| -o).collect();
            Affine::new(vec![1.0; conv.cols()], shift, false)
        });
        Ok(Self {
            act,
            levels: Some((Affine::new(inverse, zeros, true), offsets)),
            conv,
        })
    }

    /// Channels of the output.
    pub(crate) fn c_out(&self) -> usize {
        self.conv.cols()
    }

    /// The grid of the transition's output for inputs over `grid`.
    pub(crate) fn output(grid: Grid) -> Grid {
        Grid {
            n: grid.n,
            h: grid.h / 2,
            w: grid.w / 2,
        }
    }

    /// From a block's matrix (over `grid`) into the first columns of the next block's, `dst`.
    pub(crate) fn run(&self, kernels: Kernels, src: Mat, grid: Grid, dst: MatMut) {
        let c = self.act.channels();
        let out_grid = Self::output(grid);
        let tiles = row_tiles(dst, out_grid.pixels());
        team::for_each(tiles, |(first, m, dst): (usize, usize, MatMut)| {
            with_scratch(m * c, |pooled| {
                pooled.fill(0.0);
                for (r, acc) in pooled.chunks_exact_mut(c).enumerate() {
                    let (n, oy, ox) = out_grid.position(first + r);
                    for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let row = grid.row(n, 2 * oy + dy, 2 * ox + dx);
                        kernels.affine(&self.act, &src.data[row * src.ld..], acc, |d, v| *d += v);
                    }
                    acc.iter_mut().for_each(|v| *v *= 0.25);
                }
                let pooled = Mat {
                    data: pooled,
                    ld: c,
                };
                match &self.levels {
                    Some((levels, offsets)) => {
                        let offsets = offsets.as_ref().map(Affine::epilogue);
                        product_activated(kernels, m, (pooled, levels), &self.conv, dst, offsets)
                    }
                    None => product(kernels, m, pooled, &self.conv, dst, None),
                }
            });
        });
    }
}

/// The final BatchNorm and ReLU gathered into the global average pool, then the classifier.
#[derive(Clone, Debug)]
pub(crate) struct Head {
    norm: Affine,
    weight: Packed,
    bias: Vec<f32>,
}

impl Head {
    /// From the final BatchNorm and the classifier (in f32: it is small, and the logits are
    /// what users compare).
    pub(crate) fn new(norm: &BatchNorm, linear: &Linear) -> Result<Self> {
        let (weight, bias) = (linear.weight(), linear.bias());
        let classes = weight.dim(0)?;
        Ok(Self {
            norm: affine_from_bn(norm, true)?,
            weight: pack_1x1(weight, Format::F32, None)?,
            bias: match bias {
                Some(b) => host_values(b)?,
                None => vec![0.0; classes],
            },
        })
    }

    /// Classes: the logits per image.
    pub(crate) fn classes(&self) -> usize {
        self.bias.len()
    }

    pub(crate) fn run(&self, kernels: Kernels, src: Mat, grid: Grid) -> Vec<f32> {
        let c = self.norm.channels();
        let hw = grid.h * grid.w;
        let mut pooled = vec![0.0; grid.n * c];
        team::for_each(
            pooled.chunks_mut(c).enumerate().collect(),
            |(n, acc): (usize, &mut [f32])| {
                for p in 0..hw {
                    let pixel = &src.data[(n * hw + p) * src.ld..];
                    kernels.affine(&self.norm, pixel, acc, |d, v| *d += v);
                }
                acc.iter_mut().for_each(|v| *v /= hw as f32);
            },
        );
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

    /// Each pixel's evidence for every class, `[pixels × classes]`: its final features (the
    /// BatchNorm and ReLU applied) times the classifier's weights, without the bias. A logit is
    /// the mean of its class's column over the image's pixels plus the bias; the class
    /// activation maps are these columns (`crate::explain`).
    pub(crate) fn class_evidence(&self, kernels: Kernels, src: Mat, grid: Grid) -> Vec<f32> {
        let classes = self.classes();
        let mut evidence = vec![0.0; grid.pixels() * classes];
        let dst = MatMut {
            data: &mut evidence,
            ld: classes,
        };
        product_activated(
            kernels,
            grid.pixels(),
            (src, &self.norm),
            &self.weight,
            dst,
            None,
        );
        evidence
    }
}

/// One channel of an eval-mode BatchNorm: `x·scale + shift`, computed in f64 so that folding
/// adds no rounding beyond the final f32 one; and its weight γ and bias β.
struct FoldedChannel {
    scale: f64,
    shift: f64,
    gamma: f32,
    beta: f32,
}

fn fold_bn(bn: &BatchNorm) -> Result<Vec<FoldedChannel>> {
    let mean = host_values(bn.running_mean())?;
    let var = host_values(bn.running_var())?;
    let (weight, bias) = match bn.weight_and_bias() {
        Some((w, b)) => (host_values(w)?, host_values(b)?),
        None => (vec![1.0; mean.len()], vec![0.0; mean.len()]),
    };
    let eps = bn.eps();
    Ok((0..mean.len())
        .map(|i| {
            let scale = f64::from(weight[i]) / (f64::from(var[i]) + eps).sqrt();
            FoldedChannel {
                scale,
                shift: f64::from(bias[i]) - f64::from(mean[i]) * scale,
                gamma: weight[i],
                beta: bias[i],
            }
        })
        .collect())
}

/// An eval-mode BatchNorm (then the ReLU if `relu`) as a per-channel map.
fn affine_from_bn(bn: &BatchNorm, relu: bool) -> Result<Affine> {
    Ok(affine_of(&fold_bn(bn)?, relu))
}

/// The folded channels of a BatchNorm (then the ReLU if `relu`) as a per-channel map.
fn affine_of(channels: &[FoldedChannel], relu: bool) -> Affine {
    let (scale, shift) = channels
        .iter()
        .map(|c| (c.scale as f32, c.shift as f32))
        .unzip();
    Affine::new(scale, shift, relu)
}

/// Each channel's step and zero point for the static uint8 levels (`inputs` of them) of a
/// BatchNorm's output: from 0 after its ReLU ([`level_step`]), else around a whole zero point
/// ([`signed_level_step`]).
fn level_steps(channels: &[FoldedChannel], relu: bool, inputs: u8) -> (Vec<f32>, Vec<f32>) {
    channels
        .iter()
        .map(|c| match relu {
            true => (level_step(c.gamma, c.beta, inputs), 0.0),
            false => signed_level_step(c.gamma, c.beta, inputs),
        })
        .unzip()
}

/// The static uint8 levels (`inputs` of them) of a BatchNorm's output after its ReLU: the map
/// from the BatchNorm's input to each channel's level (the BatchNorm divided by the channel's
/// step, [`level_step`], from its weight and bias), and the steps. No data is needed: the
/// running statistics in the BatchNorm say where its input lies.
fn levels_from_bn(bn: &BatchNorm, inputs: u8) -> Result<(Affine, Vec<f32>)> {
    let channels = fold_bn(bn)?;
    let (steps, _) = level_steps(&channels, true, inputs);
    let (scale, shift) = channels
        .iter()
        .zip(&steps)
        .map(|(c, &step)| {
            let step = f64::from(step);
            ((c.scale / step) as f32, (c.shift / step) as f32)
        })
        .unzip();
    Ok((Affine::new(scale, shift, true), steps))
}
