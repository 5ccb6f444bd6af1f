//! Share one loaded model between threads: `Model` is `Send + Sync`, so an `Arc` is enough;
//! the weights are loaded once.
//!
//! cargo run --release --example shared_model -- weights/model.safetensors examples/images/*.png

use densenet::Model;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(weights) = args.next() else {
        return Err("usage: shared_model WEIGHTS.safetensors IMAGE...".into());
    };
    let images: Vec<String> = args.collect();
    let model = Arc::new(Model::load(weights)?);
    let threads = 4.min(images.len()).max(1);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let model = Arc::clone(&model);
            // Thread t takes images t, t + threads, t + 2·threads...
            let mine: Vec<String> = images.iter().skip(t).step_by(threads).cloned().collect();
            std::thread::spawn(move || -> densenet::Result<Vec<(String, String)>> {
                let mut answers = Vec::new();
                for image in mine {
                    let x = model.preprocessing().load(image.as_ref(), model.device())?;
                    let label = model.predict(&x)?.remove(0).top_k.remove(0).label;
                    answers.push((image, label));
                }
                Ok(answers)
            })
        })
        .collect();
    for worker in workers {
        let answers = worker.join().map_err(|_| "a worker thread panicked")??;
        for (image, label) in answers {
            println!("{image}: {label}");
        }
    }
    Ok(())
}
