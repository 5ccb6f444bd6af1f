//! Classify every image in a folder (recursively), in batches, decoding while the network runs.
//!
//! cargo run --release --example classify_folder -- weights/model.safetensors examples/images

use densenet::pipeline::Pipeline;
use densenet::{inputs, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(weights), Some(folder)) = (args.next(), args.next()) else {
        return Err("usage: classify_folder WEIGHTS.safetensors FOLDER".into());
    };
    let model = Model::load(weights)?;
    let found = inputs::expand([&folder]);
    eprintln!(
        "{} images, {} other files skipped",
        found.images.len(),
        found.skipped.len()
    );
    Pipeline::new(32).classify_files(&model, &found.images, 1, |file, outcome| {
        match outcome {
            Ok(p) => println!("{:<50} {}", file.display(), p.top_k[0].label),
            Err(e) => eprintln!("skipped: {e}"),
        }
        Ok(())
    })?;
    Ok(())
}
