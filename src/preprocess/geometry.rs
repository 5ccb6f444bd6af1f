//! torchvision's size arithmetic on PIL images: `Resize(int)` (the shorter side) and
//! `CenterCrop` (zero padding where the crop is larger than the image), as torchvision 0.29 does
//! it, odd sizes included.

use image::RgbImage;

/// The size `Resize(shorter)` gives a `width`×`height` image: the shorter side becomes
/// `shorter`, the longer one `int(shorter * long / short)` (Python's true division, truncated).
pub fn shorter_side(width: u32, height: u32, shorter: u32) -> (u32, u32) {
    let (short, long) = (width.min(height), width.max(height));
    // The product is exact in f64 and the quotient correctly rounded, as in Python.
    let new_long = (f64::from(shorter) * f64::from(long) / f64::from(short)) as u32;
    if width <= height {
        (shorter, new_long)
    } else {
        (new_long, shorter)
    }
}

/// Where a crop of `crop` pixels starts in `size` pixels along one axis: torchvision pads with
/// `(crop − size) // 2` pixels before when the crop is larger (a negative start), else starts at
/// `round((size − crop) / 2)` with Python's rounding, half to even.
fn crop_start(size: u32, crop: u32) -> i64 {
    if crop > size {
        -i64::from((crop - size) / 2)
    } else {
        (f64::from(size - crop) / 2.0).round_ties_even() as i64
    }
}

/// `CenterCrop((height, width))` of torchvision: the centre `width`×`height` pixels, black where
/// the crop reaches beyond the image.
pub fn center_crop(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (x0, y0) = (
        crop_start(image.width(), width),
        crop_start(image.height(), height),
    );
    RgbImage::from_fn(width, height, |x, y| {
        let (sx, sy) = (i64::from(x) + x0, i64::from(y) + y0);
        let inside = (0..i64::from(image.width())).contains(&sx)
            && (0..i64::from(image.height())).contains(&sy);
        if inside {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shorter_side_is_resized_and_the_longer_truncated() {
        assert_eq!(shorter_side(640, 427, 256), (383, 256)); // 383.7…
        assert_eq!(shorter_side(300, 500, 256), (256, 426)); // 426.6…
        assert_eq!(shorter_side(512, 512, 256), (256, 256));
        assert_eq!(shorter_side(17, 29, 256), (256, 436)); // 436.7…
    }

    #[test]
    fn crop_offsets_round_half_to_even_and_pad_before_by_the_floor() {
        assert_eq!(crop_start(257, 224), 16); // round(16.5) = 16
        assert_eq!(crop_start(259, 224), 18); // round(17.5) = 18
        assert_eq!(crop_start(256, 224), 16);
        assert_eq!(crop_start(224, 224), 0);
        assert_eq!(crop_start(28, 32), -2);
        assert_eq!(crop_start(27, 32), -2); // 5 // 2 before, 3 after
    }

    #[test]
    fn a_crop_beyond_the_image_is_padded_with_black() {
        let image = RgbImage::from_pixel(3, 2, image::Rgb([9, 9, 9]));
        let out = center_crop(&image, 5, 2);
        let row: Vec<u8> = (0..5).map(|x| out.get_pixel(x, 1)[0]).collect();
        assert_eq!(row, [0, 9, 9, 9, 0]);
    }
}
