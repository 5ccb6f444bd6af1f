//! Classify several images in one forward pass, on the device of your choice.
//!
//! cargo run --release --example predict_batch -- weights/model.safetensors examples/images/*.png

use densenet::{DeviceSpec, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((weights, images)) = args.split_first().filter(|(_, i)| !i.is_empty()) else {
        return Err("usage: predict_batch WEIGHTS.safetensors IMAGE...".into());
    };
    let device = DeviceSpec::Auto.device()?;
    let model = Model::load_on(weights, &device)?;
    let batch = model.preprocessing().load_batch(images, model.device())?;
    for (image, prediction) in images.iter().zip(model.predict(&batch)?) {
        let best = &prediction.top_k[0];
        println!("{image}: {} ({:.1}%)", best.label, 100.0 * best.probability);
    }
    Ok(())
}
