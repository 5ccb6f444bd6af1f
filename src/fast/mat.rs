//! The data the fast path's layers pass around, and nothing that computes: row-major matrices
//! (NHWC activations: one row per pixel, one column per channel, rows `ld` apart so that a dense
//! block's layers can write their channels side by side), the grid of a batch of feature maps, a
//! convolution window, and per-channel affine maps (a folded BatchNorm, maybe with its ReLU).
//!
//! Every other module of the fast path may use this one; it uses none of them.

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

/// A per-column map `x·scale + shift` (then `max(·, 0)` if `relu`) applied to the product.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epilogue<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub relu: bool,
}

/// A row stride of at least `c` floats and an odd number of 64-byte cache lines: the rows a
/// product reads together then fall into different L1 cache sets (with a stride of 4 KiB they
/// would all compete for one).
pub(crate) fn spread_stride(c: usize) -> usize {
    let lines = c.div_ceil(16);
    16 * (lines | 1)
}

/// An eval-mode BatchNorm as `x·scale + shift` per channel, optionally followed by a ReLU.
#[derive(Clone, Debug)]
pub(crate) struct Affine {
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

impl Affine {
    /// The map `x·scale + shift` (then the ReLU if `relu`), per channel.
    pub(crate) fn new(scale: Vec<f32>, shift: Vec<f32>, relu: bool) -> Self {
        Self { scale, shift, relu }
    }

    /// The scale and shift per channel, and whether the ReLU follows (for the x86-64 kernels).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
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
