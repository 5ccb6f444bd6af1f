//! The Open Inference Protocol's gRPC form, `inference.GRPCInferenceService`
//! (proto/grpc_inference.proto), on a port of its own: health, metadata and `ModelInfer`, over
//! the same models and batchers as the HTTP routes, answering as they do.
//!
//! Inputs come as `raw_input_contents` (little-endian FP32, as Triton's clients send them) or in
//! `contents.fp32_contents`; outputs go back in `raw_output_contents`, as Triton answers.
//! Errors carry the HTTP routes' messages under the matching gRPC code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Code, Request, Response, Status};

use super::connections::{Limits, ACCEPT_BACKOFF};
use super::metrics::Metrics;
use super::protocol::{self, ApiError, InputSpec, LOGITS, PROBABILITIES};
use super::repository::Entry;
use super::routes::{self, AppState};
use crate::error::Error;

/// The code generated from proto/grpc_inference.proto by build.rs.
#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/grpc_server/inference.rs"));
}

use generated::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use generated::model_infer_response::InferOutputTensor;
use generated::model_metadata_response::TensorMetadata;
use generated::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse, ServerLiveRequest,
    ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest,
    ServerReadyResponse,
};

/// The service over the HTTP routes' state: the same models, batchers, token and metrics.
pub(crate) struct Inference {
    state: Arc<AppState>,
}

/// The gRPC port: its listener and the service it will serve.
pub(crate) struct Port {
    pub listener: tokio::net::TcpListener,
    pub service: GrpcInferenceServiceServer<Inference>,
}

/// Serves `port` until `shutdown` completes, then lets the calls in flight finish. Connections
/// are capped at `limits.max_connections`; one whose peer sends nothing for
/// `limits.header_timeout` after connecting, or for `limits.idle_timeout` (at least `timeout`,
/// the longest a call waits for its answer) at any time after, is closed: idle, dead and
/// silent peers hold no descriptor for long (a live client connects again when it next calls).
pub(crate) async fn serve(
    port: Port,
    limits: Limits,
    timeout: Duration,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> crate::error::Result<()> {
    let silence = Silence {
        first: limits.header_timeout,
        later: limits.idle_timeout.max(timeout),
    };
    let incoming = capped_incoming(port.listener, limits.max_connections, silence, metrics);
    tonic::transport::Server::builder()
        .add_service(port.service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Server(format!("the gRPC service failed: {e}")))
}

/// The service, its messages bounded by `max_message` bytes (the HTTP body limit).
pub(crate) fn service(
    state: Arc<AppState>,
    max_message: usize,
) -> GrpcInferenceServiceServer<Inference> {
    GrpcInferenceServiceServer::new(Inference { state })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX)
}

/// The gRPC status of an HTTP route's error answer, keeping its message.
fn status_of(error: ApiError) -> Status {
    let code = match error.status {
        StatusCode::BAD_REQUEST => Code::InvalidArgument,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        _ => Code::Internal,
    };
    Status::new(code, error.message)
}

impl Inference {
    /// Runs one call: checks the bearer token (every method but the health ones), then counts
    /// the answer by method and code and times it.
    async fn call<T, R, F>(
        &self,
        method: &'static str,
        request: Request<T>,
        answer: impl FnOnce(T) -> F,
    ) -> Result<Response<R>, Status>
    where
        F: std::future::Future<Output = Result<R, ApiError>>,
    {
        let start = Instant::now();
        let open = matches!(method, "ServerLive" | "ServerReady");
        let result = if open || self.authorised(&request) {
            answer(request.into_inner())
                .await
                .map(Response::new)
                .map_err(status_of)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong bearer token (metadata authorization: Bearer TOKEN)",
            ))
        };
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        let metrics = &self.state.metrics;
        metrics
            .grpc_requests
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
        metrics
            .grpc_latency
            .with_label_values(&[method])
            .observe(start.elapsed().as_secs_f64());
        result
    }

    fn authorised<T>(&self, request: &Request<T>) -> bool {
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        routes::token_matches(self.state.token.as_deref(), given)
    }

    /// The model version a request names (the highest without a version), or NOT_FOUND.
    fn entry(&self, name: &str, version: &str) -> Result<Arc<Entry>, ApiError> {
        let version = (!version.is_empty()).then_some(version);
        self.state
            .registry
            .find(name, version)
            .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e))
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        self.call("ServerLive", request, |_| async {
            Ok(ServerLiveResponse { live: true })
        })
        .await
    }

    async fn server_ready(
        &self,
        request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        self.call("ServerReady", request, |_| async {
            Ok(ServerReadyResponse {
                ready: self.state.is_ready(self.state.registry.warm()),
            })
        })
        .await
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        self.call("ModelReady", request, |r| async move {
            let entry = self.entry(&r.name, &r.version)?;
            Ok(ModelReadyResponse {
                ready: self.state.is_ready(entry.warm()),
            })
        })
        .await
    }

    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.call("ServerMetadata", request, |_| async {
            let metadata = protocol::ServerMetadata::of_this_server();
            Ok(ServerMetadataResponse {
                name: metadata.name.to_string(),
                version: metadata.version.to_string(),
                extensions: metadata.extensions,
            })
        })
        .await
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.call("ModelMetadata", request, |r| async move {
            let entry = self.entry(&r.name, &r.version)?;
            let versions = self.state.registry.versions_of(&entry.name);
            let metadata = protocol::ModelMetadata::of(&entry.name, &versions, &entry.model);
            let tensors = |list: Vec<protocol::TensorMetadata>| {
                list.into_iter()
                    .map(|t| TensorMetadata {
                        name: t.name.to_string(),
                        datatype: t.datatype.to_string(),
                        shape: t.shape,
                    })
                    .collect()
            };
            Ok(ModelMetadataResponse {
                name: metadata.name,
                versions: metadata.versions,
                platform: metadata.platform.to_string(),
                inputs: tensors(metadata.inputs),
                outputs: tensors(metadata.outputs),
            })
        })
        .await
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        self.call("ModelInfer", request, |r| self.infer(r)).await
    }
}

impl Inference {
    /// `ModelInfer`: the request checked as the HTTP `infer` route checks its JSON, its images
    /// queued on the same batcher.
    async fn infer(&self, request: ModelInferRequest) -> Result<ModelInferResponse, ApiError> {
        // Held until answered: a reload meanwhile leaves this version's queue open.
        let entry = self.entry(&request.model_name, &request.model_version)?;
        let outputs = if request.outputs.is_empty() {
            vec![LOGITS, PROBABILITIES]
        } else {
            request
                .outputs
                .iter()
                .map(|o| protocol::output_named(&o.name))
                .collect::<Result<_, _>>()?
        };
        let model = entry.model.clone();
        let id = request.id.clone();
        let images = routes::off_runtime(move || {
            let mut inputs = request.inputs.into_iter();
            let (Some(input), None) = (inputs.next(), inputs.next()) else {
                return Err(protocol::not_one_input(&model));
            };
            let spec = InputSpec::check(&input.name, &input.datatype, &input.shape, &model)?;
            let values = match (request.raw_input_contents.as_slice(), input.contents) {
                ([raw], None) => spec.values_of_bytes(raw, "raw_input_contents")?,
                ([], Some(contents)) => fp32_contents(&spec, contents)?,
                ([], None) => {
                    return Err(spec.bad("no contents (and no raw_input_contents)".into()))
                }
                ([_], Some(_)) => {
                    return Err(spec.bad("both contents and raw_input_contents".into()))
                }
                (raw, _) => {
                    return Err(ApiError::bad_request(format!(
                        "raw_input_contents: {} entries for 1 input",
                        raw.len()
                    )))
                }
            };
            spec.images(&values)
        })
        .await?;
        let predictions = self.state.predict(&entry, images).await?;
        let classes = entry.model.labels().len() as i64;
        let (tensors, raw) = outputs
            .into_iter()
            .map(|name| {
                let tensor = InferOutputTensor {
                    name: name.to_string(),
                    datatype: "FP32".to_string(),
                    shape: vec![predictions.len() as i64, classes],
                    ..Default::default()
                };
                let bytes = protocol::output_values(&predictions, name)
                    .flat_map(f32::to_le_bytes)
                    .collect();
                (tensor, bytes)
            })
            .unzip();
        Ok(ModelInferResponse {
            model_name: entry.name.clone(),
            model_version: entry.version.to_string(),
            id,
            outputs: tensors,
            raw_output_contents: raw,
            ..Default::default()
        })
    }
}

/// The FP32 elements of an input given in `contents`: `fp32_contents` and no other field.
fn fp32_contents(spec: &InputSpec, contents: InferTensorContents) -> Result<Vec<f32>, ApiError> {
    let others = [
        contents.bool_contents.len(),
        contents.int_contents.len(),
        contents.int64_contents.len(),
        contents.uint_contents.len(),
        contents.uint64_contents.len(),
        contents.fp64_contents.len(),
        contents.bytes_contents.len(),
    ];
    if others.iter().any(|&n| n > 0) {
        return Err(spec.bad(
            "contents: an FP32 tensor's elements go in fp32_contents, and only there".into(),
        ));
    }
    Ok(contents.fp32_contents)
}

/// An accepted connection holding its place under the gRPC port's connection cap, closed when
/// its peer stays silent too long: `silence.first` from the connection to its first bytes (the
/// HTTP/2 preface), `silence.later` at any time after.
pub(crate) struct Capped {
    stream: tokio::net::TcpStream,
    _place: OwnedSemaphorePermit,
    silence: Silence,
    deadline: Pin<Box<tokio::time::Sleep>>,
    heard: bool,
    metrics: Arc<Metrics>,
}

/// How long a gRPC peer may send nothing.
#[derive(Clone, Copy)]
struct Silence {
    first: Duration,
    later: Duration,
}

impl Connected for Capped {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Capped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.heard = true;
                let next = tokio::time::Instant::now() + this.silence.later;
                this.deadline.as_mut().reset(next);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let kind = if this.heard { "idle" } else { "header" };
                    this.metrics.timeouts.with_label_values(&[kind]).inc();
                    Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The gRPC port's connections, at most `cap` at once: one beyond is closed as soon as it is
/// accepted (the client sees UNAVAILABLE and may retry), and counted. Accepting stops when the
/// stream is dropped.
fn capped_incoming(
    listener: tokio::net::TcpListener,
    cap: usize,
    silence: Silence,
    metrics: Arc<Metrics>,
) -> ReceiverStream<std::io::Result<Capped>> {
    let places = Arc::new(Semaphore::new(cap));
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of descriptors, say: wait for some to be freed rather than spin.
                    metrics.accept_errors.inc();
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(place) = places.clone().try_acquire_owned() else {
                metrics.grpc_refused.inc();
                continue;
            };
            let _ = stream.set_nodelay(true);
            let capped = Capped {
                stream,
                _place: place,
                silence,
                deadline: Box::pin(tokio::time::sleep(silence.first)),
                heard: false,
                metrics: metrics.clone(),
            };
            if sender.send(Ok(capped)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}
