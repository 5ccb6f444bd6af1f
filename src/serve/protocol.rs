//! The wire formats: the Open Inference Protocol's (KServe "v2") REST JSON objects, the
//! `/v1/classify` answer, and errors as `{"error": "…"}`.
//!
//! Field names follow the KServe Open Inference Protocol REST specification
//! (`$inference_request`, `$request_input`, `$request_output`, `$inference_response`,
//! `$response_output`, `$metadata_server_response`, `$metadata_model_response`,
//! `$metadata_tensor`). Inputs may also come as binary data after the JSON header (Triton's
//! binary tensor data extension, which Triton's clients use by default: the header's length in
//! `Inference-Header-Content-Length`, the input's byte count in its `binary_data_size`
//! parameter); outputs always come back as JSON, which those clients read as well.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use candle_core::{Device, Tensor};
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

use crate::model::{Model, Prediction, MAX_INPUT_ABS};

/// The model's one input tensor, as the metadata names it.
pub(crate) const INPUT: &str = "input";
/// The output tensor of raw scores.
pub(crate) const LOGITS: &str = "logits";
/// The output tensor of softmax probabilities.
pub(crate) const PROBABILITIES: &str = "probabilities";

/// An error answer: a status and `{"error": message}`, with `Retry-After` when load is shed.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({ "error": self.message }));
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `$metadata_server_response`.
#[derive(Serialize)]
pub(crate) struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: Vec<String>,
}

impl ServerMetadata {
    /// This server's name, version and protocol extensions.
    pub fn of_this_server() -> Self {
        Self {
            name: "densenet",
            version: env!("CARGO_PKG_VERSION"),
            extensions: vec!["model_repository".to_string()],
        }
    }
}

/// `$metadata_tensor`.
#[derive(Serialize)]
pub(crate) struct TensorMetadata {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// `$metadata_model_response`.
#[derive(Serialize)]
pub(crate) struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

impl ModelMetadata {
    /// The metadata of `model`, served as `name` in `versions`.
    pub fn of(name: &str, versions: &[u64], model: &Model) -> Self {
        let [h, w] = model.preprocessing().input_size.map(|v| v as i64);
        let classes = model.labels().len() as i64;
        let output = |name| TensorMetadata {
            name,
            datatype: "FP32",
            shape: vec![-1, classes],
        };
        Self {
            name: name.to_string(),
            versions: versions.iter().map(u64::to_string).collect(),
            platform: "densenet_candle",
            inputs: vec![TensorMetadata {
                name: INPUT,
                datatype: "FP32",
                shape: vec![-1, 3, h, w],
            }],
            outputs: vec![output(LOGITS), output(PROBABILITIES)],
        }
    }
}

/// `$inference_request`.
#[derive(Deserialize)]
pub(crate) struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<RequestInput>,
    pub outputs: Option<Vec<RequestOutput>>,
}

/// `$request_input`; `data` is kept as text until the input is known to be the model's, so
/// that its errors can name the input. It is absent when the input comes as binary data.
#[derive(Deserialize)]
pub(crate) struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    pub data: Option<Box<serde_json::value::RawValue>>,
}

/// `$request_output` (its `parameters`, such as a wish for binary data, are not needed: outputs
/// come back as JSON).
#[derive(Deserialize)]
pub(crate) struct RequestOutput {
    pub name: String,
}

/// `$inference_response`.
#[derive(Serialize)]
pub(crate) struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<ResponseOutput>,
}

/// `$response_output`.
#[derive(Serialize)]
pub(crate) struct ResponseOutput {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub datatype: &'static str,
    pub data: Vec<f32>,
}

/// Reads `$tensor_data`: the elements in row-major order, whether the request nests them by
/// dimension or gives them flat. Only numbers are elements here (the model's input is FP32);
/// anything else is refused while parsing, without building a JSON tree of the whole tensor.
fn tensor_data(json: &str) -> serde_json::Result<Vec<f32>> {
    let mut values = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_str(json);
    Flatten(&mut values).deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(values)
}

/// Appends a number, or the elements of a (nested) array, to the vector.
struct Flatten<'a>(&'a mut Vec<f32>);

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("numbers, in an array (nested or flat)")
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(self.0))?.is_some() {}
        Ok(())
    }
}

/// The outputs a request asks for, in its order: both when it names none.
pub(crate) fn requested_outputs(request: &InferRequest) -> Result<Vec<&'static str>, ApiError> {
    match &request.outputs {
        None => Ok(vec![LOGITS, PROBABILITIES]),
        Some(outputs) => outputs.iter().map(|o| output_named(&o.name)).collect(),
    }
}

/// The values of output `name` (one of the model's) over `predictions`, image after image.
pub(crate) fn output_values<'a>(
    predictions: &'a [Prediction],
    name: &str,
) -> impl Iterator<Item = f32> + 'a {
    let logits = name == LOGITS;
    predictions
        .iter()
        .flat_map(move |p| if logits { &p.logits } else { &p.probabilities })
        .copied()
}

/// The model's output called `name`.
pub(crate) fn output_named(name: &str) -> Result<&'static str, ApiError> {
    match name {
        LOGITS => Ok(LOGITS),
        PROBABILITIES => Ok(PROBABILITIES),
        other => Err(ApiError::bad_request(format!(
            "output \"{other}\": the model has no such output \
             (its outputs are \"{LOGITS}\" and \"{PROBABILITIES}\")"
        ))),
    }
}

/// The request's input as one [3, H, W] tensor per image, checked against the model: its name,
/// datatype, shape, element count, and values (finite, within ±[`MAX_INPUT_ABS`]). `binary` is
/// what follows the JSON header (empty without one).
pub(crate) fn input_images(
    request: InferRequest,
    binary: &[u8],
    model: &Model,
) -> Result<Vec<Tensor>, ApiError> {
    let mut inputs = request.inputs.into_iter();
    let (Some(input), None) = (inputs.next(), inputs.next()) else {
        return Err(not_one_input(model));
    };
    let spec = InputSpec::check(&input.name, &input.datatype, &input.shape, model)?;
    let values = match (&input.data, input.parameters.get("binary_data_size")) {
        (Some(data), None) => {
            tensor_data(data.get()).map_err(|e| spec.bad(format!("data: {e}")))?
        }
        (None, Some(size)) => {
            let size = size.as_u64().unwrap_or(u64::MAX);
            if size != binary.len() as u64 {
                return Err(spec.bad(format!(
                    "binary_data_size {size}: {} bytes follow the header",
                    binary.len(),
                )));
            }
            spec.values_of_bytes(binary, "binary_data_size")?
        }
        (Some(_), Some(_)) => return Err(spec.bad("both data and binary_data_size".into())),
        (None, None) => return Err(spec.bad("no data (and no binary_data_size)".into())),
    };
    spec.images(&values)
}

/// The answer to a request without exactly one input.
pub(crate) fn not_one_input(model: &Model) -> ApiError {
    let [h, w] = model.preprocessing().input_size;
    ApiError::bad_request(format!(
        "inputs: expected exactly one input, \"{INPUT}\" FP32 [-1, 3, {h}, {w}]"
    ))
}

/// A request's input, its name, datatype and shape checked against the model's.
pub(crate) struct InputSpec<'a> {
    name: &'a str,
    shape: [usize; 4],
}

impl<'a> InputSpec<'a> {
    /// Checks the input's name, datatype and shape (`[N, 3, H, W]`, N ≥ 1, H×W the model's).
    pub fn check(
        name: &'a str,
        datatype: &str,
        shape: &[i64],
        model: &Model,
    ) -> Result<Self, ApiError> {
        let [h, w] = model.preprocessing().input_size;
        let spec = Self {
            name,
            shape: [0, 3, h, w],
        };
        if name != INPUT {
            return Err(spec.bad(format!(
                "the model has no such input (its input is \"{INPUT}\")"
            )));
        }
        if datatype != "FP32" {
            return Err(spec.bad(format!("datatype {datatype}, expected FP32")));
        }
        match *shape {
            [n, 3, sh, sw] if n >= 1 && sh == h as i64 && sw == w as i64 => Ok(Self {
                shape: [n as usize, 3, h, w],
                ..spec
            }),
            _ => Err(spec.bad(format!(
                "shape {shape:?}, expected [N, 3, {h}, {w}] with N ≥ 1"
            ))),
        }
    }

    /// A 400 answer naming the input.
    pub fn bad(&self, what: String) -> ApiError {
        ApiError::bad_request(format!("input \"{}\": {what}", self.name))
    }

    /// Values the shape holds.
    fn count(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values of FP32 little-endian `bytes`, which must be exactly the shape's (`field`
    /// names where the bytes came from).
    pub fn values_of_bytes(&self, bytes: &[u8], field: &str) -> Result<Vec<f32>, ApiError> {
        let needed = 4 * self.count();
        if bytes.len() != needed {
            return Err(self.bad(format!(
                "{field}: {} bytes, shape {:?} needs {needed} (FP32)",
                bytes.len(),
                self.shape
            )));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// One [3, H, W] tensor per image of `values`, whose count and values are checked (finite,
    /// within ±[`MAX_INPUT_ABS`]).
    pub fn images(&self, values: &[f32]) -> Result<Vec<Tensor>, ApiError> {
        let (shape, needed) = (self.shape, self.count());
        if values.len() != needed {
            return Err(self.bad(format!(
                "{} values for shape {shape:?}, which holds {needed}",
                values.len()
            )));
        }
        let [_, _, h, w] = shape;
        let per_image = 3 * h * w;
        for (i, image) in values.chunks(per_image).enumerate() {
            if let Some(v) = image.iter().find(|v| !v.is_finite()) {
                return Err(self.bad(format!(
                    "image {i} holds {v}: values must be finite (within the range of FP32)"
                )));
            }
            if let Some(v) = image.iter().find(|v| f64::from(v.abs()) > MAX_INPUT_ABS) {
                return Err(self.bad(format!(
                    "image {i} holds {v}, beyond ±{MAX_INPUT_ABS:e}: not a normalised image"
                )));
            }
        }
        values
            .chunks(per_image)
            .map(|image| Tensor::from_slice(image, (3, h, w), &Device::Cpu))
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }
}
