//! The fast path's building blocks: per-channel affine maps, patch gathering (im2col) with the
//! activation applied on the way.
//!
//! Activations are NHWC matrices: one row per pixel (image, y, x), one column per channel, rows
//! `ld` floats apart so that a dense block's layers can write their channels side by side.

use crate::fast::gemm::Epilogue;
use crate::fast::isa::Kernels;
use crate::fast::weights::to_vec;
use candle_nn::BatchNorm;

/// A row-major matrix as a product reads it: rows `ld` values apart in `data` (f32, or bf16
/// pairs for a bf16 product).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mat<'a, T = f32> {
    pub data: &'a [T],
    pub ld: usize,
}

/// A row-major matrix as a product writes it: rows `ld` floats apart in `data`.
#[derive(Debug)]
pub(crate) struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub ld: usize,
}

/// An eval-mode BatchNorm as `x·scale + shift` per channel, optionally followed by a ReLU.
#[derive(Clone, Debug)]
pub(crate) struct Affine {
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

impl Affine {
    pub(crate) fn from_bn(bn: &BatchNorm, relu: bool) -> candle_core::Result<Self> {
        let mean = to_vec(bn.running_mean())?;
        let var = to_vec(bn.running_var())?;
        let (weight, bias) = match bn.weight_and_bias() {
            Some((w, b)) => (to_vec(w)?, to_vec(b)?),
            None => (vec![1.0; mean.len()], vec![0.0; mean.len()]),
        };
        let eps = bn.eps();
        // Computed in f64 so that folding adds no rounding beyond the final f32 one.
        let (scale, shift) = (0..mean.len())
            .map(|i| {
                let s = f64::from(weight[i]) / (f64::from(var[i]) + eps).sqrt();
                (
                    s as f32,
                    (f64::from(bias[i]) - f64::from(mean[i]) * s) as f32,
                )
            })
            .unzip();
        Ok(Self { scale, shift, relu })
    }

    /// The map `x·scale + shift` (then the ReLU if `relu`), per channel.
    #[cfg(test)]
    pub(crate) fn new(scale: Vec<f32>, shift: Vec<f32>, relu: bool) -> Self {
        Self { scale, shift, relu }
    }

    /// The scale and shift per channel, and whether the ReLU follows.
    pub(crate) fn parts(&self) -> (&[f32], &[f32], bool) {
        (&self.scale, &self.shift, self.relu)
    }

    /// Number of channels.
    pub(crate) fn channels(&self) -> usize {
        self.scale.len()
    }

    /// The map as the epilogue of a product.
    pub(crate) fn epilogue(&self) -> Epilogue<'_> {
        Epilogue {
            scale: &self.scale,
            shift: &self.shift,
            relu: self.relu,
        }
    }

    /// `dst = act(src)` over the first `channels()` values.
    #[inline]
    pub(crate) fn apply(&self, kernels: Kernels, src: &[f32], dst: &mut [f32]) {
        kernels.affine(self, src, dst, |d, v| *d = v)
    }

    /// `dst += act(src)`: used to pool activated pixels.
    #[inline]
    pub(crate) fn accumulate(&self, kernels: Kernels, src: &[f32], dst: &mut [f32]) {
        kernels.affine(self, src, dst, |d, v| *d += v)
    }

    /// `store(dst[i], act(src[i]))` over the first `channels()` values: plain loops that each
    /// instruction set's entry point compiles, and the compiler vectorises, for it.
    #[inline(always)]
    pub(crate) fn each(&self, src: &[f32], dst: &mut [f32], store: impl Fn(&mut f32, f32)) {
        let c = self.channels();
        let (src, dst) = (&src[..c], &mut dst[..c]);
        let pairs = self.scale.iter().zip(&self.shift);
        if self.relu {
            for ((d, &x), (&s, &t)) in dst.iter_mut().zip(src).zip(pairs) {
                store(d, (x * s + t).max(0.0));
            }
        } else {
            for ((d, &x), (&s, &t)) in dst.iter_mut().zip(src).zip(pairs) {
                store(d, x * s + t);
            }
        }
    }
}

/// The spatial shape of a batch of feature maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grid {
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

impl Grid {
    pub(crate) fn pixels(&self) -> usize {
        self.n * self.h * self.w
    }
}

/// A convolution window: square kernel, stride and zero padding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Window {
    pub(crate) fn output(&self, g: Grid) -> Grid {
        let out = |s: usize| (s + 2 * self.pad - self.kernel) / self.stride + 1;
        Grid {
            n: g.n,
            h: out(g.h),
            w: out(g.w),
        }
    }
}

/// Gathers the patches of output pixels `rows` into `cols` ([rows × kernel²·c], taps in (ky, kx)
/// order, channels innermost); padding stays zero, as the convolution pads its input.
pub(crate) fn im2col(
    src: Mat,
    c: usize,
    input: Grid,
    win: Window,
    rows: std::ops::Range<usize>,
    cols: &mut [f32],
) {
    let out = win.output(input);
    let k = win.kernel;
    let width = k * k * c;
    for (r, patch) in rows.zip(cols.chunks_exact_mut(width)) {
        let n = r / (out.h * out.w);
        let oy = (r / out.w) % out.h;
        let ox = r % out.w;
        for ky in 0..k {
            let iy = (oy * win.stride + ky).wrapping_sub(win.pad);
            let taps = &mut patch[ky * k * c..][..k * c];
            if iy >= input.h {
                taps.fill(0.0);
                continue;
            }
            // The taps inside the image: kx with 0 ≤ ox·stride + kx − pad < w.
            let left = win.pad.saturating_sub(ox * win.stride).min(k);
            let right = (input.w + win.pad)
                .saturating_sub(ox * win.stride)
                .clamp(left, k);
            let pixel = |kx: usize| (n * input.h + iy) * input.w + ox * win.stride + kx - win.pad;
            taps[..left * c].fill(0.0);
            taps[right * c..].fill(0.0);
            if src.ld == c && right > left {
                // Neighbouring pixels' channels are contiguous: one copy for the row of taps.
                let from = pixel(left) * c;
                taps[left * c..right * c].copy_from_slice(&src.data[from..][..(right - left) * c]);
            } else {
                for kx in left..right {
                    taps[kx * c..][..c].copy_from_slice(&src.data[pixel(kx) * src.ld..][..c]);
                }
            }
        }
    }
}

impl Grid {
    /// (image, y, x) of pixel row `r`.
    #[inline]
    pub(crate) fn position(&self, r: usize) -> (usize, usize, usize) {
        (r / (self.h * self.w), (r / self.w) % self.h, r % self.w)
    }

    /// The row of pixel (image, y, x).
    #[inline]
    pub(crate) fn row(&self, n: usize, y: usize, x: usize) -> usize {
        (n * self.h + y) * self.w + x
    }
}
