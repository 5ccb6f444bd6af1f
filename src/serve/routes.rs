//! The HTTP routes: `/v1/classify`, the Open Inference Protocol's `/v2/…`, the model repository
//! extension's `/v2/repository/…`, `/metrics`; and the middleware that checks the bearer token
//! and counts every answer.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, MatchedPath, Multipart, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batcher::Full;
use super::connections::body_timed_out;
use super::metrics::Metrics;
use super::protocol::{
    self, ApiError, InferRequest, InferResponse, ModelMetadata, ResponseOutput, ServerMetadata,
};
use super::repository::{quoted, Change, Entry, Registry, RepositoryError};
use crate::model::Prediction;
use crate::{labels, preprocess};

/// What every handler shares.
pub(crate) struct AppState {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// False once shutting down.
    pub ready: Arc<AtomicBool>,
    pub token: Option<String>,
    pub timeout: Duration,
}

type Shared = State<Arc<AppState>>;

/// The header of Triton's binary tensor data extension: the length of the JSON part.
const BINARY_HEADER: &str = "inference-header-content-length";

/// Routes whose answers need no token: orchestrators probe them.
const OPEN_PREFIX: &str = "/v2/health/";

/// Checks the bearer token, then counts the answer by route template and status and times it.
pub(crate) async fn guard(State(state): Shared, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let response = if authorised(&state, &request) {
        next.run(request).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        )
        .into_response()
    };
    state
        .metrics
        .requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    state
        .metrics
        .latency
        .with_label_values(&[route.as_str()])
        .observe(start.elapsed().as_secs_f64());
    response
}

fn authorised(state: &AppState, request: &Request) -> bool {
    request.uri().path().starts_with(OPEN_PREFIX)
        || token_matches(
            state.token.as_deref(),
            request
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        )
}

/// Whether an `Authorization` value (of an HTTP header or gRPC metadata) gives the server's
/// bearer token; anything does when the server has none.
pub(crate) fn token_matches(token: Option<&str>, authorization: Option<&[u8]>) -> bool {
    let Some(token) = token else {
        return true;
    };
    authorization
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .is_some_and(|given| same_bytes(given.trim_ascii(), token.as_bytes()))
}

/// Compares in time independent of where the first difference lies.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Any path no route has.
pub(crate) async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {} {}", request.method(), request.uri().path()),
    )
}

/// A known path asked with the wrong method.
pub(crate) async fn wrong_method(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// `GET /v2/health/live`.
pub(crate) async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "live": true }))
}

/// The readiness answer: 200 when ready, 400 (the protocol's "4xx is false") until the warm-up
/// is done and once shutting down.
fn readiness(warm: bool, state: &AppState) -> (StatusCode, Json<serde_json::Value>) {
    let ready = state.is_ready(warm);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    (status, Json(serde_json::json!({ "ready": ready })))
}

/// `GET /v2/health/ready`: every model version warmed up, and not shutting down.
pub(crate) async fn ready(State(state): Shared) -> impl IntoResponse {
    readiness(state.registry.warm(), &state)
}

/// `GET /v2`.
pub(crate) async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata::of_this_server())
}

/// The model version a `/v2/models/{name}[/versions/{version}]` path names (the highest version
/// without one); 404 naming what is unknown.
fn entry_of(state: &AppState, path: &HashMap<String, String>) -> Result<Arc<Entry>, ApiError> {
    let name = path.get("name").map_or("", String::as_str);
    state
        .registry
        .find(name, path.get("version").map(String::as_str))
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e))
}

/// `GET /v2/models/{name}[/versions/{version}]`: the version's inputs and outputs, and every
/// version served.
pub(crate) async fn model_metadata(
    State(state): Shared,
    Path(path): Path<HashMap<String, String>>,
) -> Result<Json<ModelMetadata>, ApiError> {
    let entry = entry_of(&state, &path)?;
    let versions = state.registry.versions_of(&entry.name);
    Ok(Json(ModelMetadata::of(
        &entry.name,
        &versions,
        &entry.model,
    )))
}

/// `GET /v2/models/{name}[/versions/{version}]/ready`.
pub(crate) async fn model_ready(
    State(state): Shared,
    Path(path): Path<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let entry = entry_of(&state, &path)?;
    let (status, Json(mut body)) = readiness(entry.warm(), &state);
    body["name"] = entry.name.clone().into();
    body["version"] = entry.version.to_string().into();
    Ok((status, Json(body)))
}

/// `POST /v2/repository/index`: every model version served, with its state (the body, if any,
/// may ask for `{"ready": true}`: the ready ones only).
pub(crate) async fn repository_index(
    State(state): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = body.map_err(bytes_error)?;
    let only_ready = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        #[derive(serde::Deserialize)]
        struct Index {
            #[serde(default)]
            ready: bool,
        }
        serde_json::from_slice::<Index>(&body)
            .map_err(|e| ApiError::bad_request(format!("request body: not an index request: {e}")))?
            .ready
    };
    let index: Vec<_> = state
        .registry
        .index()
        .into_iter()
        .filter(|entry| !only_ready || entry.state == "READY")
        .collect();
    Ok(Json(serde_json::json!(index)))
}

/// A failed load or unload: 404 for a model unknown, 409 for one that has no file, 503 when
/// stopping, 500 for a file or folder that does not load (the server's own files are wrong).
fn repository_error(error: RepositoryError) -> ApiError {
    let status = match error {
        RepositoryError::UnknownModel { .. } => StatusCode::NOT_FOUND,
        RepositoryError::InMemory { .. } => StatusCode::CONFLICT,
        RepositoryError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, error.to_string())
}

/// A load's or an unload's changes, as the routes answer them.
fn changes_answer(name: &str, changes: &[Change]) -> Json<serde_json::Value> {
    let versions: Vec<_> = changes
        .iter()
        .map(|change| {
            serde_json::json!({
                "version": change.version.to_string(),
                "change": change.kind,
                "file": change.file.as_ref().map(|f| f.display().to_string()),
            })
        })
        .collect();
    Json(serde_json::json!({ "name": name, "versions": versions }))
}

/// `POST /v2/repository/models/{name}/load`: loads the model again from its file or folder,
/// answering once the new versions serve.
pub(crate) async fn load_model(
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let changes = state.registry.load(&name).await.map_err(repository_error)?;
    Ok(changes_answer(&name, &changes))
}

/// `POST /v2/repository/models/{name}/unload`.
pub(crate) async fn unload_model(
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let changes = state
        .registry
        .unload(&name)
        .await
        .map_err(repository_error)?;
    Ok(changes_answer(&name, &changes))
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(state): Shared) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.render(),
    )
}

/// A body that could not be read: over `--max-body` (413), not received within
/// `--body-timeout` (408), or cut short.
fn body_error(
    rejection: impl std::fmt::Display,
    source: &(dyn std::error::Error + 'static),
    status: StatusCode,
) -> ApiError {
    if let Some(limit) = body_timed_out(source) {
        return ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("request body not received within {limit:?} (--body-timeout)"),
        );
    }
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "request body is larger than the server accepts (--max-body)".to_string()
    } else {
        format!("request body: {rejection}")
    };
    ApiError::new(status, message)
}

fn bytes_error(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    body_error(rejection.body_text(), &rejection, status)
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
}

/// Runs blocking work (decoding, parsing) on Tokio's blocking threads, off the I/O threads.
pub(crate) async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("request processing failed: {e}"),
        )
    })?
}

impl AppState {
    /// Whether something `warm` (the models, or one version) is ready: warmed up, and the server
    /// not shutting down. HTTP and gRPC answer readiness by this one rule.
    pub(crate) fn is_ready(&self, warm: bool) -> bool {
        warm && self.ready.load(Ordering::SeqCst)
    }

    /// Queues the images for `entry`'s model, waits for their batches and returns their
    /// predictions in order.
    pub(crate) async fn predict(
        &self,
        entry: &Entry,
        images: Vec<Tensor>,
    ) -> Result<Vec<Prediction>, ApiError> {
        let capacity = entry.batcher.capacity();
        if images.len() > capacity {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{} images in one request; the queue holds at most {capacity} (--queue)",
                    images.len()
                ),
            ));
        }
        let receivers = entry.batcher.submit(images).map_err(|Full| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("the queue is full ({capacity} images): try again shortly"),
            retry_after: Some(1),
        })?;
        let answers = tokio::time::timeout(self.timeout, async {
            let mut answers = Vec::with_capacity(receivers.len());
            for receiver in receivers {
                answers.push(receiver.await);
            }
            answers
        })
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("not answered within {:?} (--timeout)", self.timeout),
            )
        })?;
        answers
            .into_iter()
            .map(|answer| {
                answer
                    .map_err(|_| "the batcher stopped".to_string())
                    .and_then(|a| a)
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
            })
            .collect()
    }
}

/// The query of `/v1/classify`: `top_k`, `model`, `version`.
struct ClassifyQuery {
    top_k: usize,
    model: Option<String>,
    version: Option<String>,
}

impl ClassifyQuery {
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut parsed = Self {
            top_k: crate::model::DEFAULT_TOP_K,
            model: None,
            version: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "top_k" => {
                    parsed.top_k = match value.parse::<usize>() {
                        Ok(n) if n > 0 => n,
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "query parameter top_k: `{value}` is not a positive whole number"
                            )))
                        }
                    }
                }
                "model" => parsed.model = Some(percent_decoded(value)?),
                "version" => parsed.version = Some(percent_decoded(value)?),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "query parameter `{key}` is not known (they are top_k, model and version)"
                    )))
                }
            }
        }
        Ok(parsed)
    }

    /// The model version asked for: the one model if none is named and there is only one, its
    /// highest version if none is given.
    fn entry(&self, registry: &Registry) -> Result<Arc<Entry>, ApiError> {
        let name = match &self.model {
            Some(name) => name.clone(),
            None => match registry.names().as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "this server holds no model (every one was unloaded)",
                    ))
                }
                names => {
                    return Err(ApiError::bad_request(format!(
                        "this server holds several models: name one with ?model=NAME ({})",
                        quoted(names)
                    )))
                }
            },
        };
        registry
            .find(&name, self.version.as_deref())
            .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e))
    }
}

/// A query value with its `%XX` escapes (and `+` for a space) decoded.
fn percent_decoded(value: &str) -> Result<String, ApiError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = value
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("query value `{value}`: a bad % escape"))
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad_request(format!("query value `{value}`: not UTF-8")))
}

/// The images of a `/v1/classify` body, each with the name answers and errors give it: the
/// part's file name (else its field name) for multipart bodies, none for a bare image.
async fn classify_parts(
    state: &Arc<AppState>,
    request: Request,
) -> Result<Vec<(Option<String>, Bytes)>, ApiError> {
    let kind = content_type(request.headers());
    match kind.as_deref() {
        Some(t) if t.starts_with("multipart/form-data") => {
            let mut multipart = Multipart::from_request(request, state)
                .await
                .map_err(|e| ApiError::bad_request(format!("multipart body: {}", e.body_text())))?;
            let mut parts = Vec::new();
            loop {
                let field = multipart.next_field().await.map_err(|e| {
                    let status = e.status();
                    body_error(
                        format!("multipart part {}: {e}", parts.len() + 1),
                        &e,
                        status,
                    )
                })?;
                let Some(field) = field else { break };
                let name = field.file_name().or(field.name()).map(str::to_string);
                let bytes = field.bytes().await.map_err(|e| {
                    let status = e.status();
                    body_error(
                        format!("multipart part {}: {e}", parts.len() + 1),
                        &e,
                        status,
                    )
                })?;
                parts.push((name, bytes));
            }
            if parts.is_empty() {
                return Err(ApiError::bad_request("multipart body holds no parts"));
            }
            Ok(parts)
        }
        None => Ok(vec![(None, bare_body(request, state).await?)]),
        Some(t) if t.starts_with("image/") || t.starts_with("application/octet-stream") => {
            Ok(vec![(None, bare_body(request, state).await?)])
        }
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type `{other}` is not supported: send one image (image/*, \
                 application/octet-stream) or multipart/form-data"
            ),
        )),
    }
}

async fn bare_body(request: Request, state: &Arc<AppState>) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state)
        .await
        .map_err(bytes_error)
}

/// `POST /v1/classify[?top_k=K][&model=NAME][&version=V]`: one image, or several as
/// multipart/form-data; answers the fields of `classify --json` per image, in request order.
pub(crate) async fn classify(
    State(state): Shared,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let query = ClassifyQuery::parse(query.as_deref())?;
    // Held until answered: a reload meanwhile leaves this version's queue open.
    let entry = query.entry(&state.registry)?;
    let k = query.top_k.min(entry.model.labels().len());
    let parts = classify_parts(&state, request).await?;
    let model = entry.model.clone();
    let (names, images) = off_runtime(move || {
        let several = parts.len() > 1;
        let mut names = Vec::with_capacity(parts.len());
        let mut images = Vec::with_capacity(parts.len());
        for (i, (name, bytes)) in parts.into_iter().enumerate() {
            let what = match (&name, several) {
                (Some(name), _) => format!("part {} ({name})", i + 1),
                (None, true) => format!("part {}", i + 1),
                (None, false) => "body".to_string(),
            };
            let image = preprocess::decode_rgb(what.as_ref(), &bytes)
                .and_then(|rgb| model.preprocessing().to_tensor(&rgb, &Device::Cpu))
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            names.push(name);
            images.push(image);
        }
        Ok((names, images))
    })
    .await?;
    let predictions = state.predict(&entry, images).await?;
    let coarse = labels::is_cifar100(entry.model.labels());
    Ok(Json(
        names
            .into_iter()
            .zip(predictions)
            .map(|(file, prediction)| {
                let top_k = &prediction.top_k[..k];
                let coarse = coarse
                    .then(|| labels::cifar100_coarse_of(top_k[0].index))
                    .flatten();
                serde_json::json!({ "file": file, "top_k": top_k, "coarse": coarse })
            })
            .collect(),
    ))
}

/// `POST /v2/models/{name}[/versions/{version}]/infer`: an inference request in JSON.
pub(crate) async fn infer(
    State(state): Shared,
    Path(path): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<InferResponse>, ApiError> {
    // Held until answered: a reload meanwhile leaves this version's queue open.
    let entry = entry_of(&state, &path)?;
    // Triton's binary extension: a JSON header of this length, then the inputs' bytes.
    let header = headers
        .get(BINARY_HEADER)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!("{BINARY_HEADER}: not a length in bytes"))
                })
        })
        .transpose()?;
    let json_types = ["application/json", "application/octet-stream"];
    let allowed = if header.is_some() {
        &json_types[..]
    } else {
        &json_types[..1]
    };
    if let Some(other) =
        content_type(&headers).filter(|t| !allowed.iter().any(|a| t.starts_with(a)))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type `{other}` is not supported: send the inference request as \
                 application/json (or binary tensor data with {BINARY_HEADER})"
            ),
        ));
    }
    let body = body.map_err(bytes_error)?;
    let model = entry.model.clone();
    let (id, outputs, images) = off_runtime(move || {
        let split = header.unwrap_or(body.len());
        if split > body.len() {
            return Err(ApiError::bad_request(format!(
                "{BINARY_HEADER}: {split} bytes, but the body holds {}",
                body.len()
            )));
        }
        let (json, binary) = body.split_at(split);
        let request: InferRequest = serde_json::from_slice(json).map_err(|e| {
            ApiError::bad_request(format!("request body: not an inference request: {e}"))
        })?;
        let outputs = protocol::requested_outputs(&request)?;
        let id = request.id.clone();
        Ok((
            id,
            outputs,
            protocol::input_images(request, binary, &model)?,
        ))
    })
    .await?;
    let predictions = state.predict(&entry, images).await?;
    let classes = entry.model.labels().len();
    let outputs = outputs
        .into_iter()
        .map(|name| ResponseOutput {
            name,
            shape: vec![predictions.len(), classes],
            datatype: "FP32",
            data: protocol::output_values(&predictions, name).collect(),
        })
        .collect();
    Ok(Json(InferResponse {
        model_name: entry.name.clone(),
        model_version: entry.version.to_string(),
        id,
        outputs,
    }))
}
