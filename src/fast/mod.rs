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
//!   reason, and within a pass each dense block runs on groups of images whose matrices fit
//!   the threads' L2 caches (see `FastNet::run`), so that every input size gets cache-sized
//!   steps. The tasks of each step go to rayon's threads, which join a pass once as a team
//!   (`team.rs`).
//! - The dense layers' 3×3 convolutions go through Winograd's F(2×2, 3×3) (`winograd.rs`): 2.25×
//!   fewer multiplications; in int8 ([`Precision::Int8`]) they run tap by tap over a padded uint8
//!   copy of their input instead (`direct.rs`). Other convolutions (the stem) gather patches (`im2col`); the
//!   ImageNet stem's max pool is taken in the same task as its convolution, band by band.
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

mod direct;
mod gemm;
mod isa;
mod kernels;
mod team;
mod weights;
mod winograd;

pub use isa::{amx_allowed, CpuFeatures, Isa, IsaChoice, Precision, AMX_VARIABLE, ISA_VARIABLE};

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::Conv2d;
use std::cell::RefCell;
use std::sync::Mutex;

use crate::network::{Bottleneck, DenseNet, Transition};
use direct::Direct3;
use gemm::{product, product_activated, Epilogue, Packed};
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

/// Bytes of a block's matrices (its output and its bottlenecks') that one group of images fills
/// at most, unless a single image needs more (see [`group_size`]): twice the L2 caches of the
/// threads together. Every layer reads the whole matrix again; past this size those reads come
/// from the shared L3 cache or memory, and below it the layers' weights are read once per group
/// for fewer images (on 2 threads with 2 MiB of L2 each, torchvision's densenet121 at 224×224,
/// batch 16: 8 MiB ran 48 img/s, 2 MiB 40, 20 MiB 47, 80 MiB (each block's pass whole) 36–40).
fn group_bytes() -> usize {
    2 * l2_bytes() * rayon::current_num_threads().max(1)
}

/// The L2 cache of one core in bytes, as Linux describes CPU 0's caches (1 MiB where it does
/// not).
fn l2_bytes() -> usize {
    static L2: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *L2.get_or_init(|| {
        let read = |index: usize, file: &str| {
            let path = format!("/sys/devices/system/cpu/cpu0/cache/index{index}/{file}");
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
        };
        (0..8)
            .find(|&i| {
                read(i, "level").as_deref() == Some("2")
                    && read(i, "type").as_deref() != Some("Instruction")
            })
            .and_then(|i| read(i, "size"))
            .and_then(|size| parse_cache_size(&size))
            .unwrap_or(1 << 20)
    })
}

/// A cache size as sysfs writes it (`2048K`, `1M`, `512`) in bytes.
fn parse_cache_size(size: &str) -> Option<usize> {
    let (digits, unit) = match size.as_bytes().last()? {
        b'K' => (&size[..size.len() - 1], 1 << 10),
        b'M' => (&size[..size.len() - 1], 1 << 20),
        b'G' => (&size[..size.len() - 1], 1 << 30),
        _ => (size, 1),
    };
    digits.parse::<usize>().ok().map(|n| n * unit)
}

/// Images per group of a block whose matrices take `per_image` bytes per image, in a pass of
/// `n` images, for groups of at most `budget` bytes.
fn group_size(budget: usize, per_image: usize, n: usize) -> usize {
    (budget / per_image.max(1)).clamp(1, n.max(1))
}

/// Dense blocks, from the first, whose 3×3 convolutions use F(4×4, 3×3), where the feature
/// maps are largest; later ones use F(2×2, 3×3): their maps are small (a 4×4 tile wastes more
/// at the edges), and the F(4×4) kernel, four times the size of the original, would make the
/// weights in memory half as large again.
const F4_BLOCKS: usize = 2;

thread_local! {
    /// Per-thread room for gathered patches and activated inputs, reused across tiles.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The matrices of finished passes, kept for the next ones: a pass takes its large matrices from
/// here rather than from fresh allocations, which the system zeroes page by page as they are
/// first written (a few percent of a pass at 224×224). A clone starts with none.
#[derive(Debug, Default)]
struct Buffers(Mutex<Vec<Vec<f32>>>);

impl Clone for Buffers {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl Buffers {
    /// `len` floats (contents unspecified): the smallest kept buffer that holds them, else the
    /// largest one grown, else a new one.
    fn take(&self, len: usize) -> Vec<f32> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let fits = (0..kept.len())
            .filter(|&i| kept[i].capacity() >= len)
            .min_by_key(|&i| kept[i].capacity());
        let pick = fits.or_else(|| (0..kept.len()).max_by_key(|&i| kept[i].capacity()));
        let mut buffer = pick.map_or_else(Vec::new, |i| kept.swap_remove(i));
        drop(kept);
        buffer.resize(len, 0.0);
        buffer
    }

    /// Keeps `buffer` for a later [`Buffers::take`].
    fn give(&self, buffer: Vec<f32>) {
        if buffer.capacity() > 0 {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(buffer);
        }
    }
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

/// The first `rows` rows of `dst` cut into tiles of [`tile_rows`] rows: each tile's first row,
/// its rows and its part of `dst`.
fn row_tiles(dst: MatMut, rows: usize) -> Vec<(usize, usize, MatMut)> {
    let (tile, ld) = (tile_rows(rows), dst.ld);
    let len = dst.data.len().min(rows * ld);
    dst.data[..len]
        .chunks_mut(tile * ld)
        .enumerate()
        .map(|(i, data)| (i * tile, data.len().div_ceil(ld), MatMut { data, ld }))
        .collect()
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

/// A bottleneck's 3×3 convolution: where it is stride 1, padding 1, in int8 tap by tap for an
/// int8 network, else by Winograd's method; otherwise by gathered patches.
#[derive(Clone, Debug)]
enum Conv3 {
    Int8(Direct3),
    Winograd(Winograd),
    Direct(Conv),
}

impl Conv3 {
    /// In `precision` (whose input comes after a ReLU), else in `float` for a convolution int8
    /// has no kernel for.
    fn new(conv: &Conv2d, tile: Tile, (precision, float): (Precision, Precision)) -> Result<Self> {
        let (c_out, c_in, k, _) = conv.weight().dims4()?;
        let cfg = conv.config();
        let plain = conv.bias().is_none() && cfg.groups == 1 && cfg.dilation == 1;
        Ok(if plain && k == 3 && cfg.stride == 1 && cfg.padding == 1 {
            let w = to_vec(conv.weight())?;
            match precision {
                Precision::Int8 => Self::Int8(Direct3::new(&w, (c_out, c_in))),
                _ => Self::Winograd(Winograd::new(tile, &w, (c_out, c_in), precision)),
            }
        } else {
            Self::Direct(Conv::new(conv, float)?)
        })
    }

    fn c_in(&self) -> usize {
        match self {
            Self::Int8(d) => d.c_in(),
            Self::Winograd(w) => w.c_in(),
            Self::Direct(c) => c.c_in,
        }
    }

    fn c_out(&self) -> usize {
        match self {
            Self::Int8(d) => d.c_out(),
            Self::Winograd(w) => w.c_out(),
            Self::Direct(c) => c.c_out(),
        }
    }

    fn run(&self, kernels: Kernels, (src, grid): (Mat, Grid), dst: MatMut) {
        match self {
            Self::Int8(d) => d.run(kernels, src, grid, dst),
            Self::Winograd(w) => w.run(kernels, src, grid, dst),
            Self::Direct(c) => c.run(kernels, (src, grid), dst, None),
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
struct Stem {
    conv: Conv,
    norm0: Option<Affine>,
    pool: bool,
}

impl Stem {
    /// The grid of the stem's output for inputs over `grid`.
    fn output(&self, grid: Grid) -> Grid {
        let conv = self.conv.window.output(grid);
        if self.pool {
            POOL.output(conv)
        } else {
            conv
        }
    }

    /// Writes the stem's output for the NHWC images `x` (over `grid`) into the first columns of
    /// `dst`, one pixel per row.
    fn run(&self, kernels: Kernels, x: &[f32], grid: Grid, dst: MatMut) {
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
        let mut jobs = Vec::with_capacity(pooled.n * pooled.h.div_ceil(band));
        let mut rest = dst.data;
        for n in 0..pooled.n {
            for y0 in (0..pooled.h).step_by(band) {
                let y1 = (y0 + band).min(pooled.h);
                let len = ((y1 - y0) * pooled.w * ld).min(rest.len());
                let (mine, others) = rest.split_at_mut(len);
                jobs.push((n, y0..y1, mine));
                rest = others;
            }
        }
        team::for_each(
            jobs,
            |(n, rows, out): (usize, std::ops::Range<usize>, &mut [f32])| {
                // Conv rows 2y − 1 ..= 2y + 1 for each pooled row y, where they exist.
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
    /// Both products in the kernels' precision (their inputs come after a ReLU).
    fn new(b: &Bottleneck, tile: Tile, kernels: Kernels) -> Result<Self> {
        let precisions = (kernels.precision(), kernels.float_precision());
        Ok(Self {
            norm1: Affine::from_bn(&b.norm1, true)?,
            conv1: pack_1x1(b.conv1.weight(), kernels.precision())?,
            norm2: Affine::from_bn(&b.norm2, true)?,
            conv2: Conv3::new(&b.conv2, tile, precisions)?,
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
    fn run(&self, kernels: Kernels, buf: &mut [f32], grid: Grid, buffers: &Buffers) {
        let (ld, width, rows) = (self.c_out, self.width, grid.pixels());
        let tile = tile_rows(rows);
        let mut mid = buffers.take(rows * width);
        let mut c = self.c_in;
        for layer in &self.layers {
            let input: &[f32] = buf;
            let tiles = mid.chunks_mut(tile * width).enumerate().collect();
            team::for_each(tiles, |(i, out): (usize, &mut [f32])| {
                let first = i * tile;
                let m = out.len() / width;
                let input = Mat {
                    data: &input[first * ld..],
                    ld,
                };
                let out = MatMut {
                    data: out,
                    ld: width,
                };
                let norm2 = Some(layer.norm2.epilogue());
                product_activated(kernels, m, (input, &layer.norm1), &layer.conv1, out, norm2);
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

/// A transition: BN (+ReLU) and the 2×2 average pool gathered together, then the 1×1 product.
#[derive(Clone, Debug)]
struct Down {
    act: Affine,
    conv: Packed,
}

impl Down {
    /// The product in the kernels' precision where its input comes after a ReLU (int8 needs
    /// non-negative inputs), else in their float precision.
    fn new(t: &Transition, kernels: Kernels) -> Result<Self> {
        let precision = match t.relu {
            true => kernels.precision(),
            false => kernels.float_precision(),
        };
        Ok(Self {
            act: Affine::from_bn(&t.norm, t.relu)?,
            conv: pack_1x1(t.conv.weight(), precision)?,
        })
    }

    /// The grid of the transition's output for inputs over `grid`.
    fn output(grid: Grid) -> Grid {
        Grid {
            n: grid.n,
            h: grid.h / 2,
            w: grid.w / 2,
        }
    }

    /// From a block's matrix (over `grid`) into the first columns of the next block's, `dst`.
    fn run(&self, kernels: Kernels, src: Mat, grid: Grid, dst: MatMut) {
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
                        self.act.accumulate(kernels, &src.data[row * src.ld..], acc);
                    }
                    acc.iter_mut().for_each(|v| *v *= 0.25);
                }
                let pooled = Mat {
                    data: pooled,
                    ld: c,
                };
                product(kernels, m, pooled, &self.conv, dst, None);
            });
        });
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
        team::for_each(
            pooled.chunks_mut(c).enumerate().collect(),
            |(n, acc): (usize, &mut [f32])| {
                for p in 0..hw {
                    self.norm
                        .accumulate(kernels, &src.data[(n * hw + p) * src.ld..], acc);
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
    buffers: Buffers,
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
    /// transitions' weights are packed as bf16 (half the memory); in int8 the convolutions
    /// whose inputs come after a ReLU are packed as int8 (a quarter), the others as in its
    /// float part ([`Precision::float_part`]); the classifier stays f32.
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
            conv: Conv::new(&conv1, kernels.float_precision())?,
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
                .map(|layer| Layer::new(&layer, tile, kernels))
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
                    downs.push(Down::new(&t, kernels)?);
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
            buffers: Buffers::default(),
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

    /// The precision of the products that are not int8 (see [`Precision::float_part`]): the
    /// same as [`FastNet::precision`] in f32 and bf16.
    pub fn float_precision(&self) -> Precision {
        self.kernels.float_precision()
    }

    /// Logits, row after row, for the NHWC images `x` (over `grid`).
    ///
    /// Each block runs on groups of images of at most `budget` bytes (see [`group_size`]), each group through all of the
    /// block's layers before the next, and its transition writes the group into the next
    /// block's matrix, which holds the whole pass. The stem runs group by group too, into the
    /// first block's matrix, which holds one group only.
    fn run(&self, x: &[f32], grid: Grid, budget: usize) -> Vec<f32> {
        let k = self.kernels;
        let Some(first) = self.blocks.first() else {
            return Vec::new();
        };
        let image = grid.h * grid.w * 3;
        let mut grid_in = self.stem.output(grid);
        let mut input: Vec<f32> = Vec::new();
        let mut logits = Vec::with_capacity(grid.n * self.head.bias.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let hw = grid_in.h * grid_in.w;
            let per_image = hw * (block.c_out + block.width) * std::mem::size_of::<f32>();
            let group = group_size(budget, per_image, grid.n);
            let down = self.downs.get(i).zip(self.blocks.get(i + 1));
            let grid_out = down.map_or(grid_in, |_| Down::output(grid_in));
            let mut output = match down {
                Some((_, next)) => self.buffers.take(grid_out.pixels() * next.c_out),
                None => Vec::new(),
            };
            let mut own = match i {
                0 => self.buffers.take(group * hw * first.c_out),
                _ => Vec::new(),
            };
            for n0 in (0..grid.n).step_by(group) {
                let g = Grid {
                    n: group.min(grid.n - n0),
                    ..grid_in
                };
                let buf: &mut [f32] = if i == 0 {
                    own.resize(g.pixels() * first.c_out, 0.0);
                    let images = &x[n0 * image..][..g.n * image];
                    let dst = MatMut {
                        data: &mut own,
                        ld: first.c_out,
                    };
                    self.stem.run(k, images, Grid { n: g.n, ..grid }, dst);
                    &mut own
                } else {
                    &mut input[n0 * hw * block.c_out..][..g.pixels() * block.c_out]
                };
                block.run(k, buf, g, &self.buffers);
                let src = Mat {
                    data: buf,
                    ld: block.c_out,
                };
                match down {
                    Some((down, next)) => {
                        let out_hw = grid_out.h * grid_out.w;
                        let dst = MatMut {
                            data: &mut output[n0 * out_hw * next.c_out..],
                            ld: next.c_out,
                        };
                        down.run(k, src, g, dst);
                    }
                    None => logits.extend(self.head.run(k, src, g)),
                }
            }
            self.buffers.give(own);
            self.buffers.give(std::mem::replace(&mut input, output));
            grid_in = grid_out;
        }
        self.buffers.give(input);
        logits
    }

    /// Logits [N, classes] for a batch [N, 3, H, W] on the CPU, as a CPU F32 tensor.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        self.forward_in_groups(input, group_bytes())
    }

    /// [`FastNet::forward`], the blocks run on groups of images of at most `budget` bytes.
    fn forward_in_groups(&self, input: &Tensor, budget: usize) -> Result<Tensor> {
        let (n, c, h, w) = input.dims4()?;
        if c != self.stem.conv.c_in {
            candle_core::bail!(
                "fast path: expected {} channels, got {c}",
                self.stem.conv.c_in
            )
        }
        let nchw = input
            .to_dtype(DType::F32)?
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
                let mut nhwc = self.buffers.take(MAX_IMAGES_PER_PASS.min(n) * image);
                for images in nchw.chunks(MAX_IMAGES_PER_PASS * image) {
                    let grid = Grid {
                        n: images.len() / image,
                        h,
                        w,
                    };
                    // NCHW to NHWC here, image by image on the team, rather than by Candle's
                    // strided copy, several times slower.
                    let pairs = images.chunks_exact(image).zip(nhwc.chunks_exact_mut(image));
                    team::for_each(pairs.collect(), |(src, dst): (&[f32], &mut [f32])| {
                        for (ch, plane) in src.chunks_exact(h * w).enumerate() {
                            for (p, &v) in plane.iter().enumerate() {
                                dst[p * c + ch] = v;
                            }
                        }
                    });
                    logits.extend(self.run(&nhwc[..images.len()], grid, budget));
                }
                self.buffers.give(nhwc);
            });
        });
        Tensor::from_vec(logits, (n, classes), &Device::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{self, TensorKind};
    use crate::{Config, Stem};
    use candle_nn::{Module, VarBuilder};

    fn network(config: &Config) -> DenseNet {
        let mut tensors = std::collections::HashMap::new();
        for spec in weights::state_dict_spec(config).unwrap() {
            if spec.kind != TensorKind::Counter {
                let t = weights::synthetic::tensor(&spec.name, &spec.shape, &Device::Cpu).unwrap();
                tensors.insert(spec.name, t);
            }
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        DenseNet::new(config, vb).unwrap()
    }

    /// A small network with `stem` (transitions with the ReLU after the ImageNet stem only).
    fn small_config(stem: Stem) -> Config {
        Config {
            growth_rate: 6,
            block_config: vec![2, 3, 2],
            init_features: 12,
            stem,
            transition_relu: stem == Stem::ImageNet,
            ..Config::densenet_bc100(5)
        }
    }

    /// A batch of three `size`×`size` inputs.
    fn inputs(size: usize) -> Tensor {
        weights::synthetic::tensor("input", &[3, 3, size, size], &Device::Cpu)
            .unwrap()
            .affine(20.0, -10.0)
            .unwrap()
    }

    #[test]
    fn cache_sizes_read_as_sysfs_writes_them() {
        assert_eq!(parse_cache_size("2048K"), Some(2 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("lots"), None);
        assert!(l2_bytes() >= 1 << 10);
    }

    /// Blocks run on groups of one image, of two, or on the whole pass, after every stem (the
    /// ImageNet one's pooled bands over odd sizes): the logits are the plain network's.
    #[test]
    fn every_grouping_and_stem_matches_the_plain_network() {
        for (stem, size) in [
            (Stem::Cifar, 13),
            (Stem::CifarNorm, 12),
            (Stem::ImageNet, 37),
        ] {
            let (net, x) = (network(&small_config(stem)), inputs(size));
            let want = net.forward(&x).unwrap();
            let fast = FastNet::compile(net, Isa::best()).unwrap();
            // The first block's matrices take this many bytes per image.
            let grid = fast.stem.output(Grid {
                n: 1,
                h: size,
                w: size,
            });
            let first = &fast.blocks[0];
            let per_image = grid.pixels() * (first.c_out + first.width) * 4;
            for budget in [0, 2 * per_image, usize::MAX] {
                let got = fast.forward_in_groups(&x, budget).unwrap();
                let (got, want) = (
                    got.to_vec2::<f32>().unwrap(),
                    want.to_vec2::<f32>().unwrap(),
                );
                let pairs = got.iter().flatten().zip(want.iter().flatten());
                let diff = pairs.fold(0.0f32, |d, (a, b)| d.max((a - b).abs()));
                assert!(
                    diff <= 1e-4,
                    "{stem:?} {size}×{size} budget {budget}: {diff}"
                );
            }
        }
    }

    /// Int8 on networks whose transitions have the ReLU (their products go int8) and whose do
    /// not (they stay in the float part), over maps of odd sizes: the logits stay near the
    /// plain network's.
    #[test]
    fn int8_networks_stay_near_the_plain_network() {
        if !Precision::Int8.is_native(Isa::best()) {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        // The last has densenet161's layers (growth 48: 3×3 inputs of 192 channels, 48 outputs,
        // a panel and a half).
        let wide = Config {
            growth_rate: 48,
            block_config: vec![2, 2],
            init_features: 96,
            ..Config::densenet_bc100(5)
        };
        for (config, size) in [
            (small_config(Stem::Cifar), 13),
            (small_config(Stem::ImageNet), 37),
            (wide, 9),
        ] {
            let (net, x) = (network(&config), inputs(size));
            let stem = config.stem;
            let want = net.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            let fast = FastNet::compile_in(net, Isa::Avx512, Precision::Int8).unwrap();
            assert_eq!(fast.precision(), Precision::Int8);
            let got = fast.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            let largest = want.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
            let pairs = got.iter().flatten().zip(want.iter().flatten());
            let diff = pairs.fold(0.0f32, |d, (a, b)| d.max((a - b).abs()));
            eprintln!("{stem:?} {size}×{size}: max |Δlogit| {diff:.2e} of {largest:.2e}");
            assert!(
                diff > 0.0 && diff <= 0.05 * largest,
                "{stem:?}: {diff} of {largest}"
            );
        }
    }
}
