//! `densenet serve`: an HTTP inference server with dynamic batching, for one model or several
//! models and versions.
//!
//! Routes: `POST /v1/classify` (images in, the fields of `classify --json` out),
//! the Open Inference Protocol's REST routes under `/v2` (health, metadata, `infer`, following
//! the KServe "v2" specification, per model and version), Triton's model repository extension
//! (`/v2/repository/index`, and `load`/`unload` per model: a reload without downtime) and
//! `GET /metrics` (Prometheus text). Each model version has its own bounded queue and batcher;
//! images of concurrent requests share forward passes, and inference runs on the batchers'
//! threads, never on the async runtime's. Slow and idle clients are bounded: a time for a
//! request's head, one for its body, one for idling between requests, and a cap on open
//! connections kept below the open-file limit (see `connections`). The models are warmed up
//! before readiness turns true.
//!
//! ```no_run
//! use densenet::serve::{Options, Server};
//! use std::sync::Arc;
//!
//! # async fn run() -> densenet::Result<()> {
//! let model = Arc::new(densenet::Model::load("weights/model.safetensors")?);
//! let server = Server::bind("127.0.0.1:8080".parse().unwrap(), model, Options::default()).await?;
//! println!("listening on {}", server.local_addr());
//! let stop = server.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! println!("{stop:?}");
//! # Ok(())
//! # }
//! ```
//!
//! Several models, from a model repository folder (`models/NAME/VERSION/model.safetensors`):
//!
//! ```no_run
//! use densenet::serve::{Options, Repository, Server, Source};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let source = Source::Directory("models".into());
//! let repository = Repository::open(source, &candle_core::Device::Cpu, candle_core::DType::F32)?;
//! let addr = "127.0.0.1:8080".parse().unwrap();
//! let server = Server::bind_repository(addr, repository, Options::default()).await?;
//! let models = server.models();
//! // Elsewhere, on a signal say: load every model again, swapping in what changed.
//! tokio::spawn(async move { models.load_all().await });
//! server.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(())
//! # }
//! ```

mod batcher;
mod connections;
mod fd_limit;
mod grpc;
mod metrics;
mod protocol;
mod repository;
mod routes;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::Model;
use batcher::Batching;
use connections::Limits;
use repository::Registry;
pub use repository::{
    check_name, Change, ChangeKind, Reload, Repository, RepositoryError, Source, Version,
    MODEL_FILE,
};
use routes::AppState;

/// How the server batches, bounds and guards its work.
#[derive(Clone)]
pub struct Options {
    /// Images per forward pass, at most.
    pub max_batch: usize,
    /// How long the oldest queued image waits for a batch to fill.
    pub max_delay: Duration,
    /// Images that may wait in the queue; a request that does not fit is answered 503.
    pub queue: usize,
    /// Largest request body, in bytes (413 beyond).
    pub max_body: usize,
    /// How long a request may wait for its answer (504 beyond).
    pub timeout: Duration,
    /// How long in-flight requests have to finish once the listener has closed.
    pub drain: Duration,
    /// How long the server goes on accepting requests once shutdown begins, while readiness
    /// already answers false: the time an orchestrator needs to stop routing new requests here
    /// (Kubernetes removes a terminating pod from its Service's endpoints asynchronously).
    pub shutdown_delay: Duration,
    /// The bearer token every route but `/v2/health/*` requires, if any.
    pub token: Option<String>,
    /// The model's name in `/v2/models/{name}`, for [`Server::bind`]'s one model.
    pub model_name: String,
    /// How long a client may take to send a request's head, from its connection or from the
    /// first byte after an idle spell (answered 408, then closed).
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body, all of it (answered 408).
    pub body_timeout: Duration,
    /// How long a connection may idle between requests before it is closed.
    pub idle_timeout: Duration,
    /// Connections open at once, at most; fewer where the open-file limit leaves less room (see
    /// [`Server::max_connections`]). At the cap a new connection closes the one that has waited
    /// longest on its client, or is answered 503 if every one is busy. The gRPC port, if any,
    /// has a cap of its own as large, and the open-file limit is shared between the two.
    pub max_connections: usize,
    /// Where to serve the Open Inference Protocol's gRPC service as well (port 0 takes a free
    /// port); `None` serves HTTP only.
    pub grpc_addr: Option<SocketAddr>,
}

impl Default for Options {
    /// Batches of up to 16 images (the fast path's pass) within 2 ms, 256 queued images, 16 MiB
    /// bodies, 30 s per request and to drain, no shutdown delay, no token, the model named
    /// `densenet`; 10 s for a request's head, 30 s for its body, 75 s idle (above the 60 s idle
    /// time of common load balancers, so that they close first), 4096 connections.
    fn default() -> Self {
        Self {
            max_batch: 16,
            max_delay: Duration::from_millis(2),
            queue: 256,
            max_body: 16 << 20,
            timeout: Duration::from_secs(30),
            drain: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            token: None,
            model_name: "densenet".to_string(),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            max_connections: 4096,
            grpc_addr: None,
        }
    }
}

/// How [`Server::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Every in-flight request was answered.
    Drained,
    /// The drain time ran out with requests still in flight.
    DrainTimedOut,
}

/// A server bound to its address, its batcher threads started.
pub struct Server {
    listener: tokio::net::TcpListener,
    grpc: Option<grpc::Port>,
    router: Router,
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    metrics: Arc<metrics::Metrics>,
    limits: Limits,
    open_files: Option<u64>,
    drain: Duration,
    shutdown_delay: Duration,
    /// How long a request may wait for its answer.
    timeout: Duration,
}

impl Server {
    /// Listens on `addr` (port 0 takes a free port) and starts the batcher over `model`, served
    /// as version 1 of [`Options::model_name`].
    pub async fn bind(addr: SocketAddr, model: Arc<Model>, options: Options) -> Result<Self> {
        let repository = Repository::in_memory(options.model_name.clone(), model);
        Self::bind_repository(addr, repository, options).await
    }

    /// Listens on `addr` (port 0 takes a free port) and starts a batcher over every model
    /// version of `repository`, each with its own queue; all share `options`.
    pub async fn bind_repository(
        addr: SocketAddr,
        repository: Repository,
        options: Options,
    ) -> Result<Self> {
        if options.max_batch == 0 || options.queue == 0 {
            return Err(Error::Server(
                "the batch size and the queue must hold at least one image".into(),
            ));
        }
        let times = [
            options.header_timeout,
            options.body_timeout,
            options.idle_timeout,
        ];
        if times.iter().any(Duration::is_zero) {
            return Err(Error::Server(
                "the header, body and idle time limits must be longer than 0".into(),
            ));
        }
        // Each port holds up to max_connections descriptors; the limit is shared.
        let ports = 1 + usize::from(options.grpc_addr.is_some());
        let wanted = options.max_connections.saturating_mul(ports);
        let open_files = fd_limit::raise_to(wanted as u64 + fd_limit::RESERVED);
        let max_connections = fd_limit::cap(wanted, open_files)
            .map(|cap| cap / ports)
            .filter(|&cap| cap > 0)
            .ok_or_else(|| {
                Error::Server(format!(
                "the open-file limit ({}) leaves no descriptor for connections: the server keeps \
                 {} for itself, and --max-connections must be at least 1",
                open_files.unwrap_or(0),
                fd_limit::RESERVED
            ))
            })?;
        let listen = |addr: SocketAddr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Server(format!("cannot listen on {addr}: {e}")))
        };
        let listener = listen(addr).await?;
        let grpc_listener = match options.grpc_addr {
            Some(addr) => Some(listen(addr).await?),
            None => None,
        };
        let metrics = Arc::new(metrics::Metrics::new());
        let batching = Batching {
            max_batch: options.max_batch,
            max_delay: options.max_delay,
            capacity: options.queue,
        };
        let registry = Registry::start(repository, batching, metrics.clone())?;
        let ready = Arc::new(AtomicBool::new(true));
        let state = Arc::new(AppState {
            registry: registry.clone(),
            metrics: metrics.clone(),
            ready: ready.clone(),
            token: options.token,
            timeout: options.timeout,
        });
        let grpc = grpc_listener.map(|listener| grpc::Port {
            listener,
            service: grpc::service(state.clone(), options.max_body),
        });
        Ok(Self {
            listener,
            grpc,
            router: router(state, options.max_body),
            registry,
            ready,
            metrics,
            limits: Limits {
                header_timeout: options.header_timeout,
                body_timeout: options.body_timeout,
                idle_timeout: options.idle_timeout,
                max_connections,
            },
            open_files,
            drain: options.drain,
            shutdown_delay: options.shutdown_delay,
            timeout: options.timeout,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address of the gRPC service, if [`Options::grpc_addr`] asked for one.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|port| {
            port.listener
                .local_addr()
                .expect("a bound listener has an address")
        })
    }

    /// Connections open at once, at most, on each port: [`Options::max_connections`], or fewer
    /// where the open-file limit leaves less room.
    pub fn max_connections(&self) -> usize {
        self.limits.max_connections
    }

    /// The open-file limit (RLIMIT_NOFILE) the connections live under, after raising the soft
    /// limit towards what [`Options::max_connections`] needs as far as the hard limit allows;
    /// `None` where there is no such limit.
    pub fn open_file_limit(&self) -> Option<u64> {
        self.open_files
    }

    /// Completes once the warm-up passes of every model version are done (they run at once,
    /// one thread each), with the longest time one took, or with why one failed (readiness
    /// then stays false).
    pub fn warmed_up(&self) -> impl Future<Output = Result<Duration>> + Send + 'static {
        let registry = self.registry.clone();
        async move { Ok(registry.warmed_up().await?) }
    }

    /// A handle on the served models, to load, reload and unload them while the server runs
    /// (as the repository routes do).
    pub fn models(&self) -> Models {
        Models(self.registry.clone())
    }

    /// Serves until `shutdown` completes; then readiness turns false, requests are still
    /// accepted for [`Options::shutdown_delay`], the listener closes, and in-flight requests have
    /// [`Options::drain`] to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<Stop> {
        let (draining, drained) = tokio::sync::watch::channel(false);
        let signal = {
            let ready = self.ready.clone();
            let delay = self.shutdown_delay;
            async move {
                shutdown.await;
                ready.store(false, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                draining.send_replace(true);
            }
        };
        let began = |mut drained: tokio::sync::watch::Receiver<bool>| async move {
            // An error means the sender is gone, which happens only after it sent.
            let _ = drained.wait_for(|&began| began).await;
        };
        let http = connections::serve(
            self.listener,
            self.router,
            self.limits,
            self.metrics.clone(),
            signal,
        );
        let grpc = self.grpc.map(|port| {
            grpc::serve(
                port,
                self.limits,
                self.timeout,
                self.metrics,
                began(drained.clone()),
            )
        });
        let serve = async {
            let grpc = async {
                match grpc {
                    Some(grpc) => grpc.await,
                    None => Ok(()),
                }
            };
            tokio::join!(http, grpc).1
        };
        let drain = self.drain;
        let stop = tokio::select! {
            served = serve => { served?; Stop::Drained }
            () = async { began(drained).await; tokio::time::sleep(drain).await } => {
                Stop::DrainTimedOut
            }
        };
        let workers = self.registry.close();
        if stop == Stop::Drained {
            tokio::task::spawn_blocking(move || {
                workers
                    .into_iter()
                    .try_for_each(|worker| worker.join().map_err(drop))
            })
            .await
            .map_err(|e| Error::Server(format!("stopping the batchers: {e}")))?
            .map_err(|()| Error::Server("a batcher thread panicked".into()))?;
        }
        Ok(stop)
    }
}

/// The served models of a running [`Server`]: load again, unload, list. Loads and unloads run
/// one at a time.
#[derive(Clone)]
pub struct Models(Arc<Registry>);

impl Models {
    /// Loads model `name` again from its file or repository folder (versions new there load,
    /// versions gone unload, changed files reload), each new version warmed up before it is
    /// swapped in; requests in flight finish on the old one. If any version fails to load,
    /// nothing changes and the old versions go on serving.
    pub async fn load(&self, name: &str) -> Result<Vec<Change>, RepositoryError> {
        self.0.load(name).await
    }

    /// Loads every model of the source again, as [`Models::load`] does each (a repository's new
    /// model folders too); a model that fails keeps serving what it served.
    pub async fn load_all(&self) -> Reload {
        self.0.load_all().await
    }

    /// Stops serving every version of model `name`; requests in flight on it are answered.
    pub async fn unload(&self, name: &str) -> Result<Vec<Change>, RepositoryError> {
        self.0.unload(name).await
    }

    /// The models served, each with its versions, lowest first.
    pub fn served(&self) -> Vec<(String, Vec<u64>)> {
        self.0
            .names()
            .into_iter()
            .map(|name| {
                let versions = self.0.versions_of(&name);
                (name, versions)
            })
            .collect()
    }
}

fn router(state: Arc<AppState>, max_body: usize) -> Router {
    let model = "/v2/models/{name}";
    let version = "/v2/models/{name}/versions/{version}";
    Router::new()
        .route("/v1/classify", post(routes::classify))
        .route("/v2/health/live", get(routes::live))
        .route("/v2/health/ready", get(routes::ready))
        .route("/v2", get(routes::server_metadata))
        .route(model, get(routes::model_metadata))
        .route(version, get(routes::model_metadata))
        .route(&format!("{model}/ready"), get(routes::model_ready))
        .route(&format!("{version}/ready"), get(routes::model_ready))
        .route(&format!("{model}/infer"), post(routes::infer))
        .route(&format!("{version}/infer"), post(routes::infer))
        .route("/v2/repository/index", post(routes::repository_index))
        .route(
            "/v2/repository/models/{name}/load",
            post(routes::load_model),
        )
        .route(
            "/v2/repository/models/{name}/unload",
            post(routes::unload_model),
        )
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::guard,
        ))
        .with_state(state)
}
