//! The number formats of the reduced precisions, defined once for the packing, the kernels and
//! the tests: bf16 rounding and pairs, int8 weight scales and the static uint8 levels of the
//! inputs.

/// How a product's right-hand side (a layer's weights) is stored: chosen by the kernels that
/// will read it (`isa::Kernels::format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    F32,
    /// Pairs of bf16 values.
    Bf16,
    /// Quads of int8 values, `levels` steps either side of zero, for inputs of `inputs`
    /// uint8 levels (the steps of the static levels are folded into the weights).
    Int8 {
        levels: i8,
        inputs: u8,
    },
}

/// The levels of int8 weights for products that sum exactly in 32 bits (`vpdpbusd`, AMX).
pub(crate) const INT8_LEVELS: i8 = 127;

/// The levels of int8 weights for products that first sum uint8 × int8 products in 16 bits
/// (AVX2's `vpmaddubsw`, which saturates): one bit of the weights is given up, as oneDNN does
/// on such CPUs, and one of the inputs ([`PAIRED_INPUT_LEVELS`]).
pub(crate) const PAIRED_INT8_LEVELS: i8 = 63;

/// The levels of the uint8 inputs of products that sum exactly in 32 bits.
pub(crate) const INPUT_LEVELS: u8 = 255;

/// The levels of the uint8 inputs of AVX2's products: two of `vpmaddubsw`'s pair sums are
/// added in 16 bits before they are widened, so four products must fit in an i16:
/// 4 · 127 · 63 = 32004 ≤ 32767. One widening (`vpmaddwd`) per two steps instead of one per
/// step.
pub(crate) const PAIRED_INPUT_LEVELS: u8 = 127;

/// The scale of a column of weights whose largest magnitude is `max`: ±`levels` spans it (1
/// for a column of zeros).
pub(crate) fn weight_scale(max: f32, levels: i8) -> f32 {
    if max > 0.0 {
        max / f32::from(levels)
    } else {
        1.0
    }
}

/// `w` quantised with its column's `scale` to ±`levels`: the plain definition that the
/// packing uses.
pub(crate) fn quantize_weight(w: f32, scale: f32, levels: i8) -> i8 {
    let levels = f32::from(levels);
    (w / scale).round_ties_even().clamp(-levels, levels) as i8
}

/// Standard deviations above its mean that a channel's static uint8 range reaches: a BatchNorm
/// with weight γ and bias β gives values of mean β and deviation |γ| (from the running
/// statistics of the data it was trained on), so after its ReLU they lie in 0..β + K·|γ|, with
/// tails. Measured on the trained reference model (int8 logits against f32, relative to the
/// largest), for the inputs after a ReLU: K = 3 clips them, 3.2e-1; 4, 1.3e-1; 6, 1.9e-2; 8,
/// 9.3e-3; 12, 1.2e-2 (coarser steps); and for the transitions' inputs without one (the
/// others at 8): 4, 2.8e-2; 6, 1.5e-2; 8, 1.2e-2; 12, 1.5e-2.
pub(crate) const RANGE_DEVIATIONS: f32 = 8.0;

/// The step between a channel's static uint8 levels (its value at level 1), for values after a
/// BatchNorm with weight `gamma` and bias `beta` and its ReLU: `inputs` levels span
/// 0..β + [`RANGE_DEVIATIONS`]·|γ|. A channel whose range ends at or below 0 (it is nearly
/// always 0 after the ReLU) spans K·|γ| instead, and one with γ = 0 and β ≤ 0 (always 0) has a
/// step of 1.
pub(crate) fn level_step(gamma: f32, beta: f32, inputs: u8) -> f32 {
    let spread = RANGE_DEVIATIONS * gamma.abs();
    let top = beta + spread;
    let top = if top > 0.0 && top.is_finite() {
        top
    } else {
        spread
    };
    if top > 0.0 && top.is_finite() {
        top / f32::from(inputs)
    } else {
        1.0
    }
}

/// The step and zero point of a channel's static uint8 levels for values after a BatchNorm
/// with weight `gamma` and bias `beta` and no ReLU (a value is `(level − zero)·step`): `inputs`
/// levels span β ± [`RANGE_DEVIATIONS`]·|γ| (or β ± max(|β|, 1) where γ is 0: a constant). The
/// zero point is a whole number, so that products of levels can take it off in integers; it
/// may lie outside the levels (a range that does not contain 0).
pub(crate) fn signed_level_step(gamma: f32, beta: f32, inputs: u8) -> (f32, f32) {
    let spread = RANGE_DEVIATIONS * gamma.abs();
    let spread = if spread > 0.0 && spread.is_finite() {
        spread
    } else {
        beta.abs().max(1.0)
    };
    let step = 2.0 * spread / f32::from(inputs);
    let zero = ((spread - beta) / step).round_ties_even();
    if step.is_finite() && zero.is_finite() {
        (step, zero)
    } else {
        (1.0, 0.0)
    }
}

/// A mapped value (a row's value times the inverse of its channel's step, plus the shift) as
/// its uint8 level: clamped to 0..=`inputs` and rounded to the nearest integer (ties to even,
/// as `vcvtps2dq`), NaN to 0. The plain definition of the int8 products' static quantisation
/// that the kernels are tested against.
#[cfg(test)]
pub(crate) fn level(x: f32, inputs: u8) -> u8 {
    if x.is_nan() {
        return 0;
    }
    x.clamp(0.0, f32::from(inputs)).round_ties_even() as u8
}

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits: the rounding of
/// `vcvtne2ps2bf16`.
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        // Quiet, whatever the payload's low bits.
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// Two values rounded to bf16 in one word, `even` in the low half: the order in which
/// `vdpbf16ps` multiplies pairs.
pub(crate) fn bf16_pair(even: f32, odd: f32) -> u32 {
    u32::from(bf16_bits(odd)) << 16 | u32::from(bf16_bits(even))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The static ranges as documented: 0..β + 8·|γ| after a ReLU, whatever γ's sign; a
    /// channel nearly always 0 spans 8·|γ|; a channel always 0, or statistics that are not
    /// finite, step 1.
    #[test]
    fn steps_span_the_range_the_batchnorm_gives() {
        assert_eq!(level_step(0.5, 1.0, 255), 5.0 / 255.0);
        assert_eq!(level_step(-0.5, 1.0, 255), 5.0 / 255.0);
        assert_eq!(level_step(0.5, 1.0, 127), 5.0 / 127.0);
        assert_eq!(level_step(0.5, -10.0, 255), 4.0 / 255.0);
        assert_eq!(level_step(0.0, -1.0, 255), 1.0);
        assert_eq!(level_step(f32::NAN, 1.0, 255), 1.0);
        assert_eq!(level_step(f32::INFINITY, 1.0, 255), 1.0);
    }

    /// Without a ReLU: β ± 8·|γ| over the levels, a whole zero point where the value 0 falls
    /// (outside the levels for a range that does not hold 0); a constant channel spans
    /// β ± max(|β|, 1).
    #[test]
    fn signed_steps_center_on_a_whole_zero_point() {
        // Zero falls halfway between levels 127 and 128 (up to the division's rounding).
        let (step, zero) = signed_level_step(0.5, 0.0, 255);
        assert_eq!(step, 8.0 / 255.0);
        assert!(zero == 127.0 || zero == 128.0, "{zero}");
        let (step, zero) = signed_level_step(0.25, 10.0, 255);
        assert_eq!(step, 4.0 / 255.0);
        assert!(zero.fract() == 0.0 && zero < 0.0);
        // The range's ends land on the first and the last level.
        let at = |x: f32| x / step + zero;
        assert!((at(8.0) - 0.0).abs() <= 0.5 && (at(12.0) - 255.0).abs() <= 0.5);
        assert_eq!(signed_level_step(0.0, 3.0, 127), (6.0 / 127.0, 0.0));
        let (step, zero) = signed_level_step(0.0, 0.0, 255);
        assert!(step == 2.0 / 255.0 && (zero == 127.0 || zero == 128.0));
        assert_eq!(signed_level_step(f32::NAN, 0.0, 255), (step, zero));
        assert_eq!(signed_level_step(1.0, f32::INFINITY, 255), (1.0, 0.0));
    }

    #[test]
    fn levels_clamp_then_round_to_even() {
        assert_eq!(level(2.5, 255), 2);
        assert_eq!(level(3.5, 255), 4);
        assert_eq!(level(-3.0, 255), 0);
        assert_eq!(level(300.0, 255), 255);
        assert_eq!(level(300.0, 127), 127);
        assert_eq!(level(f32::NAN, 255), 0);
        assert_eq!(level(f32::INFINITY, 127), 127);
    }
}
