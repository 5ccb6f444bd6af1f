//! `densenet serve`: the HTTP inference server (see `densenet::serve`).

use anyhow::{bail, Context};
use densenet::serve::{ChangeKind, Models, Options, Repository, Server, Source, Stop};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::common::{positive, resolve_weights, ModelArgs};

/// The environment variable that may hold the bearer token.
const TOKEN_VARIABLE: &str = "DENSENET_TOKEN";

/// Arguments of `densenet serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,

    /// A model to serve as NAME=PATH, PATH as --weights takes it, served as version 1 of NAME;
    /// repeat it for several models (instead of --weights).
    #[arg(long = "model", value_name = "NAME=PATH", value_parser = model_spec,
          conflicts_with_all = ["weights", "model_name", "repository"])]
    models: Vec<(String, String)>,

    /// A model repository folder, DIR/NAME/VERSION/model.safetensors (VERSION a positive whole
    /// number): every version of every model is served (instead of --weights).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["weights", "model_name"])]
    repository: Option<PathBuf>,

    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    addr: SocketAddr,

    /// Also serve the Open Inference Protocol's gRPC service (inference.GRPCInferenceService,
    /// as Triton's clients speak it) on this address, over the same models and queues.
    #[arg(long, value_name = "HOST:PORT")]
    grpc_addr: Option<SocketAddr>,

    /// Images per forward pass, at most.
    #[arg(long, default_value_t = 16, value_parser = positive, value_name = "N")]
    max_batch: usize,

    /// How long the oldest queued image waits for its batch to fill (us, ms or s: 2ms).
    #[arg(long, default_value = "2ms", value_parser = duration, value_name = "TIME")]
    max_delay: Duration,

    /// Images that may wait, in each model version's queue; a request that does not fit is
    /// answered 503 with Retry-After.
    #[arg(long, default_value_t = 256, value_parser = positive, value_name = "N")]
    queue: usize,

    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 16 << 20, value_parser = positive, value_name = "BYTES")]
    max_body: usize,

    /// How long a request may wait for its answer (504 beyond).
    #[arg(long, default_value = "30s", value_parser = duration, value_name = "TIME")]
    timeout: Duration,

    /// Once the listener has closed, how long in-flight requests have to finish.
    #[arg(long, default_value = "30s", value_parser = duration, value_name = "TIME")]
    drain: Duration,

    /// On SIGTERM or SIGINT, how long to go on accepting requests with readiness already false
    /// before the listener closes (time for a load balancer to stop sending any).
    #[arg(long, default_value = "0s", value_parser = duration, value_name = "TIME")]
    shutdown_delay: Duration,

    /// A file holding the bearer token every route but /v2/health/* then requires (else the
    /// DENSENET_TOKEN environment variable, if set).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// The name of the model --weights gives, in /v2/models/{name}.
    #[arg(long, default_value = "densenet", value_name = "NAME")]
    model_name: String,

    /// How long a client may take to send a request's head, from connecting or from its first
    /// byte after an idle spell; then 408 and the connection closes.
    #[arg(long, default_value = "10s", value_parser = positive_duration, value_name = "TIME")]
    header_timeout: Duration,

    /// How long a client may take to send a request's whole body; then 408.
    #[arg(long, default_value = "30s", value_parser = positive_duration, value_name = "TIME")]
    body_timeout: Duration,

    /// How long a kept-alive connection may idle between requests before it is closed.
    #[arg(long, default_value = "75s", value_parser = positive_duration, value_name = "TIME")]
    keep_alive_timeout: Duration,

    /// Connections open at once, at most (fewer if the open-file limit leaves less room); at the
    /// cap a new one closes the connection longest waiting on its client, or gets 503 if all
    /// are busy. The gRPC port has a cap of its own as large, a new connection beyond it closed
    /// at once.
    #[arg(long, default_value_t = 4096, value_parser = positive, value_name = "N")]
    max_connections: usize,
}

/// A `--model` value: NAME=PATH, NAME fit for a URL path segment.
fn model_spec(s: &str) -> Result<(String, String), String> {
    let Some((name, path)) = s.split_once('=') else {
        return Err(format!("`{s}`: expected NAME=PATH"));
    };
    densenet::serve::check_name(name).map_err(|e| format!("`{s}`: {e}"))?;
    if path.is_empty() {
        return Err(format!("`{s}`: the path is empty"));
    }
    Ok((name.to_string(), path.to_string()))
}

/// Where the models come from: `--repository`, the `--model`s, else `--weights` (or its
/// default) as `--model-name`.
fn source(args: &Args) -> anyhow::Result<Source> {
    if let Some(dir) = &args.repository {
        return Ok(Source::Directory(dir.clone()));
    }
    if args.models.is_empty() {
        let path = resolve_weights(args.model.weights())?;
        return Ok(Source::Files(vec![(args.model_name.clone(), path)]));
    }
    let mut files = Vec::new();
    for (name, given) in &args.models {
        let path =
            resolve_weights(Some(given)).with_context(|| format!("--model {name}={given}"))?;
        std::fs::metadata(&path).with_context(|| format!("--model {name}={given}"))?;
        if files.iter().any(|(other, _)| other == name) {
            bail!("--model {name}={given}: the name \"{name}\" is given twice");
        }
        files.push((name.clone(), path));
    }
    Ok(Source::Files(files))
}

/// Loads every model again on each SIGHUP, saying what changed and what failed (a model that
/// fails to load keeps serving what it served).
#[cfg(unix)]
fn reload_on_hangup(models: Models) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            eprintln!("SIGHUP: loading every model again");
            let reload = models.load_all().await;
            let changed: Vec<_> = reload
                .changes
                .iter()
                .filter(|c| c.kind != ChangeKind::Unchanged)
                .collect();
            for change in &changed {
                eprintln!("reload: {change}");
            }
            for error in &reload.errors {
                eprintln!("reload failed, what was served serves on: {error}");
            }
            eprintln!(
                "reload done: {} version(s) changed, {} model(s) failed",
                changed.len(),
                reload.errors.len()
            );
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn reload_on_hangup(_: Models) -> anyhow::Result<()> {
    Ok(())
}

/// A duration with its unit: `250us`, `2ms`, `1.5s`.
fn duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        _ => {
            return Err(format!(
                "`{s}`: give a number and a unit: us, ms or s (2ms, 30s)"
            ))
        }
    };
    number
        .parse::<f64>()
        .ok()
        .and_then(|n| Duration::try_from_secs_f64(n * scale).ok())
        .ok_or_else(|| format!("`{s}` is not a duration"))
}

/// A duration longer than zero.
fn positive_duration(s: &str) -> Result<Duration, String> {
    duration(s).and_then(|d| {
        if d.is_zero() {
            Err(format!("`{s}`: must be longer than 0"))
        } else {
            Ok(d)
        }
    })
}

/// The token from `--token-file`, else the environment; an empty one is refused rather than
/// taken as "no token".
fn token(args: &Args) -> anyhow::Result<Option<String>> {
    let (token, source) = match &args.token_file {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read the token", path.display()))?,
            path.display().to_string(),
        ),
        None => match std::env::var(TOKEN_VARIABLE) {
            Ok(token) => (token, TOKEN_VARIABLE.to_string()),
            Err(_) => return Ok(None),
        },
    };
    let token = token.trim();
    if token.is_empty() {
        bail!("{source}: the token is empty");
    }
    Ok(Some(token.to_string()))
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn termination(delay: Duration, drain: Duration) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    eprintln!(
        "shutting down: readiness false; accepting requests for {delay:?} more (--shutdown-delay), \
         then no new connections and {drain:?} for those in flight (--drain)"
    );
}

/// Runs `densenet serve` until a signal; exit status 0 when every in-flight request finished
/// within `--drain`, 1 when some were cut.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = Options {
        max_batch: args.max_batch,
        max_delay: args.max_delay,
        queue: args.queue,
        max_body: args.max_body,
        timeout: args.timeout,
        drain: args.drain,
        shutdown_delay: args.shutdown_delay,
        token: token(&args)?,
        model_name: args.model_name.clone(),
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        idle_timeout: args.keep_alive_timeout,
        max_connections: args.max_connections,
        grpc_addr: args.grpc_addr,
    };
    let source = source(&args)?;
    let what = match &source {
        Source::Directory(dir) => format!("--repository {}", dir.display()),
        Source::Files(_) if args.models.is_empty() => "cannot load the model".to_string(),
        Source::Files(_) => "cannot load the models".to_string(),
    };
    let device = args.model.device()?;
    let repository = Repository::open(source, &device, args.model.precision()).context(what)?;
    // What runs other than as asked, once per note however many models share it.
    let mut notes: Vec<String> = Vec::new();
    for version in repository.versions() {
        for fallback in version.model().fallbacks() {
            let note = fallback.to_string();
            if !notes.contains(&note) {
                eprintln!("note: {note}");
                notes.push(note);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("densenet-http")
        .build()
        .context("cannot start the async runtime")?;
    // What runs, which is a more exact precision where the CPU lacks the one asked for (the
    // same for every model: one device, one precision).
    let first = repository.versions()[0].model();
    let computes = match first.isa() {
        Some(isa) => format!("{} on {isa}", first.compute()),
        None => first.compute().to_string(),
    };
    let served: Vec<String> = repository
        .versions()
        .iter()
        .map(|v| {
            let file = v.file().map_or(String::new(), |f| f.display().to_string());
            // One model as version 1 is said as it always was.
            match (repository.versions().len(), v.version()) {
                (1, 1) => format!("model \"{}\" from {file}", v.name()),
                _ => format!("model \"{}\" version {} from {file}", v.name(), v.version()),
            }
        })
        .collect();
    let longest = if served.len() > 1 {
        " (the longest of the models)"
    } else {
        ""
    };
    let stop = runtime.block_on(async {
        let server = Server::bind_repository(args.addr, repository, options).await?;
        reload_on_hangup(server.models())?;
        match served.as_slice() {
            [one] => eprintln!(
                "listening on http://{} ({}, computing in {computes})",
                server.local_addr(),
                one
            ),
            several => {
                eprintln!(
                    "listening on http://{} ({} model versions, computing in {computes})",
                    server.local_addr(),
                    several.len()
                );
                for line in several {
                    eprintln!("serving {line}");
                }
            }
        }
        if let Some(grpc) = server.grpc_addr() {
            eprintln!("gRPC (inference.GRPCInferenceService) on {grpc}");
        }
        let limit = match server.open_file_limit() {
            Some(limit) => format!("open-file limit {limit}"),
            None => "no open-file limit".to_string(),
        };
        eprintln!(
            "connections: at most {} at once per port (--max-connections {}, {limit})",
            server.max_connections(),
            args.max_connections
        );
        let warmed_up = server.warmed_up();
        let batch = args.max_batch;
        tokio::spawn(async move {
            match warmed_up.await {
                Ok(took) => eprintln!(
                    "ready: warm-up passes of {batch} and 1 images took {:.1} ms{longest}",
                    took.as_secs_f64() * 1e3
                ),
                Err(e) => eprintln!("warm-up failed, readiness stays false: {e}"),
            }
        });
        let stop = server
            .run(termination(args.shutdown_delay, args.drain))
            .await;
        anyhow::Ok(stop?)
    })?;
    Ok(match stop {
        Stop::Drained => {
            eprintln!("stopped: every request answered");
            ExitCode::SUCCESS
        }
        Stop::DrainTimedOut => {
            eprintln!(
                "stopped: requests still in flight after {:?} (--drain)",
                args.drain
            );
            ExitCode::from(1)
        }
    })
}
