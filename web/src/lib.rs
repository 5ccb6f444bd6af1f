//! The engine in the browser: a [`Engine`] loaded from the bytes of a weights file, classifying
//! encoded images or RGBA pixels, with class activation maps, through wasm-bindgen.
//!
//! This is the module's raw interface; `web/www/densenet.js` wraps it as the JavaScript API
//! (`Classifier.load`, `classifier.classify`), typed in `densenet.d.ts`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use densenet::explain::{explain, side_by_side};
use densenet::fast::CpuFeatures;
use densenet::preprocess::decode_rgb;
use densenet::{Model, Prediction};
use image::{RgbImage, RgbaImage};
use wasm_bindgen::prelude::*;

/// A model, ready to classify.
#[wasm_bindgen]
pub struct Engine {
    model: Model,
}

/// One image's answer.
#[wasm_bindgen]
pub struct Answer {
    top: String,
    logits: Vec<f32>,
    cam: Option<RgbaImage>,
}

#[wasm_bindgen]
impl Answer {
    /// The most probable classes as JSON: `[{"index", "label", "probability"}, ...]`.
    #[wasm_bindgen(getter)]
    pub fn top(&self) -> String {
        self.top.clone()
    }

    /// Every class's logit.
    #[wasm_bindgen(getter)]
    pub fn logits(&self) -> Vec<f32> {
        self.logits.clone()
    }

    /// The class activation picture's RGBA bytes, if asked for.
    #[wasm_bindgen(getter, js_name = camRgba)]
    pub fn cam_rgba(&self) -> Option<Vec<u8>> {
        self.cam.as_ref().map(|c| c.as_raw().clone())
    }

    #[wasm_bindgen(getter, js_name = camWidth)]
    pub fn cam_width(&self) -> u32 {
        self.cam.as_ref().map_or(0, |c| c.width())
    }

    #[wasm_bindgen(getter, js_name = camHeight)]
    pub fn cam_height(&self) -> u32 {
        self.cam.as_ref().map_or(0, |c| c.height())
    }
}

fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

#[wasm_bindgen]
impl Engine {
    /// Reads a weights file's bytes (safetensors or a PyTorch checkpoint, recognised by their
    /// content); `name` names it in errors.
    #[wasm_bindgen(constructor)]
    pub fn new(name: &str, bytes: &[u8]) -> Result<Engine, JsError> {
        let model = Model::from_bytes(name, bytes, DType::F32).map_err(js_error)?;
        Ok(Engine { model })
    }

    /// What the model is and how it runs, as JSON.
    pub fn info(&self) -> String {
        let info = self.model.info();
        let cpu = CpuFeatures::detect();
        let [height, width] = info.preprocessing.input_size;
        serde_json::json!({
            "config": info.config,
            "classes": info.config.num_classes,
            "labels": info.labels,
            "inputWidth": width,
            "inputHeight": height,
            "isa": self.model.isa().map(|isa| isa.name()),
            "precision": self.model.compute().to_string(),
            "simd": match (cpu.relaxed_simd, cpu.simd128) {
                (true, _) => "relaxed-simd",
                (false, true) => "simd128",
                _ => "none",
            },
        })
        .to_string()
    }

    /// Classifies an encoded image (PNG, JPEG, ...; `name` names it in errors), decoded and
    /// resized as the command line does; with `cam`, the class activation picture too.
    #[wasm_bindgen(js_name = classifyEncoded)]
    pub fn classify_encoded(
        &self,
        name: &str,
        bytes: &[u8],
        top_k: usize,
        cam: bool,
    ) -> Result<Answer, JsError> {
        let image = decode_rgb(Path::new(name), bytes).map_err(js_error)?;
        self.classify(image, top_k, cam)
    }

    /// Classifies RGBA pixels (a canvas's `ImageData`, `width`×`height`); alpha is dropped as the
    /// command line drops it.
    #[wasm_bindgen(js_name = classifyRgba)]
    pub fn classify_rgba(
        &self,
        rgba: &[u8],
        width: u32,
        height: u32,
        top_k: usize,
        cam: bool,
    ) -> Result<Answer, JsError> {
        let expected = width as usize * height as usize * 4;
        if rgba.len() != expected || expected == 0 {
            return Err(JsError::new(&format!(
                "image data: {} bytes for {width}×{height} RGBA pixels (expected {expected}, \
                 and at least one pixel)",
                rgba.len()
            )));
        }
        let rgb = rgba
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        let image = RgbImage::from_raw(width, height, rgb).expect("size checked above");
        self.classify(image, top_k, cam)
    }

    /// Logits `[batch × classes]` of a normalised batch `[batch, 3, H, W]` (H and W from
    /// `info()`), row after row.
    pub fn logits(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, JsError> {
        let [h, w] = self.model.preprocessing().input_size;
        if batch == 0 || input.len() != batch * 3 * h * w {
            return Err(JsError::new(&format!(
                "input: {} values for a batch of {batch} images of 3×{h}×{w} (expected {})",
                input.len(),
                batch * 3 * h * w
            )));
        }
        let input = Tensor::from_slice(input, (batch, 3, h, w), &Device::Cpu).map_err(js_error)?;
        let logits = self.model.logits(&input).map_err(js_error)?;
        logits
            .flatten_all()
            .and_then(|l| l.to_vec1())
            .map_err(js_error)
    }
}

impl Engine {
    fn classify(&self, image: RgbImage, top_k: usize, cam: bool) -> Result<Answer, JsError> {
        let preprocessing = self.model.preprocessing();
        let device = self.model.device();
        let (prediction, cam) = if cam {
            // As `classify --explain` does: the picture shows the image as the network saw it.
            let seen = preprocessing.resize(&image);
            let tensor = preprocessing.to_tensor(&seen, device).map_err(js_error)?;
            let (prediction, map) = explain(&self.model, &tensor, top_k)
                .map_err(js_error)?
                .remove(0);
            let picture = image::DynamicImage::ImageRgb8(side_by_side(&seen, &map)).to_rgba8();
            (prediction, Some(picture))
        } else {
            let tensor = preprocessing.to_tensor(&image, device).map_err(js_error)?;
            let prediction = self
                .model
                .predict_top_k(&tensor, top_k)
                .map_err(js_error)?
                .remove(0);
            (prediction, None)
        };
        let Prediction { logits, top_k, .. } = prediction;
        Ok(Answer {
            top: serde_json::to_string(&top_k).map_err(js_error)?,
            logits,
            cam,
        })
    }
}
