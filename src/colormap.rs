//! Colour ramps for pictures of numbers (heat maps, activation maps).

/// Piecewise-linear ramp through these colours at evenly spaced points: dark blue for nothing,
/// through cyan, green and yellow, to red for the most.
const THERMAL: [[f32; 3]; 5] = [
    [20.0, 20.0, 120.0],
    [0.0, 170.0, 220.0],
    [60.0, 200.0, 70.0],
    [250.0, 220.0, 40.0],
    [220.0, 30.0, 30.0],
];

/// Light for nothing, dark for the most: zero cells read as background in a table-like picture.
const INK: [[f32; 3]; 5] = [
    [255.0, 255.0, 255.0],
    [255.0, 235.0, 140.0],
    [250.0, 160.0, 60.0],
    [210.0, 50.0, 40.0],
    [90.0, 0.0, 60.0],
];

fn ramp(stops: &[[f32; 3]; 5], v: f32) -> [u8; 3] {
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = v * (stops.len() - 1) as f32;
    let i = (x.floor() as usize).min(stops.len() - 2);
    let t = x - i as f32;
    let (a, b) = (stops[i], stops[i + 1]);
    [0, 1, 2].map(|c| (a[c] + (b[c] - a[c]) * t).round() as u8)
}

/// The colour of `v` in [0, 1] (clamped) on a blue → green → yellow → red ramp, for maps drawn
/// over a picture.
///
/// ```
/// assert_eq!(densenet::colormap::thermal(0.0), [20, 20, 120]);
/// assert_eq!(densenet::colormap::thermal(1.0), [220, 30, 30]);
/// ```
pub fn thermal(v: f32) -> [u8; 3] {
    ramp(&THERMAL, v)
}

/// The colour of `v` in [0, 1] (clamped) on a white → yellow → red → dark purple ramp, for
/// matrices where most cells are zero.
///
/// ```
/// assert_eq!(densenet::colormap::ink(0.0), [255, 255, 255]);
/// ```
pub fn ink(v: f32) -> [u8; 3] {
    ramp(&INK, v)
}
