//! The one matrix product of the fast path: `dst[m × n] = lhs[m × k] · rhs[k × n]`, pixels as
//! rows, with the right-hand side (a layer's weights) packed once at load into column panels.
//!
//! On CPUs with AVX-512 a register-blocked kernel reads the activations in place (one broadcast
//! per row and step of `k`) and the packed weights as whole vectors, so nothing is copied per
//! call; an optional per-column scale-shift(-clamp) is applied as results leave the registers.
//! Elsewhere each panel goes through the `gemm` crate, which picks the CPU's best kernels itself.

use std::sync::atomic::{AtomicBool, Ordering};

use gemm::Parallelism;

/// Columns of one packed panel: two AVX-512 vectors of f32.
pub(crate) const PANEL: usize = 32;

/// Rows one kernel call keeps in registers (with two vectors per row: 24 accumulators).
pub(crate) const MR: usize = 12;

/// Set by tests to run the portable (`gemm` crate) product on a CPU with AVX-512.
static FORCE_PORTABLE: AtomicBool = AtomicBool::new(false);

/// Whether the AVX-512 kernels run here.
pub(crate) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !FORCE_PORTABLE.load(Ordering::Relaxed) && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// While alive, every product takes the portable path (`on`) or the best one (`!on`); tests
/// that hold one run one at a time.
#[cfg(test)]
pub(crate) struct ForcePortable(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

#[cfg(test)]
impl ForcePortable {
    pub(crate) fn new(on: bool) -> Self {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        FORCE_PORTABLE.store(on, Ordering::Relaxed);
        Self(guard)
    }
}

#[cfg(test)]
impl Drop for ForcePortable {
    fn drop(&mut self) {
        FORCE_PORTABLE.store(false, Ordering::Relaxed);
    }
}

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
    pub(crate) fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }
}

/// `dst[m × cols of panel p] = lhs[m × k] · rhs's panel p` (then the epilogue's map, given for
/// all of rhs's columns), `lhs` rows `lhs_ld` apart, `dst` rows `dst_ld` apart and starting at
/// the panel's first column.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product_panel(
    m: usize,
    lhs: &[f32],
    lhs_ld: usize,
    rhs: &Packed,
    p: usize,
    dst: &mut [f32],
    dst_ld: usize,
    epilogue: Option<Epilogue>,
) {
    let (panel, cols) = rhs.panel(p);
    let k = rhs.k;
    if m == 0 {
        return;
    }
    assert!(
        k <= lhs_ld && cols <= dst_ld,
        "product: row strides too small"
    );
    assert!(lhs.len() >= (m - 1) * lhs_ld + k, "product: lhs too short");
    assert!(
        dst.len() >= (m - 1) * dst_ld + cols,
        "product: dst too short"
    );
    let epilogue = epilogue.map(|e| {
        let range = p * PANEL..p * PANEL + cols;
        Epilogue {
            scale: &e.scale[range.clone()],
            shift: &e.shift[range],
            relu: e.relu,
        }
    });
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F is present; the assertions above keep every row the kernels touch
        // inside `lhs` and `dst`, and the panel holds k × PANEL values.
        unsafe { kernel512::product(m, k, lhs, lhs_ld, panel, cols, dst, dst_ld, epilogue) };
        return;
    }
    portable(m, k, lhs, lhs_ld, panel, cols, dst, dst_ld);
    if let Some(e) = epilogue {
        for row in dst.chunks_mut(dst_ld).take(m) {
            let pairs = e.scale.iter().zip(e.shift);
            for (v, (&s, &t)) in row[..cols].iter_mut().zip(pairs) {
                *v = *v * s + t;
                if e.relu {
                    *v = v.max(0.0);
                }
            }
        }
    }
}

/// The whole product, panel after panel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product(
    m: usize,
    lhs: &[f32],
    lhs_ld: usize,
    rhs: &Packed,
    dst: &mut [f32],
    dst_ld: usize,
    epilogue: Option<Epilogue>,
) {
    for p in 0..rhs.panels() {
        let dst = &mut dst[p * PANEL..];
        product_panel(m, lhs, lhs_ld, rhs, p, dst, dst_ld, epilogue);
    }
}

#[allow(clippy::too_many_arguments)]
fn portable(
    m: usize,
    k: usize,
    lhs: &[f32],
    lhs_ld: usize,
    panel: &[f32],
    cols: usize,
    dst: &mut [f32],
    dst_ld: usize,
) {
    // SAFETY: the caller's assertions keep the m × k reads of `lhs`, the k × cols reads of the
    // panel and the m × cols writes of `dst` inside their slices; `dst` aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            cols,
            k,
            dst.as_mut_ptr(),
            1,
            dst_ld as isize,
            false,
            lhs.as_ptr(),
            1,
            lhs_ld as isize,
            panel.as_ptr(),
            1,
            PANEL as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel512 {
    use super::{Epilogue, MR, PANEL};
    use std::arch::x86_64::*;

    /// See [`super::product_panel`]; the caller has checked the bounds and AVX-512F.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product(
        m: usize,
        k: usize,
        lhs: &[f32],
        lhs_ld: usize,
        panel: &[f32],
        cols: usize,
        dst: &mut [f32],
        dst_ld: usize,
        epilogue: Option<Epilogue>,
    ) {
        let (a, b, c) = (lhs.as_ptr(), panel.as_ptr(), dst.as_mut_ptr());
        let mut r = 0;
        while r < m {
            let rows = MR.min(m - r);
            let (a, c) = (a.add(r * lhs_ld), c.add(r * dst_ld));
            // One monomorphised kernel per (rows, vectors): the accumulators stay in registers.
            macro_rules! dispatch {
                ($v:literal) => {
                    match rows {
                        12 => tile::<12, $v>(k, a, lhs_ld, b, c, dst_ld, cols, epilogue),
                        11 => tile::<11, $v>(k, a, lhs_ld, b, c, dst_ld, cols, epilogue),
                        10 => tile::<10, $v>(k, a, lhs_ld, b, c, dst_ld, cols, epilogue),
                        9 => tile::<9, $v>(k, a, lhs_ld, b, c, dst_ld, cols, epilogue),
                        8 => tile::<8, $v>(k, a, lhs_ld, b, c, dst_ld, cols, epilogue),
                        7 => tile::<7, $v>(k, a, lhs_ld, b, c, dst_ld, cols, epilogue),
                        6 => tile::<6, $v>(k, a, lhs_ld, b, c, dst_ld, cols, epilogue),
                        5 => tile::<5, $v>(k, a, lhs_ld, b, c, dst_ld, cols, epilogue),
                        4 => tile::<4, $v>(k, a, lhs_ld, b, c, dst_ld, cols, epilogue),
                        3 => tile::<3, $v>(k, a, lhs_ld, b, c, dst_ld, cols, epilogue),
                        2 => tile::<2, $v>(k, a, lhs_ld, b, c, dst_ld, cols, epilogue),
                        _ => tile::<1, $v>(k, a, lhs_ld, b, c, dst_ld, cols, epilogue),
                    }
                };
            }
            if cols > 16 {
                dispatch!(2)
            } else {
                dispatch!(1)
            }
            r += rows;
        }
    }

    /// R rows × V vectors of columns, accumulated over all of `k` in registers.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile<const R: usize, const V: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        epilogue: Option<Epilogue>,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for kk in 0..k {
            let bp = b.add(kk * PANEL);
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(bp.add(16 * v));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(r * lda + kk));
                for (v, s) in row.iter_mut().enumerate() {
                    *s = _mm512_fmadd_ps(x, bv[v], *s);
                }
            }
        }
        for v in 0..V {
            let first = 16 * v;
            let live = cols.saturating_sub(first).min(16);
            if live == 0 {
                break;
            }
            let mask: __mmask16 = if live == 16 { !0 } else { (1 << live) - 1 };
            let (scale, shift) = match &epilogue {
                Some(e) => (
                    _mm512_maskz_loadu_ps(mask, e.scale.as_ptr().add(first)),
                    _mm512_maskz_loadu_ps(mask, e.shift.as_ptr().add(first)),
                ),
                None => (_mm512_set1_ps(1.0), _mm512_setzero_ps()),
            };
            let relu = matches!(&epilogue, Some(e) if e.relu);
            for (r, row) in acc.iter().enumerate() {
                let mut x = row[v];
                if epilogue.is_some() {
                    x = _mm512_fmadd_ps(x, scale, shift);
                    if relu {
                        x = _mm512_max_ps(x, _mm512_setzero_ps());
                    }
                }
                _mm512_mask_storeu_ps(c.add(r * ldc + first), mask, x);
            }
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
            for portable in [false, true] {
                let _mode = ForcePortable::new(portable);
                let mut got = vec![f32::NAN; m * (n + 3)];
                product(m, &a, k, &packed, &mut got, n + 3, None);
                let epi = Epilogue {
                    scale: &scale,
                    shift: &shift,
                    relu: true,
                };
                let mut act = vec![f32::NAN; m * n];
                product(m, &a, k, &packed, &mut act, n, Some(epi));
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
