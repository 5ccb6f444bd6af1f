//! Load a model and classify one image.
//!
//! cargo run --release --example predict_one -- weights/model.safetensors examples/images/cifar100_00_49.png

use densenet::Model;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(weights), Some(image)) = (args.next(), args.next()) else {
        return Err("usage: predict_one WEIGHTS.safetensors IMAGE".into());
    };
    let model = Model::load(weights)?;
    let input = model.preprocessing().load(image.as_ref(), model.device())?;
    let prediction = model.predict(&input)?.remove(0);
    for t in &prediction.top_k {
        println!("{:>6.2}%  {}", 100.0 * t.probability, t.label);
    }
    Ok(())
}
