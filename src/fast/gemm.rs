//! The one matrix product of the fast path: `dst[m × n] = lhs[m × k] · rhs[k × n]`, pixels as
//! rows, with the right-hand side (a layer's weights) packed once at load into column panels.
//!
//! A register-blocked kernel, written once over [`Simd`], reads the activations in place (one
//! broadcast per row and step of `k`) and the packed weights as whole vectors, so nothing is
//! copied per call; an optional per-column scale-shift(-clamp) is applied as results leave the
//! registers. Each instruction set instantiates it with its own block shape (`isa/`).

use super::isa::{Kernels, Simd};
use super::kernels::{Mat, MatMut};

/// Columns of one packed panel: two AVX-512 vectors of f32, four AVX2 ones.
pub(crate) const PANEL: usize = 32;

/// A per-column map `x·scale + shift` (then `max(·, 0)` if `relu`) applied to the product.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epilogue<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub relu: bool,
}

/// A right-hand side [k × n], stored as consecutive row-major panels of [`PANEL`] columns (the
/// last one zero-padded), so that each step of `k` reads whole vectors.
#[derive(Clone, Debug)]
pub(crate) struct Packed {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl Packed {
    /// Packs the matrix whose element (row `r`, column `c`) is `at(r, c)`.
    pub(crate) fn new(k: usize, n: usize, at: impl Fn(usize, usize) -> f32) -> Self {
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0.0; panels * k * PANEL];
        for (p, panel) in data.chunks_exact_mut((k * PANEL).max(1)).enumerate() {
            for (r, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    let c = p * PANEL + j;
                    if c < n {
                        *v = at(r, c);
                    }
                }
            }
        }
        Self { k, n, data }
    }

    /// Number of columns.
    pub(crate) fn cols(&self) -> usize {
        self.n
    }

    /// Panel `p`: its data [k × PANEL] and how many of its columns are real.
    fn panel(&self, p: usize) -> (&[f32], usize) {
        let cols = PANEL.min(self.n - p * PANEL);
        (&self.data[p * self.k * PANEL..][..self.k * PANEL], cols)
    }

    /// Number of panels.
    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }
}

/// The whole product, panel after panel, then `epilogue`'s map (given for all of rhs's
/// columns); `dst`'s rows must hold rhs's columns.
pub(crate) fn product(
    kernels: Kernels,
    m: usize,
    lhs: Mat,
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
    for p in 0..rhs.panels() {
        let (panel, cols) = rhs.panel(p);
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
        kernels.product_panel(PanelJob {
            m,
            k,
            lhs,
            panel,
            cols,
            dst: MatMut {
                data: &mut dst.data[first..],
                ld: dst.ld,
            },
            epilogue,
        });
    }
}

/// One panel's product, its bounds checked by [`product`]: `dst[m × cols] = lhs[m × k] ·
/// panel[k × cols]`, then the epilogue (for the panel's columns).
pub(crate) struct PanelJob<'a> {
    m: usize,
    k: usize,
    lhs: Mat<'a>,
    panel: &'a [f32],
    cols: usize,
    dst: MatMut<'a>,
    epilogue: Option<Epilogue<'a>>,
}

impl PanelJob<'_> {
    /// Rows and columns of the job.
    pub(crate) fn extent(&self) -> (usize, usize) {
        (self.m, self.cols)
    }

    /// The register block of at most `mr` rows × `vectors` vectors of `lanes` at row `r` and
    /// column `first` (`r < m`, `first < cols`).
    #[inline(always)]
    pub(crate) fn block(
        &mut self,
        r: usize,
        first: usize,
        mr: usize,
        width: usize,
        lanes: usize,
    ) -> Block {
        assert!(r < self.m && first < self.cols, "block outside the job");
        let live = width.min(self.cols - first);
        let epilogue = self
            .epilogue
            .map(|e| (e.scale[first..].as_ptr(), e.shift[first..].as_ptr(), e.relu));
        Block {
            rows: mr.min(self.m - r),
            vectors: live.div_ceil(lanes),
            k: self.k,
            a: self.lhs.data[r * self.lhs.ld..].as_ptr(),
            lda: self.lhs.ld,
            b: self.panel[first..].as_ptr(),
            c: self.dst.data[r * self.dst.ld + first..].as_mut_ptr(),
            ldc: self.dst.ld,
            live,
            epilogue,
        }
    }
}

/// One register block of a [`PanelJob`]: `rows` rows × `live` columns (in `vectors` vectors),
/// over all of `k`, as raw pointers into the job's checked slices.
pub(crate) struct Block {
    pub rows: usize,
    pub vectors: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    /// The block's first column in the panel, whose rows are [`PANEL`] apart.
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    live: usize,
    /// Scale and shift at the block's first column, and the clamp.
    epilogue: Option<(*const f32, *const f32, bool)>,
}

/// Cuts a [`PanelJob`] into register blocks of up to the first listed rows × the first listed
/// vectors of `$simd`, and runs each by [`block`] monomorphised for its shape (one per listed
/// rows × vectors), so that the accumulators stay in registers. Expanded inside each instruction
/// set's entry point, with its target features: [`block`] is compiled inside a function that has
/// them, so that the vector operations are inlined before the accumulators are given registers.
macro_rules! product_panel {
    ($job:expr, $simd:ty, $features:literal, $rows:tt, $vectors:tt) => {
        #[target_feature(enable = $features)]
        unsafe fn kernel<const R: usize, const V: usize>(block: &$crate::fast::gemm::Block) {
            $crate::fast::gemm::block::<$simd, R, V>(block)
        }
        $crate::fast::gemm::product_panel!(@blocks $job, $simd, $rows, $vectors);
    };
    ($job:expr, $simd:ty, $rows:tt, $vectors:tt) => {
        unsafe fn kernel<const R: usize, const V: usize>(block: &$crate::fast::gemm::Block) {
            $crate::fast::gemm::block::<$simd, R, V>(block)
        }
        $crate::fast::gemm::product_panel!(@blocks $job, $simd, $rows, $vectors);
    };
    (@blocks $job:expr, $simd:ty, [$mr:literal $($rows:literal)*], $vectors:tt) => {
        let mut job = $job;
        let lanes = <$simd as $crate::fast::isa::Simd>::LANES;
        let width = $crate::fast::gemm::product_panel!(@first $vectors) * lanes;
        let (m, cols) = job.extent();
        // Rows outermost, so that a block's rows of the left-hand side are read again from L1.
        for r in (0..m).step_by($mr) {
            for first in (0..cols).step_by(width) {
                let block = job.block(r, first, $mr, width, lanes);
                match block.rows {
                    $mr => $crate::fast::gemm::product_panel!(@vectors block, $mr, $vectors),
                    $(
                        $rows => $crate::fast::gemm::product_panel!(@vectors block, $rows, $vectors),
                    )*
                    _ => unreachable!("a register block of more rows than the kernel has"),
                }
            }
        }
    };
    (@first [$first:literal $($rest:literal)*]) => {
        $first
    };
    (@vectors $block:ident, $r:literal, [$($v:literal)*]) => {
        match $block.vectors {
            $( $v => kernel::<$r, $v>(&$block), )*
            _ => unreachable!("a register block of more vectors than the kernel has"),
        }
    };
}
pub(crate) use product_panel;

/// R rows × V vectors of columns, accumulated over all of `k` in registers, then the epilogue and
/// the stores of the block's live columns.
///
/// # Safety
/// `block` comes from [`PanelJob::blocks`], with R its rows and V its vectors.
#[inline(always)]
pub(crate) unsafe fn block<S: Simd, const R: usize, const V: usize>(block: &Block) {
    let (a, lda, c, ldc) = (block.a, block.lda, block.c, block.ldc);
    let mut acc = [[S::zero(); V]; R];
    for kk in 0..block.k {
        // The panel's rows are zero-padded to PANEL columns: whole vectors are always there.
        let bp = block.b.add(kk * PANEL);
        let mut bv = [S::zero(); V];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = S::load(bp.add(v * S::LANES));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let x = S::splat(*a.add(r * lda + kk));
            for (v, s) in row.iter_mut().enumerate() {
                *s = x.mul_add(bv[v], *s);
            }
        }
    }
    for v in 0..V {
        let first = v * S::LANES;
        let live = block.live.saturating_sub(first).min(S::LANES);
        if live == 0 {
            break;
        }
        let epilogue = block.epilogue.map(|(s, t, relu)| {
            (
                S::load_upto(s.add(first), live),
                S::load_upto(t.add(first), live),
                relu,
            )
        });
        for (r, row) in acc.iter().enumerate() {
            let mut x = row[v];
            if let Some((scale, shift, relu)) = epilogue {
                x = x.mul_add(scale, shift);
                if relu {
                    x = x.max(S::zero());
                }
            }
            x.store_upto(c.add(r * ldc + first), live);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let packed = Packed::new(k, n, |r, c| b[r * n + c]);
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
}
