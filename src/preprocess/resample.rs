//! Pillow's resampling (`Image.resize` with `BILINEAR` or `BICUBIC`) on 8-bit RGB, pixel for
//! pixel, written from its documented behaviour and checked against Pillow 13's output
//! (tests/pillow.rs).
//!
//! Pillow resizes separably: first along rows (when the width changes), rounding the
//! intermediate image to 8 bits, then along columns (when the height changes). Each output pixel
//! is a weighted sum over the source pixels under the filter, whose support is widened by the
//! shrink factor when shrinking (antialiasing). The weights are normalised to sum to one in
//! double precision, then turned into signed fixed point with 22 fractional bits, each rounded
//! half away from zero; the sum starts at one half and is shifted back and clamped to 0..=255.

use image::RgbImage;

use crate::config::Interpolation;

/// Fractional bits of the fixed-point weights (32 − 8 bits of pixel − 2 bits of headroom).
const PRECISION_BITS: u32 = 22;

/// A separable filter: its kernel and the half-width of its support at scale 1.
struct Filter {
    support: f64,
    kernel: fn(f64) -> f64,
}

/// The triangle of `BILINEAR`.
const BILINEAR: Filter = Filter {
    support: 1.0,
    kernel: |x| {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    },
};

/// Keys' cubic convolution with a = −0.5, the cubic of `BICUBIC`.
const BICUBIC: Filter = Filter {
    support: 2.0,
    kernel: |x| {
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    },
};

/// The fixed-point weights of a resize along one axis: output pixel `i` sums the `len` source
/// pixels from `start[i]`, weighted by `weights[i * width ..][..len]`.
struct Weights {
    start: Vec<usize>,
    len: Vec<usize>,
    width: usize,
    weights: Vec<i32>,
}

impl Weights {
    fn new(in_size: u32, out_size: u32, filter: &Filter) -> Self {
        let scale = f64::from(in_size) / f64::from(out_size);
        let filter_scale = scale.max(1.0);
        let support = filter.support * filter_scale;
        let width = support.ceil() as usize * 2 + 1;
        let n = out_size as usize;
        let (mut start, mut len) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut weights = vec![0i32; n * width];
        let mut w = vec![0f64; width];
        // Pillow multiplies by the reciprocal (dividing would round differently).
        let inverse_scale = 1.0 / filter_scale;
        for i in 0..n {
            let center = (i as f64 + 0.5) * scale;
            // Truncation towards zero, then clamping to the image, as Pillow bounds the window.
            let first = ((center - support + 0.5) as i64).max(0);
            let last = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let count = (last - first).max(0) as usize;
            let mut total = 0.0;
            for (j, wj) in w[..count].iter_mut().enumerate() {
                *wj = (filter.kernel)(((j as i64 + first) as f64 - center + 0.5) * inverse_scale);
                total += *wj;
            }
            for (wj, fixed) in w[..count].iter().zip(&mut weights[i * width..]) {
                let normal = if total == 0.0 { *wj } else { *wj / total };
                *fixed = to_fixed(normal);
            }
            start.push(first as usize);
            len.push(count);
        }
        Self {
            start,
            len,
            width,
            weights,
        }
    }

    /// The window of output pixel `i`: its first source pixel and its weights.
    fn window(&self, i: usize) -> (usize, &[i32]) {
        let w = &self.weights[i * self.width..];
        (self.start[i], &w[..self.len[i]])
    }
}

/// A weight in fixed point, rounded half away from zero.
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    (if scaled < 0.0 {
        scaled - 0.5
    } else {
        scaled + 0.5
    })
    .trunc() as i32
}

/// A weighted sum in fixed point back to 8 bits: shifted with rounding (the sum starts at one
/// half) and clamped.
fn to_u8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// Resizes along rows to `width`.
fn horizontal(image: &RgbImage, width: u32, filter: &Filter) -> RgbImage {
    let weights = Weights::new(image.width(), width, filter);
    let (w_in, h) = (image.width() as usize, image.height() as usize);
    let src = image.as_raw();
    let mut out = vec![0u8; width as usize * h * 3];
    for (y, row) in out.chunks_exact_mut(width as usize * 3).enumerate() {
        let src_row = &src[y * w_in * 3..(y + 1) * w_in * 3];
        for (x, pixel) in row.chunks_exact_mut(3).enumerate() {
            let (first, w) = weights.window(x);
            for (c, value) in pixel.iter_mut().enumerate() {
                let sum = w.iter().enumerate().fold(HALF, |acc, (j, &k)| {
                    acc + i64::from(src_row[(first + j) * 3 + c]) * i64::from(k)
                });
                *value = to_u8(sum);
            }
        }
    }
    RgbImage::from_raw(width, h as u32, out).expect("buffer of the image's size")
}

/// Resizes along columns to `height`.
fn vertical(image: &RgbImage, height: u32, filter: &Filter) -> RgbImage {
    let weights = Weights::new(image.height(), height, filter);
    let stride = image.width() as usize * 3;
    let src = image.as_raw();
    let mut out = vec![0u8; stride * height as usize];
    for (y, row) in out.chunks_exact_mut(stride).enumerate() {
        let (first, w) = weights.window(y);
        for (i, value) in row.iter_mut().enumerate() {
            let sum = w.iter().enumerate().fold(HALF, |acc, (j, &k)| {
                acc + i64::from(src[(first + j) * stride + i]) * i64::from(k)
            });
            *value = to_u8(sum);
        }
    }
    RgbImage::from_raw(image.width(), height, out).expect("buffer of the image's size")
}

/// `image` resized to `width`×`height` as Pillow's `Image.resize` does with the filter of
/// `interpolation` (`Nearest` is the `image` crate's nearest neighbour, not Pillow's).
pub fn resize(image: &RgbImage, width: u32, height: u32, interpolation: Interpolation) -> RgbImage {
    let filter = match interpolation {
        Interpolation::Bilinear => &BILINEAR,
        Interpolation::Bicubic => &BICUBIC,
        Interpolation::Nearest => {
            return image::imageops::resize(
                image,
                width,
                height,
                image::imageops::FilterType::Nearest,
            )
        }
    };
    let rows_done = if image.width() == width {
        None
    } else {
        Some(horizontal(image, width, filter))
    };
    let after_rows = rows_done.as_ref().unwrap_or(image);
    if after_rows.height() == height {
        rows_done.unwrap_or_else(|| image.clone())
    } else {
        vertical(after_rows, height, filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point_within_rounding() {
        for (n_in, n_out) in [(512, 256), (17, 32), (97, 32), (3, 1000), (1000, 3)] {
            for filter in [&BILINEAR, &BICUBIC] {
                let weights = Weights::new(n_in, n_out, filter);
                for i in 0..n_out as usize {
                    let (first, w) = weights.window(i);
                    assert!(first + w.len() <= n_in as usize);
                    let total: i64 = w.iter().map(|&k| i64::from(k)).sum();
                    assert!(
                        (total - (1 << PRECISION_BITS)).abs() <= w.len() as i64,
                        "{n_in}→{n_out} pixel {i}: {total}"
                    );
                }
            }
        }
    }

    #[test]
    fn shrinking_by_two_with_bilinear_averages_pairs() {
        // Scale 2: the triangle widens to support 2, centred between two pixels, weights
        // 1/8, 3/8, 3/8, 1/8 inside the image.
        let image = RgbImage::from_fn(8, 1, |x, _| image::Rgb([(x * 16) as u8, 0, 255]));
        let out = resize(&image, 4, 1, Interpolation::Bilinear);
        let weights = Weights::new(8, 4, &BILINEAR);
        let (first, w) = weights.window(1);
        assert_eq!(first, 1);
        assert_eq!(w, &[1 << 19, 3 << 19, 3 << 19, 1 << 19]);
        // (16 + 3·32 + 3·48 + 64) / 8 = 40.
        assert_eq!(out.get_pixel(1, 0).0, [40, 0, 255]);
    }
}
