//! safetensors bytes → `Model::load`: every input gives a model or a typed error, never a panic
//! or an allocation beyond the file's size.
//!
//! The bytes go through a real file, so that the memory-mapped path users take is the one fuzzed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("densenet-fuzz-{}.safetensors", std::process::id()))
    })
}

fuzz_target!(|bytes: &[u8]| {
    let path = scratch();
    std::fs::write(path, bytes).expect("scratch file");
    // The in-memory reader must agree with the file reader on whether the header is valid.
    let from_memory = densenet::weights::read_safetensors_bytes(path, bytes).is_ok();
    let from_file = densenet::weights::read_safetensors(path).is_ok();
    assert_eq!(from_memory, from_file);
    if let Ok(model) = densenet::Model::load(path) {
        // A model that loads predicts on an input of its size.
        let [h, w] = model.preprocessing().input_size;
        let x = candle_core::Tensor::zeros((1, 3, h, w), candle_core::DType::F32, model.device())
            .expect("zeros");
        let _ = model.predict(&x);
    }
});
