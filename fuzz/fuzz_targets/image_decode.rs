//! Image bytes → decode → preprocess: every input gives an image or a typed error, never a
//! panic, and a decoded image always becomes a finite [3, 32, 32] tensor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|bytes: &[u8]| {
    let name = Path::new("fuzz.img");
    if let Ok(image) = densenet::preprocess::decode_rgb(name, bytes) {
        let prep = densenet::Preprocessing::cifar100();
        let t = prep
            .to_tensor(&image, &candle_core::Device::Cpu)
            .expect("a decoded image preprocesses");
        assert_eq!(t.dims(), &[3, 32, 32]);
    }
});
