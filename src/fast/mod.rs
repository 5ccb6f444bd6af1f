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
//! - Every product has pixels as rows (`[pixels × c_in]·[c_in × c_out]`, in `ops/gemm.rs`), the
//!   weights packed once at load, in tiles of rows, one tile per task, so that inputs stay in
//!   cache and memory stays small; a large batch runs in passes of 16 images for the same
//!   reason, and within a pass each dense block runs on groups of images whose matrices fit
//!   the threads' L2 caches (see `FastNet::run`), so that every input size gets cache-sized
//!   steps. The tasks of each step go to rayon's threads, which join a pass once as a team
//!   (`team.rs`).
//! - The dense layers' 3×3 convolutions go through Winograd's F(2×2, 3×3) or F(4×4, 3×3)
//!   (`ops/winograd.rs`): 2.25× or 4× fewer multiplications; in int8 ([`Precision::Int8`]) with
//!   AVX-512 VNNI or AMX they run tap by tap over a bordered grid of their input's uint8 levels
//!   instead, which the 1×1 product before them writes (`ops/direct.rs`), while with AVX2's
//!   int8 they stay Winograd in f32 (faster there). Other convolutions (the stem) gather patches
//!   (`ops/im2col.rs`); the
//!   ImageNet stem's max pool is taken in the same task as its convolution, band by band.
//! - Every BatchNorm (+ReLU) becomes one per-channel scale-shift(-clamp) applied while the next
//!   product's input is gathered, or as a product's results leave the registers: nothing makes
//!   a separate pass over the activations.
//! - A transition average-pools before its 1×1 convolution (the two are linear and commute), so
//!   its product is four times smaller.
//!
//! The kernels are those of one instruction set ([`Isa`]: AVX-512, AVX2, NEON, simd128 or portable) in one
//! precision, chosen once by [`resolve`] when the network is compiled: the best this CPU runs,
//! capped by [`ISA_VARIABLE`]; what falls back is returned ([`Resolved::fallbacks`]), never
//! printed.
//!
//! The modules form layers, each using only those below it:
//! - `layers`: the network's parts (stem, dense block and dense layer, transition, head);
//! - `memory`, `team`: reused buffers and scratch, cache and thread sizing; the thread team;
//! - `ops/`: the drivers (packed product, Winograd, int8 3×3 tap by tap, patches): data layout
//!   and work splitting, calling the kernels through the one dispatch, `isa::Kernels`;
//! - `isa/`: instruction sets, precisions, [`resolve`] and the dispatch; one module per
//!   instruction set, instantiating the micro-kernels for itself;
//! - `ukernel/`: the micro-kernels, written once over a vector trait;
//! - `mat`: matrices, grids and per-channel maps: data only.

mod isa;
mod layers;
mod mat;
mod memory;
mod ops;
mod team;
mod ukernel;

pub use isa::{
    amx_allowed, resolve, CpuFeatures, Fallback, Isa, IsaChoice, Precision, Resolved, AMX_VARIABLE,
    ISA_VARIABLE,
};

use candle_core::{Device, Result, Tensor};

use crate::device::host_values;

use crate::network::DenseNet;
use layers::{DenseBlock, Head, Stem, Transition};
use mat::{Grid, Mat, MatMut};
use memory::{group_bytes, group_size, AlignedVec, Buffers, MAX_IMAGES_PER_PASS};
use team::Team;
use ukernel::winograd::Tile;

/// Dense blocks, from the first, whose 3×3 convolutions use F(4×4, 3×3), where the feature
/// maps are largest; later ones use F(2×2, 3×3): their maps are small (a 4×4 tile wastes more
/// at the edges), and the F(4×4) kernel, four times the size of the original, would make the
/// weights in memory half as large again.
const F4_BLOCKS: usize = 2;

/// A DenseNet compiled for the CPU: fused kernels over NHWC matrices, threaded with rayon.
///
/// Built from the plain network by [`FastNet::compile`]; [`crate::Model`] does this on the CPU
/// and uses it for [`crate::Model::logits`] and [`crate::Model::predict`] by default.
#[derive(Clone, Debug)]
pub struct FastNet {
    resolved: Resolved,
    stem: Stem,
    blocks: Vec<DenseBlock>,
    transitions: Vec<Transition>,
    head: Head,
    buffers: Buffers,
}

impl FastNet {
    /// Compiles `net`, whose weights must be on the CPU, for the kernels that [`resolve`] chose:
    /// every kernel is packed once here into the layout its product reads. `net` is consumed
    /// layer by layer, so that weights nothing else holds are freed as soon as they are packed.
    ///
    /// In bf16 the stem's, the dense layers' and the transitions' weights are packed as bf16
    /// (half the memory); in int8 the dense layers' and the transitions' are packed as int8 (a
    /// quarter; with AVX2 the 3×3 convolutions' stay in the float part for Winograd's method),
    /// the stem's as in its float part ([`Precision::float_part`]); the classifier stays f32.
    pub fn compile(net: DenseNet, resolved: Resolved) -> Result<Self> {
        let kernels = resolved.kernels();
        let DenseNet {
            conv1,
            norm0,
            stem_pool,
            blocks: plain_blocks,
            transitions: plain_transitions,
            norm,
            linear,
        } = net;
        let float = kernels.format(kernels.float_precision());
        let stem = Stem::new(&conv1, norm0.as_ref(), stem_pool, float)?;
        let mut c = stem.c_out();
        let mut blocks = Vec::with_capacity(plain_blocks.len());
        let mut transitions = Vec::with_capacity(plain_transitions.len());
        let mut plain_transitions = plain_transitions.into_iter();
        for (i, layers) in plain_blocks.into_iter().enumerate() {
            let tile = if i < F4_BLOCKS { Tile::F4 } else { Tile::F2 };
            let block = DenseBlock::new(layers, c, tile, kernels)?;
            c = match plain_transitions.next() {
                Some(t) => {
                    let transition = Transition::new(&t, kernels)?;
                    let c_out = transition.c_out();
                    transitions.push(transition);
                    c_out
                }
                None => block.c_out,
            };
            blocks.push(block);
        }
        Ok(Self {
            resolved,
            stem,
            blocks,
            transitions,
            head: Head::new(&norm, &linear)?,
            buffers: Buffers::default(),
        })
    }

    /// What runs, as [`resolve`] chose it: the instruction set, the precision, and what fell
    /// back from the request.
    pub fn resolved(&self) -> Resolved {
        self.resolved
    }

    /// Takes a request that resolves to the same kernels as its own, so that what fell back
    /// is told as that request asked ([`Resolved::fallbacks`]).
    pub(crate) fn answer(&mut self, resolved: Resolved) {
        assert_eq!(resolved.kernels(), self.resolved.kernels(), "another plan");
        self.resolved = resolved;
    }

    /// The instruction set the kernels were compiled for.
    pub fn isa(&self) -> Isa {
        self.resolved.isa()
    }

    /// The precision the products compute in.
    pub fn precision(&self) -> Precision {
        self.resolved.precision()
    }

    /// The precision of the products that are not int8 (see [`Precision::float_part`]): the
    /// same as [`FastNet::precision`] in f32 and bf16.
    pub fn float_precision(&self) -> Precision {
        self.resolved.kernels().float_precision()
    }

    /// Logits, row after row, for the NHWC images `x` (over `grid`).
    ///
    /// Each block runs on groups of images of at most `budget` bytes (see [`group_size`]), each group through all of the
    /// block's layers before the next, and its transition writes the group into the next
    /// block's matrix, which holds the whole pass. The stem runs group by group too, into the
    /// first block's matrix, which holds one group only.
    ///
    /// With `evidence`, the head's [`Head::class_evidence`] of every pixel is appended to it.
    fn run(
        &self,
        x: &[f32],
        grid: Grid,
        budget: usize,
        mut evidence: Option<&mut Vec<f32>>,
    ) -> Vec<f32> {
        let k = self.resolved.kernels();
        let Some(first) = self.blocks.first() else {
            return Vec::new();
        };
        let image = grid.h * grid.w * 3;
        let mut grid_in = self.stem.output(grid);
        let mut input = AlignedVec::new(0);
        let mut logits = Vec::with_capacity(grid.n * self.head.classes());
        for (i, block) in self.blocks.iter().enumerate() {
            let hw = grid_in.h * grid_in.w;
            let per_image = hw * (block.c_out + block.width) * std::mem::size_of::<f32>();
            let group = group_size(budget, per_image, grid.n);
            let down = self.transitions.get(i).zip(self.blocks.get(i + 1));
            let grid_out = down.map_or(grid_in, |_| Transition::output(grid_in));
            let mut output = match down {
                Some((_, next)) => self.buffers.take(grid_out.pixels() * next.c_out),
                None => AlignedVec::new(0),
            };
            let mut own = match i {
                0 => self.buffers.take(group * hw * first.c_out),
                _ => AlignedVec::new(0),
            };
            for n0 in (0..grid.n).step_by(group) {
                let g = Grid {
                    n: group.min(grid.n - n0),
                    ..grid_in
                };
                let buf: &mut [f32] = if i == 0 {
                    let own = &mut own[..g.pixels() * first.c_out];
                    let images = &x[n0 * image..][..g.n * image];
                    let dst = MatMut {
                        data: own,
                        ld: first.c_out,
                    };
                    self.stem.run(k, images, Grid { n: g.n, ..grid }, dst);
                    own
                } else {
                    &mut input[n0 * hw * block.c_out..][..g.pixels() * block.c_out]
                };
                block.run(k, buf, g, &self.buffers);
                let src = Mat {
                    data: buf,
                    ld: block.c_out,
                };
                match down {
                    Some((transition, next)) => {
                        let out_hw = grid_out.h * grid_out.w;
                        let dst = MatMut {
                            data: &mut output[n0 * out_hw * next.c_out..],
                            ld: next.c_out,
                        };
                        transition.run(k, src, g, dst);
                    }
                    None => {
                        logits.extend(self.head.run(k, src, g));
                        if let Some(evidence) = evidence.as_deref_mut() {
                            evidence.extend(self.head.class_evidence(k, src, g));
                        }
                    }
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
        self.forward_in_groups(input, group_bytes(), None)
    }

    /// Logits as [`FastNet::forward`] gives them, and each final pixel's evidence for every
    /// class `[N, H', W', classes]` over the network's final grid: the features times the
    /// classifier's weights, the bias left out, whose mean over the grid plus the bias is the
    /// logit. The class activation maps of [`crate::explain`] are made from it.
    pub fn forward_with_evidence(&self, input: &Tensor) -> Result<(Tensor, Tensor)> {
        let (n, _, h, w) = input.dims4()?;
        let mut evidence = Vec::new();
        let logits = self.forward_in_groups(input, group_bytes(), Some(&mut evidence))?;
        let last = self
            .transitions
            .iter()
            .fold(self.stem.output(Grid { n, h, w }), |g, _| {
                Transition::output(g)
            });
        let shape = (n, last.h, last.w, self.head.classes());
        Ok((logits, Tensor::from_vec(evidence, shape, &Device::Cpu)?))
    }

    /// [`FastNet::forward`], the blocks run on groups of images of at most `budget` bytes;
    /// with `evidence`, [`FastNet::forward_with_evidence`]'s evidence appended to it.
    fn forward_in_groups(
        &self,
        input: &Tensor,
        budget: usize,
        mut evidence: Option<&mut Vec<f32>>,
    ) -> Result<Tensor> {
        let (n, c, h, w) = input.dims4()?;
        if c != self.stem.c_in() {
            candle_core::bail!("fast path: expected {} channels, got {c}", self.stem.c_in())
        }
        let nchw = host_values(input)?;
        let image = h * w * c;
        let classes = self.head.classes();
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
                    let evidence = evidence.as_deref_mut();
                    logits.extend(self.run(&nhwc[..images.len()], grid, budget, evidence));
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
    use crate::weights;
    use crate::{Config, Stem};
    use candle_core::DType;
    use candle_nn::{Module, VarBuilder};

    fn network(config: &Config) -> DenseNet {
        let tensors = weights::synthetic::state_dict(config, &Device::Cpu).unwrap();
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
            let fast = FastNet::compile(net, resolve(None, Precision::F32)).unwrap();
            // The first block's matrices take this many bytes per image.
            let grid = fast.stem.output(Grid {
                n: 1,
                h: size,
                w: size,
            });
            let first = &fast.blocks[0];
            let per_image = grid.pixels() * (first.c_out + first.width) * 4;
            for budget in [0, 2 * per_image, usize::MAX] {
                let got = fast.forward_in_groups(&x, budget, None).unwrap();
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

    /// Each final pixel's evidence, from every stem and over groups of images: the plain
    /// network's features times the classifier's weights, and its mean plus the bias the
    /// logits of the same pass.
    #[test]
    fn evidence_is_the_plain_features_times_the_classifier() {
        for (stem, size) in [(Stem::Cifar, 13), (Stem::ImageNet, 37)] {
            let (net, x) = (network(&small_config(stem)), inputs(size));
            // [N, C, H', W'] · [classes, C] → [N, H', W', classes]
            let want = net
                .features(&x)
                .unwrap()
                .permute((0, 2, 3, 1))
                .unwrap()
                .contiguous()
                .unwrap()
                .broadcast_matmul(&net.linear.weight().t().unwrap())
                .unwrap();
            let bias = net.linear.bias().unwrap().clone();
            let fast = FastNet::compile(net, resolve(None, Precision::F32)).unwrap();
            let (logits, got) = fast.forward_with_evidence(&x).unwrap();
            assert_eq!(got.dims(), want.dims(), "{stem:?}");
            let diff = (got.clone() - want).unwrap().abs().unwrap();
            let diff = diff.flatten_all().unwrap().max(0).unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() <= 1e-4, "{stem:?}: {diff}");
            let means = got.mean((1, 2)).unwrap().broadcast_add(&bias).unwrap();
            let diff = (means - &logits).unwrap().abs().unwrap();
            let diff = diff.flatten_all().unwrap().max(0).unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() <= 1e-4, "{stem:?}: {diff}");
            assert_eq!(
                fast.forward(&x).unwrap().to_vec2::<f32>().unwrap(),
                logits.to_vec2::<f32>().unwrap()
            );
        }
    }

    /// A batch of three `size`×`size` inputs of variance 1, which the synthetic networks'
    /// BatchNorm statistics roughly describe (as a trained network's describe its data).
    fn unit_inputs(size: usize) -> Tensor {
        let half = 3f64.sqrt();
        weights::synthetic::tensor("input", &[3, 3, size, size], &Device::Cpu)
            .unwrap()
            .affine(2.0 * half, -half)
            .unwrap()
    }

    /// Int8 on networks whose transitions have the ReLU (levels from 0) and whose do not
    /// (levels around a zero point), over maps of odd sizes: the logits stay near the
    /// plain network's, for inputs that the BatchNorm statistics describe (int8's static
    /// ranges come from them).
    #[test]
    fn int8_networks_stay_near_the_plain_network() {
        let isas: Vec<Isa> = Isa::ALL
            .into_iter()
            .filter(|&isa| Precision::Int8.is_native(isa))
            .collect();
        if isas.is_empty() {
            eprintln!("skipped: this CPU has no AVX2");
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
            let (net, x) = (network(&config), unit_inputs(size));
            let stem = config.stem;
            let want = net.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            let largest = want.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
            for &isa in &isas {
                let resolved = resolve(Some(isa), Precision::Int8);
                let fast = FastNet::compile(net.clone(), resolved).unwrap();
                assert_eq!(fast.precision(), Precision::Int8);
                let got = fast.forward(&x).unwrap().to_vec2::<f32>().unwrap();
                let pairs = got.iter().flatten().zip(want.iter().flatten());
                let diff = pairs.fold(0.0f32, |d, (a, b)| d.max((a - b).abs()));
                eprintln!("{isa} {stem:?} {size}×{size}: max |Δlogit| {diff:.2e} of {largest:.2e}");
                assert!(
                    diff > 0.0 && diff <= 0.05 * largest,
                    "{isa} {stem:?}: {diff} of {largest}"
                );
            }
        }
    }
}
