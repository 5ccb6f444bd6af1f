//! Patch gathering (im2col) for the convolutions that are neither 1×1 nor Winograd's: the stem,
//! and 3×3 convolutions of other strides or paddings.

use crate::fast::mat::{Grid, Mat, Window};

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
