//! The one matrix product of the fast path: `dst[m × n] = lhs[m × k] · rhs[k × n]`, pixels as
//! rows, with the right-hand side (a layer's weights) packed once at load into column panels.
//!
//! A register-blocked kernel, written once over [`Simd`], reads the activations in place (one
//! broadcast per row and step of `k`) and the packed weights as whole vectors, so nothing is
//! copied per call; an optional per-column scale-shift(-clamp) is applied as results leave the
//! registers. Each instruction set instantiates it with its own block shape (`isa/`); this
//! driver packs the weights, prepares the left-hand side and cuts the product into panels.
//!
//! In bf16 ([`Precision::Bf16`]) the weights are packed as pairs of bf16 values (two rows of
//! `k` in one 32-bit word) and the left-hand side is rounded to bf16 pairs as it is gathered
//! into a scratch copy; the same kernel then takes one step per pair with a dot-product
//! instruction, accumulating in f32.
//!
//! In int8 ([`Precision::Int8`]) the weights are quantised once, symmetric per column (int8,
//! ±127, or ±63 for AVX2's 16-bit pair sums: [`Format::Int8`]; one f32 scale per column), and
//! packed as quads (four rows of `k` in one word). The left-hand side is gathered as uint8
//! levels through a per-channel map that gives them directly (a BatchNorm and ReLU divided by
//! each channel's static step, `ukernel::reduced::level_step`; the weights carry the steps):
//! one pass, no search for a row's largest value. Products of quads accumulate exactly in
//! i32; the results are scaled back to f32 by the column's scale before the epilogue.

use std::cell::RefCell;

use crate::fast::isa::{Kernels, Precision};
use crate::fast::mat::{spread_stride, Affine, Epilogue, Mat, MatMut};
use crate::fast::memory::{aligned, with_scratch, AlignedVec};
use crate::fast::ukernel::gemm::{PanelJob, PANEL, TILE_ROWS, TILE_STEPS};
use crate::fast::ukernel::reduced::{bf16_pair, quantize_weight, weight_scale, Format};

/// A right-hand side [k × n], stored as consecutive row-major panels of [`PANEL`] columns (the
/// last one zero-padded), so that each step of `k` reads whole vectors.
#[derive(Clone, Debug)]
pub(crate) struct Packed {
    k: usize,
    n: usize,
    values: Values,
}

/// The values of a [`Packed`], one row of panel after another per step of the product.
#[derive(Clone, Debug)]
enum Values {
    /// One row of `k` per step.
    F32(AlignedVec<f32>),
    /// Rows `2s` and `2s + 1` per step `s`, rounded to bf16 and paired in one word (see
    /// [`bf16_pair`]), zero-padded to a multiple of [`TILE_STEPS`] steps.
    Bf16(AlignedVec<u32>),
    /// Rows `4s..4s + 4` per step `s`, quantised to int8 (±127, or ±63 for the kernels that
    /// need it: [`Format::Int8`]) and packed in one word (the first row in the low byte), zero-padded to a multiple of [`TILE_STEPS`] steps; and each column's
    /// scale (a whole number of panels of them).
    Int8 {
        quads: AlignedVec<u32>,
        scales: Vec<f32>,
    },
}

/// Steps of a bf16 product of depth `k`.
fn bf16_steps(k: usize) -> usize {
    k.div_ceil(2).next_multiple_of(TILE_STEPS)
}

/// Steps of an int8 product of depth `k`.
fn int8_steps(k: usize) -> usize {
    k.div_ceil(4).next_multiple_of(TILE_STEPS)
}

impl Packed {
    /// Packs, in `format`, the matrix whose element (row `r`, column `c`) is `at(r, c)`.
    pub(crate) fn new(
        format: Format,
        k: usize,
        n: usize,
        at: impl Fn(usize, usize) -> f32,
    ) -> Self {
        let values = match format {
            Format::F32 => Values::F32(panels(k, n, at)),
            Format::Bf16 => Values::Bf16(panels(bf16_steps(k), n, |s, c| {
                let at = |r| if r < k { at(r, c) } else { 0.0 };
                bf16_pair(at(2 * s), at(2 * s + 1))
            })),
            Format::Int8 { levels, .. } => {
                let scales: Vec<f32> = (0..n.div_ceil(PANEL) * PANEL)
                    .map(|c| match c < n {
                        true => {
                            weight_scale((0..k).fold(0.0f32, |m, r| m.max(at(r, c).abs())), levels)
                        }
                        false => 1.0,
                    })
                    .collect();
                let q = |r: usize, c: usize| match r < k {
                    true => quantize_weight(at(r, c), scales[c], levels),
                    false => 0,
                };
                let quads = panels(int8_steps(k), n, |s, c| {
                    u32::from_le_bytes(std::array::from_fn(|i| q(4 * s + i, c) as u8))
                });
                Values::Int8 { quads, scales }
            }
        };
        Self { k, n, values }
    }

    /// Number of columns.
    pub(crate) fn cols(&self) -> usize {
        self.n
    }

    /// The precision the values are stored in.
    pub(crate) fn precision(&self) -> Precision {
        match self.values {
            Values::F32(_) => Precision::F32,
            Values::Bf16(_) => Precision::Bf16,
            Values::Int8 { .. } => Precision::Int8,
        }
    }

    /// An int8 matrix's quads, its columns' scales (a whole number of panels of them) and its
    /// steps (see [`Values::Int8`]).
    pub(crate) fn int8_parts(&self) -> (&[u32], &[f32], usize) {
        match &self.values {
            Values::Int8 { quads, scales } => (quads, scales, int8_steps(self.k)),
            _ => panic!("int8_parts of a matrix packed in {}", self.precision()),
        }
    }

    /// For an int8 matrix: what inputs offset by `zeros` (a whole number per row: the zero
    /// points of its levels) add to each column, `Σ_r zeros[r]·q(r, c)` times the column's
    /// scale; the product's epilogue takes it off.
    pub(crate) fn int8_offsets(&self, zeros: &[f32]) -> Vec<f32> {
        assert_eq!(zeros.len(), self.k, "int8_offsets: a zero point per row");
        let (quads, scales, steps) = self.int8_parts();
        (0..self.n)
            .map(|c| {
                let panel = &quads[(c / PANEL) * steps * PANEL..][..steps * PANEL];
                let sum: f64 = (0..self.k)
                    .map(|r| {
                        let byte = panel[(r / 4) * PANEL + c % PANEL].to_le_bytes()[r % 4];
                        f64::from(zeros[r]) * f64::from(byte as i8)
                    })
                    .sum();
                (sum * f64::from(scales[c])) as f32
            })
            .collect()
    }

    /// Number of panels.
    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }
}

/// The panels of a matrix of `steps` rows (steps of the product) and `n` columns whose element
/// (step `s`, column `c`) is `at(s, c)`, starting on a cache line (so is each panel and step).
fn panels<T: Copy + Default>(
    steps: usize,
    n: usize,
    at: impl Fn(usize, usize) -> T,
) -> AlignedVec<T> {
    let mut data = AlignedVec::new(n.div_ceil(PANEL) * steps * PANEL);
    for (p, panel) in data.chunks_exact_mut((steps * PANEL).max(1)).enumerate() {
        for (s, row) in panel.chunks_exact_mut(PANEL).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                let c = p * PANEL + j;
                if c < n {
                    *v = at(s, c);
                }
            }
        }
    }
    data
}

thread_local! {
    /// Per-thread room for a left-hand side in reduced precision: its words (bf16 pairs or
    /// uint8 quads).
    static REDUCED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// [`product`] of `act(lhs)`: the map applied to each row of the left-hand side as it is
/// gathered (into scratch, or straight into uint8 for an int8 product).
pub(crate) fn product_activated(
    kernels: Kernels,
    m: usize,
    (lhs, act): (Mat, &Affine),
    rhs: &Packed,
    dst: MatMut,
    epilogue: Option<Epilogue>,
) {
    assert_eq!(
        act.channels(),
        rhs.k,
        "product_activated: map and depth differ"
    );
    product_of(kernels, m, (lhs, Some(act)), rhs, dst, epilogue);
}

/// The int8 product: each row of `levels(lhs)` quantised ([`Kernels::quantize_u8`]), then the
/// panels, scaled by the columns' scales only (the weights carry the steps of the levels);
/// `lhs` checked by [`product_of`].
fn product_int8(
    kernels: Kernels,
    m: usize,
    (lhs, levels): (Mat, &Affine),
    (rhs, quads, scales): (&Packed, &[u32], &[f32]),
    dst: MatMut,
    epilogue: Option<Epilogue>,
) {
    let (k, steps) = (rhs.k, int8_steps(rhs.k));
    REDUCED.with(|room| {
        let rows = m.next_multiple_of(TILE_ROWS);
        let room = &mut *room.borrow_mut();
        let words = aligned(room, rows * steps);
        for (r, row) in words.chunks_exact_mut(steps).take(m).enumerate() {
            kernels.quantize_u8(&lhs.data[r * lhs.ld..][..k], levels, row);
        }
        // Rows past `m` are read by tiles, never stored: their values do not matter.
        let lhs = Mat {
            data: words,
            ld: steps,
        };
        let run = kernels.int8_steps_run(k, steps);
        panel_by_panel(
            m,
            (lhs, steps),
            (rhs, quads),
            dst,
            (epilogue, Some(scales)),
            |job| kernels.product_panel_int8(PanelJob { k: run, ..job }),
        );
    });
}

/// The whole product, panel after panel, then `epilogue`'s map (given for all of rhs's
/// columns); `dst`'s rows must hold rhs's columns. A bf16 right-hand side needs `kernels` made
/// for bf16 ([`Kernels::precision`]).
pub(crate) fn product(
    kernels: Kernels,
    m: usize,
    lhs: Mat,
    rhs: &Packed,
    dst: MatMut,
    epilogue: Option<Epilogue>,
) {
    product_of(kernels, m, (lhs, None), rhs, dst, epilogue);
}

/// [`product`] of `act(lhs)`, or of `lhs` without a map: the one place that checks the
/// left-hand side and picks the way of the right-hand side's precision. A map is applied as
/// the rows are quantised for int8 or rounded for bf16, else into scratch before the f32
/// product.
fn product_of(
    kernels: Kernels,
    m: usize,
    (lhs, act): (Mat, Option<&Affine>),
    rhs: &Packed,
    dst: MatMut,
    epilogue: Option<Epilogue>,
) {
    let k = rhs.k;
    if m == 0 {
        return;
    }
    assert!(k <= lhs.ld, "product: lhs rows too short");
    assert!(
        lhs.data.len() >= (m - 1) * lhs.ld + k,
        "product: lhs too short"
    );
    match (&rhs.values, act) {
        (Values::Int8 { quads, scales }, Some(levels)) => product_int8(
            kernels,
            m,
            (lhs, levels),
            (rhs, quads, scales),
            dst,
            epilogue,
        ),
        (Values::Int8 { .. }, None) => panic!("product: an int8 product needs its input's levels"),
        (Values::F32(_), Some(act)) => {
            let ld = spread_stride(k);
            with_scratch(m * ld, |gathered| {
                for (r, row) in gathered.chunks_exact_mut(ld).enumerate() {
                    kernels.affine(act, &lhs.data[r * lhs.ld..], row, |d, v| *d = v);
                }
                let gathered = Mat { data: gathered, ld };
                product_of(kernels, m, (gathered, None), rhs, dst, epilogue);
            })
        }
        (Values::F32(data), None) => {
            panel_by_panel(m, (lhs, k), (rhs, data), dst, (epilogue, None), |job| {
                kernels.product_panel(job)
            })
        }
        // The map, if any, is applied as the rows are rounded.
        (Values::Bf16(data), act) => {
            let steps = bf16_steps(k);
            REDUCED.with(|room| {
                let len = m.next_multiple_of(TILE_ROWS) * steps;
                let room = &mut *room.borrow_mut();
                let words = aligned(room, len);
                for (r, row) in words.chunks_exact_mut(steps).take(m).enumerate() {
                    let (rounded, padding) = row.split_at_mut(k.div_ceil(2));
                    kernels.round_bf16(&lhs.data[r * lhs.ld..][..k], act, rounded);
                    padding.fill(0);
                }
                // Rows past `m` are read by tiles, never stored: their values do not matter.
                let lhs = Mat {
                    data: words,
                    ld: steps,
                };
                panel_by_panel(m, (lhs, steps), (rhs, data), dst, (epilogue, None), |job| {
                    kernels.product_panel_bf16(job)
                });
            });
        }
    }
}

/// Runs `run` on each panel of `rhs` (whose values are `data`), the left-hand side `lhs` having
/// `steps` values per row (one per step of the product); an int8 product gives the scales of
/// its rows and of all of rhs's columns.
fn panel_by_panel<T: Copy>(
    m: usize,
    (lhs, steps): (Mat<T>, usize),
    (rhs, data): (&Packed, &[T]),
    dst: MatMut,
    (epilogue, scales): (Option<Epilogue>, Option<&[f32]>),
    run: impl Fn(PanelJob<T>),
) {
    for p in 0..rhs.panels() {
        let panel = &data[p * steps * PANEL..][..steps * PANEL];
        let cols = PANEL.min(rhs.n - p * PANEL);
        let first = p * PANEL;
        assert!(first + cols <= dst.ld, "product: dst rows too short");
        assert!(
            dst.data.len() >= (m - 1) * dst.ld + first + cols,
            "product: dst too short"
        );
        let epilogue = epilogue.map(|e| Epilogue {
            scale: &e.scale[first..first + cols],
            shift: &e.shift[first..first + cols],
            relu: e.relu,
        });
        run(PanelJob {
            m,
            k: steps,
            lhs,
            panel,
            cols,
            dst: MatMut {
                data: &mut dst.data[first..],
                ld: dst.ld,
            },
            epilogue,
            scales: scales.map(|cols| &cols[first..first + PANEL]),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast::ukernel::reduced::{bf16_bits, level, level_step};

    fn reference(m: usize, k: usize, n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| a[r * k + i] * b[i * n + c]).sum();
            }
        }
        out
    }

    #[test]
    fn every_shape_and_epilogue_matches_the_definition() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (13, 7, 12),
            (25, 30, 33),
            (12, 128, 32),
            (40, 3, 100),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
                .collect();
            let scale: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 / 10.0).collect();
            let shift: Vec<f32> = (0..n).map(|i| i as f32 / 3.0 - 2.0).collect();
            let packed = Packed::new(Format::F32, k, n, |r, c| b[r * n + c]);
            let want = reference(m, k, n, &a, &b);
            for kernels in Kernels::all() {
                let mut got = vec![f32::NAN; m * (n + 3)];
                let lhs = Mat { data: &a, ld: k };
                let dst = MatMut {
                    data: &mut got,
                    ld: n + 3,
                };
                product(kernels, m, lhs, &packed, dst, None);
                let epi = Epilogue {
                    scale: &scale,
                    shift: &shift,
                    relu: true,
                };
                let mut act = vec![f32::NAN; m * n];
                let dst = MatMut {
                    data: &mut act,
                    ld: n,
                };
                product(kernels, m, lhs, &packed, dst, Some(epi));
                for r in 0..m {
                    for c in 0..n {
                        let w = want[r * n + c];
                        assert!((got[r * (n + 3) + c] - w).abs() <= 1e-4 * (1.0 + w.abs()));
                        let wa = (w * scale[c] + shift[c]).max(0.0);
                        assert!((act[r * n + c] - wa).abs() <= 1e-4 * (1.0 + wa.abs()));
                    }
                    assert!(got[r * (n + 3) + n..][..3].iter().all(|v| v.is_nan()));
                }
            }
        }
    }

    /// Shapes (m, k, n) for the reduced-precision products: depths around the pairs (2), quads
    /// (4) and a tile's 64 bytes, rows around the register block (12) and the tiles (16, 32),
    /// columns around the panels (32) and vectors (16), and a depth past what a quantiser
    /// keeps on its stack (2304 channels).
    const REDUCED_SHAPES: [(usize, usize, usize); 8] = [
        (1, 1, 1),
        (13, 7, 12),
        (25, 30, 33),
        (12, 129, 32),
        (17, 64, 16),
        (40, 3, 100),
        (70, 300, 64),
        (3, 2403, 9),
    ];

    /// The rows of `a` (`k` values each) in rows 5 values longer, filled with NaN: a left-hand
    /// side of which only the first `k` values of each row may be read. Returns it and its
    /// row stride.
    fn longer_rows(a: &[f32], k: usize) -> (Vec<f32>, usize) {
        let ld = k + 5;
        let rows = a.chunks_exact(k).flat_map(|row| {
            row.iter()
                .copied()
                .chain(std::iter::repeat_n(f32::NAN, ld - k))
        });
        (rows.collect(), ld)
    }

    /// Rounds through bf16 as the packing and the kernels do.
    fn through_bf16(x: f32) -> f32 {
        f32::from_bits(u32::from(bf16_bits(x)) << 16)
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even_and_the_kernel_agrees() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: ties go to the even 1.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(-2.0), 0xc000);
        assert!(through_bf16(f32::NAN).is_nan());
        assert_eq!(through_bf16(f32::INFINITY), f32::INFINITY);
        let Some(&kernels) = Kernels::all_in(Precision::Bf16).last() else {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return;
        };
        for len in [0usize, 1, 2, 15, 16, 17, 31, 32, 33, 70] {
            let src: Vec<f32> = (0..len)
                .map(|i| (i as f32 * 0.37 - 3.0) * (1.0 + 1.0 / 256.0))
                .collect();
            let mut got = vec![u32::MAX; len.div_ceil(2)];
            kernels.round_bf16(&src, None, &mut got);
            let want: Vec<u32> = src
                .chunks(2)
                .map(|p| bf16_pair(p[0], p.get(1).copied().unwrap_or(0.0)))
                .collect();
            assert_eq!(got, want, "length {len}");
        }
    }

    #[test]
    fn bf16_products_equal_the_definition_on_rounded_inputs() {
        let all = Kernels::all_in(Precision::Bf16);
        if all.is_empty() {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
        }
        for &(m, k, n) in &REDUCED_SHAPES {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.1) / 5.3)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.2) / 4.7)
                .collect();
            let ra: Vec<f32> = a.iter().map(|&x| through_bf16(x)).collect();
            let rb: Vec<f32> = b.iter().map(|&x| through_bf16(x)).collect();
            let want = reference(m, k, n, &ra, &rb);
            let packed = Packed::new(Format::Bf16, k, n, |r, c| b[r * n + c]);
            assert_eq!(packed.precision(), Precision::Bf16);
            let scale: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 / 10.0).collect();
            let shift: Vec<f32> = (0..n).map(|i| i as f32 / 3.0 - 2.0).collect();
            let epi = Epilogue {
                scale: &scale,
                shift: &shift,
                relu: true,
            };
            // The rows of the left-hand side are longer than k: only k values are read.
            let (wide, ld) = longer_rows(&a, k);
            for &kernels in &all {
                // Rows of dst longer than n: the columns past n are not written.
                let mut got = vec![f32::NAN; m * (n + 3)];
                let dst = MatMut {
                    data: &mut got,
                    ld: n + 3,
                };
                product(kernels, m, Mat { data: &wide, ld }, &packed, dst, Some(epi));
                for r in 0..m {
                    for c in 0..n {
                        let w = (want[r * n + c] * scale[c] + shift[c]).max(0.0);
                        let g = got[r * (n + 3) + c];
                        assert!(
                            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{kernels:?} {m}×{k}×{n} ({r}, {c}): {g} vs {w}"
                        );
                    }
                    assert!(got[r * (n + 3) + n..][..3].iter().all(|v| v.is_nan()));
                }
            }
        }
    }

    /// The weights as the int8 packing quantises them: per column, ±`levels` over its largest
    /// magnitude.
    fn quantized_weights(k: usize, n: usize, b: &[f32], levels: i8) -> (Vec<i32>, Vec<f32>) {
        let scales: Vec<f32> = (0..n)
            .map(|c| {
                let max = (0..k).fold(0.0f32, |m, r| m.max(b[r * n + c].abs()));
                weight_scale(max, levels)
            })
            .collect();
        let q = (0..k * n)
            .map(|i| i32::from(quantize_weight(b[i], scales[i % n], levels)))
            .collect();
        (q, scales)
    }

    /// A levels map over `k` channels (the ReLU always on): scales around 40 and shifts either
    /// side of 0, so that rows in −2..2 reach levels below 0 and above 255 (both clamped, at
    /// 255 or at 127).
    fn levels_map(k: usize) -> Affine {
        Affine::new(
            (0..k).map(|i| 40.0 + (i % 7) as f32 * 9.5).collect(),
            (0..k).map(|i| (i % 5) as f32 * 30.0 - 40.0).collect(),
            true,
        )
    }

    /// `x` through `levels` as the plain definition gives it: the fused map (one rounding),
    /// then [`level`] with `inputs` levels.
    fn plain_levels(x: &[f32], levels: &Affine, inputs: u8) -> Vec<u8> {
        let (scale, shift, _) = levels.parts();
        (0..x.len())
            .map(|i| level(x[i].mul_add(scale[i], shift[i]), inputs))
            .collect()
    }

    #[test]
    fn int8_products_of_levels_are_exact_in_integers() {
        let all = Kernels::all_in(Precision::Int8);
        if all.is_empty() {
            eprintln!("skipped: this CPU has no int8 products");
        }
        for &(m, k, n) in &REDUCED_SHAPES {
            // A row of zeros, a row of one value, a row at the top level, and rows that reach
            // both clamps.
            let a: Vec<f32> = (0..m * k)
                .map(|i| match i / k {
                    1 => 0.0,
                    2 => 1.5,
                    3 => 1e9,
                    _ => ((i * 7 % 13) as f32 - 6.1) / 3.3,
                })
                .collect();
            // A first column of equal weights (all at the lowest level): with the top row, the
            // largest sums that 16-bit partial sums must hold.
            let b: Vec<f32> = (0..k * n)
                .map(|i| match i % n {
                    0 => -2.0,
                    _ => ((i * 5 % 11) as f32 - 5.2) / 4.7,
                })
                .collect();
            let map = levels_map(k);
            let (wide, ld) = longer_rows(&a, k);
            for &kernels in &all {
                let format = kernels.format(Precision::Int8);
                let Format::Int8 { levels, inputs } = format else {
                    panic!("{kernels:?}: int8 packed as {format:?}");
                };
                // The plain integer product of the levels and the quantised weights, in i64.
                let rows: Vec<Vec<u8>> = a
                    .chunks_exact(k)
                    .map(|x| plain_levels(x, &map, inputs))
                    .collect();
                let (qb, col_scales) = quantized_weights(k, n, &b, levels);
                let packed = Packed::new(format, k, n, |r, c| b[r * n + c]);
                assert_eq!(packed.precision(), Precision::Int8);
                let exact = |r: usize, c: usize| -> i64 {
                    (0..k)
                        .map(|i| i64::from(rows[r][i]) * i64::from(qb[i * n + c]))
                        .sum()
                };
                let mut got = vec![f32::NAN; m * (n + 3)];
                let dst = MatMut {
                    data: &mut got,
                    ld: n + 3,
                };
                let lhs = (Mat { data: &wide, ld }, &map);
                product_activated(kernels, m, lhs, &packed, dst, None);
                for r in 0..m {
                    for c in 0..n {
                        // The kernels' own order of roundings: i32 to f32, times the column's
                        // scale (each row's is 1).
                        let want = exact(r, c) as f32 * col_scales[c];
                        let g = got[r * (n + 3) + c];
                        assert_eq!(g, want, "{kernels:?} {m}×{k}×{n} ({r}, {c})");
                    }
                    assert!(got[r * (n + 3) + n..][..3].iter().all(|v| v.is_nan()));
                }
            }
        }
    }

    /// A row through its levels map in one pass of the kernels equals the fused map (one
    /// rounding) then [`level`]: values below 0 and above the inputs' top level (255, or 127 on
    /// AVX2) clamped, NaN and −∞ to 0, +∞ to the top, at depths short of a vector, around the
    /// 64-value stores, and long.
    #[test]
    fn int8_rows_quantise_to_their_levels_as_defined() {
        for k in [5, 63, 64, 65, 150, 2403] {
            let mut x: Vec<f32> = (0..k)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect();
            x[0] = f32::NAN;
            x[k / 2] = f32::INFINITY;
            x[k - 1] = f32::NEG_INFINITY;
            let map = levels_map(k);
            for &kernels in &Kernels::all_in(Precision::Int8) {
                let format = kernels.format(Precision::Int8);
                let Format::Int8 { inputs, .. } = format else {
                    panic!("{kernels:?}: int8 packed as {format:?}");
                };
                let want = plain_levels(&x, &map, inputs);
                assert!(want.contains(&0) && want.contains(&inputs));
                assert!(want.iter().any(|&l| l != 0 && l != inputs));
                let mut quads = vec![u32::MAX; k.div_ceil(4) + 3];
                kernels.quantize_u8(&x, &map, &mut quads);
                let bytes: Vec<u8> = quads.iter().flat_map(|w| w.to_le_bytes()).collect();
                assert_eq!(&bytes[..k], &want[..], "{kernels:?}, {k} channels");
                assert!(bytes[k..].iter().all(|&b| b == 0), "{kernels:?}: padding");
            }
        }
    }

    /// Levels around a zero point per channel (inputs without a ReLU): the product with the
    /// epilogue of [`Packed::int8_offsets`] equals the integer product of the levels less
    /// their zero points, scaled by the column's scale (within the two roundings of f32).
    #[test]
    fn int8_offsets_take_the_zero_points_off() {
        for &(m, k, n) in &REDUCED_SHAPES {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.1) / 3.3)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.2) / 4.7)
                .collect();
            let zeros: Vec<f32> = (0..k).map(|i| (i % 9) as f32 * 15.0 - 20.0).collect();
            let map = Affine::new(vec![20.0; k], zeros.clone(), true);
            for &kernels in &Kernels::all_in(Precision::Int8) {
                let format = kernels.format(Precision::Int8);
                let Format::Int8 { levels, inputs } = format else {
                    panic!("{kernels:?}: int8 packed as {format:?}");
                };
                let (qb, col_scales) = quantized_weights(k, n, &b, levels);
                let packed = Packed::new(format, k, n, |r, c| b[r * n + c]);
                let shift: Vec<f32> = packed.int8_offsets(&zeros).iter().map(|o| -o).collect();
                let ones = vec![1.0; n];
                let epi = Epilogue {
                    scale: &ones,
                    shift: &shift,
                    relu: false,
                };
                let mut got = vec![f32::NAN; m * n];
                let dst = MatMut {
                    data: &mut got,
                    ld: n,
                };
                product_activated(
                    kernels,
                    m,
                    (Mat { data: &a, ld: k }, &map),
                    &packed,
                    dst,
                    Some(epi),
                );
                for r in 0..m {
                    let q = plain_levels(&a[r * k..][..k], &map, inputs);
                    for c in 0..n {
                        let exact: i64 = (0..k)
                            .map(|i| (i64::from(q[i]) - zeros[i] as i64) * i64::from(qb[i * n + c]))
                            .sum();
                        let want = exact as f32 * col_scales[c];
                        let g = got[r * n + c];
                        let bound = 1e-6 * col_scales[c] * (k as f32) * 255.0 * 127.0;
                        assert!(
                            (g - want).abs() <= bound,
                            "{kernels:?} {m}×{k}×{n} ({r}, {c}): {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn int8_products_of_activated_rows_approach_the_f32_product() {
        let all = Kernels::all_in(Precision::Int8);
        let (m, k, n) = (37, 150, 40);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 17) as f32 - 8.3) / 9.1)
            .collect();
        let act = Affine::new(
            (0..k).map(|i| 0.5 + (i % 7) as f32 / 10.0).collect(),
            (0..k).map(|i| (i % 5) as f32 / 10.0 - 0.2).collect(),
            true,
        );
        let a: Vec<f32> = x
            .chunks_exact(k)
            .flat_map(|row| {
                let mut out = vec![0.0; k];
                act.each(row, &mut out, |d, v| *d = v);
                out
            })
            .collect();
        let want = reference(m, k, n, &a, &b);
        let scale: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 / 10.0).collect();
        let shift: Vec<f32> = (0..n).map(|i| i as f32 / 3.0 - 2.0).collect();
        let epi = Epilogue {
            scale: &scale,
            shift: &shift,
            relu: true,
        };
        let largest = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        // Static levels as a BatchNorm of weight 0.3 and bias 0 would give them (the mapped
        // values stay below 2.4, its range): the map divided by the step, the weights times it.
        let (scale1, shift1, _) = act.parts();
        for &kernels in &all {
            let format = kernels.format(Precision::Int8);
            let Format::Int8 { inputs, .. } = format else {
                panic!("{kernels:?}: int8 packed as {format:?}");
            };
            let step = level_step(0.3, 0.0, inputs);
            let map = Affine::new(
                scale1.iter().map(|s| s / step).collect(),
                shift1.iter().map(|t| t / step).collect(),
                true,
            );
            let packed = Packed::new(format, k, n, |r, c| b[r * n + c] * step);
            let mut got = vec![f32::NAN; m * n];
            let dst = MatMut {
                data: &mut got,
                ld: n,
            };
            let lhs = (Mat { data: &x, ld: k }, &map);
            product_activated(kernels, m, lhs, &packed, dst, Some(epi));
            for r in 0..m {
                for c in 0..n {
                    let w = (want[r * n + c] * scale[c] + shift[c]).max(0.0);
                    let g = got[r * n + c];
                    // Each factor within half a step of its 255 levels, or of its 127 (or 63).
                    assert!(
                        (g - w).abs() <= 0.02 * largest * scale[c],
                        "{kernels:?} ({r}, {c}): {g} vs {w}"
                    );
                }
            }
        }
    }
}
