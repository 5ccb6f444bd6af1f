//! The accept loop and the connections: how long a client may take to send a request's head and
//! body, how long a connection may idle between requests, and how many may be open at once.
//!
//! axum's own `serve` bounds none of these, so a client that opens connections and sends nothing,
//! or trickles its bytes, holds them (and their file descriptors) forever; once the descriptors
//! run out `accept` fails and nobody is answered. Here each connection is an HTTP/1 connection of
//! hyper's under the router, with a phase kept beside it:
//!
//! - `Head`: waiting for a request's head, from the accept or from the first byte after an idle
//!   spell; past `header_timeout` it is answered 408 and closed.
//! - `Body`: the handler is reading the body; past `body_timeout` the body ends in an error that the
//!   handler answers 408 ([`TimedBody`]).
//! - `Busy`: the server is working on the request; no limit here but the request's own timeout.
//! - `Idle`: answered, waiting for the next request; past `idle_timeout` it is closed.
//!
//! At the cap a new connection closes the one that has waited longest on its client (idle ones
//! first, then those sending a head or a body); only when every connection is busy is the new one
//! answered 503 and closed.

use axum::body::Bytes;
use axum::Router;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use super::metrics::Metrics;

/// The time limits and the cap of the connections.
/// How long accepting pauses after a failed `accept` (out of descriptors, say), on either port.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Where a connection stands; also its rank as a candidate for closing at the cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Idle = 0,
    Head = 1,
    Body = 2,
    Busy = 3,
}

impl Phase {
    fn from_bits(bits: u64) -> Self {
        match bits {
            0 => Self::Idle,
            1 => Self::Head,
            2 => Self::Body,
            _ => Self::Busy,
        }
    }
}

/// A body not received within `--body-timeout`, or one that could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body not received within {0:?} (--body-timeout)")]
    TimedOut(Duration),
    #[error("reading the request body: {0}")]
    Read(#[from] hyper::Error),
}

/// The body time limit, if it is what ended `error` (anywhere in its chain of sources).
pub(crate) fn body_timed_out(error: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(BodyError::TimedOut(limit)) = e.downcast_ref::<BodyError>() {
            return Some(*limit);
        }
        next = e.source();
    }
    None
}

/// One connection's phase and when it began, packed in one word so that both change at once.
struct Watch {
    /// Phase in the top byte, milliseconds since the registry's start below.
    word: AtomicU64,
    /// Told when the connection is to close for room at the cap.
    evict: Notify,
    /// A request's body was left unread (answered early, e.g. over `--max-body`): the client may
    /// still be sending it when the connection ends.
    unread: AtomicBool,
}

/// The open connections, for the cap.
struct Registry {
    start: Instant,
    open: Mutex<HashMap<u64, Arc<Watch>>>,
    /// Told each time a connection ends, for the drain.
    ended: Notify,
}

impl Registry {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn set(&self, watch: &Watch, phase: Phase) {
        watch
            .word
            .store(((phase as u64) << 56) | self.now(), Ordering::SeqCst);
    }

    fn get(&self, watch: &Watch) -> (Phase, Instant) {
        let word = watch.word.load(Ordering::SeqCst);
        let since = self.start + Duration::from_millis(word & ((1 << 56) - 1));
        (Phase::from_bits(word >> 56), since)
    }

    /// Tells the connection that has waited longest on its client to close; false if every one
    /// is busy.
    fn evict_one(&self) -> bool {
        let mut open = self.open.lock().expect("registry lock");
        let victim = open
            .iter()
            .map(|(id, watch)| (self.get(watch), *id))
            .filter(|((phase, _), _)| *phase != Phase::Busy)
            .min();
        match victim {
            Some((_, id)) => {
                if let Some(watch) = open.remove(&id) {
                    watch.evict.notify_one();
                }
                true
            }
            None => false,
        }
    }
}

/// How long a connection that answered before reading a request's body goes on reading (and
/// dropping) the rest before it closes; nginx's `lingering_time` is 30 s, but a client that is
/// still sending after this long is not reading the answer either.
const LINGER: Duration = Duration::from_secs(2);

/// What a connection was closed for.
enum Closed {
    Served,
    HeaderTimeout,
    IdleTimeout,
    Evicted,
}

/// An answer written straight to the socket, outside hyper: the connection closes after it.
fn answer(status: &str, headers: &str, error: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": error }).to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{headers}connection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Accepts connections until `signal` completes, then closes the listener, asks every connection
/// to finish the request it has in hand, and returns once all have closed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    signal: impl Future<Output = ()> + Send + 'static,
) {
    let registry = Arc::new(Registry {
        start: Instant::now(),
        open: Mutex::new(HashMap::new()),
        ended: Notify::new(),
    });
    let (stop, stopping) = watch::channel(false);
    let mut signal = std::pin::pin!(signal);
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut signal => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors, or a connection reset before it was taken: the cap should
                // prevent the first; either way, try again shortly rather than spin.
                metrics.accept_errors.inc();
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let over = registry.open.lock().expect("registry lock").len() >= limits.max_connections;
        if over {
            if registry.evict_one() {
                metrics.evicted.inc();
            } else {
                metrics.refused.inc();
                refuse(stream);
                continue;
            }
        }
        next_id += 1;
        let watch = Arc::new(Watch {
            word: AtomicU64::new(0),
            evict: Notify::new(),
            unread: AtomicBool::new(false),
        });
        registry.set(&watch, Phase::Head);
        {
            let mut open = registry.open.lock().expect("registry lock");
            open.insert(next_id, watch.clone());
            metrics.connections_open.set(open.len() as i64);
        }
        let connection = Connection {
            id: next_id,
            stream: Arc::new(stream),
            watch,
            registry: registry.clone(),
            metrics: metrics.clone(),
            limits,
        };
        tokio::spawn(connection.run(router.clone(), stopping.clone()));
    }
    drop(listener);
    // Connections still waiting in the accept queue are reset with the listener; those open are
    // asked to finish.
    let _ = stop.send(true);
    loop {
        let ended = registry.ended.notified();
        if registry.open.lock().expect("registry lock").is_empty() {
            break;
        }
        ended.await;
    }
}

/// Answers 503 without reading the request, reading what has come so that closing does not
/// reset the connection before the answer arrives.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(&answer(
        "503 Service Unavailable",
        "retry-after: 1\r\n",
        "the server holds as many connections as it can (--max-connections): try again shortly",
    ));
    let mut sink = [0u8; 4096];
    while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
}

struct Connection {
    id: u64,
    stream: Arc<TcpStream>,
    watch: Arc<Watch>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    limits: Limits,
}

impl Connection {
    async fn run(self, router: Router, mut stopping: watch::Receiver<bool>) {
        let closed = self.serve(router, &mut stopping).await;
        match closed {
            Closed::HeaderTimeout => {
                // An answer the client can still read, if it reads: it is not waiting on us.
                let _ = self.stream.try_write(&answer(
                    "408 Request Timeout",
                    "",
                    &format!(
                        "request head not received within {:?} (--header-timeout)",
                        self.limits.header_timeout
                    ),
                ));
                self.metrics.timeouts.with_label_values(&["header"]).inc();
            }
            Closed::IdleTimeout => self.metrics.timeouts.with_label_values(&["idle"]).inc(),
            Closed::Served if self.watch.unread.load(Ordering::SeqCst) => self.linger().await,
            Closed::Served | Closed::Evicted => {}
        }
        {
            let mut open = self.registry.open.lock().expect("registry lock");
            open.remove(&self.id);
            self.metrics.connections_open.set(open.len() as i64);
        }
        self.registry.ended.notify_waiters();
    }

    async fn serve(&self, router: Router, stopping: &mut watch::Receiver<bool>) -> Closed {
        let io = Watched {
            stream: self.stream.clone(),
            watch: self.watch.clone(),
            registry: self.registry.clone(),
        };
        let service = {
            let (watch, registry, metrics) = (
                self.watch.clone(),
                self.registry.clone(),
                self.metrics.clone(),
            );
            let body_timeout = self.limits.body_timeout;
            let router = TowerToHyperService::new(router);
            hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let has_body = !request.body().is_end_stream();
                registry.set(&watch, if has_body { Phase::Body } else { Phase::Busy });
                let request = request.map(|incoming| TimedBody {
                    incoming,
                    deadline: Box::pin(tokio::time::sleep(body_timeout)),
                    limit: body_timeout,
                    ended: !has_body,
                    watch: watch.clone(),
                    registry: registry.clone(),
                    metrics: metrics.clone(),
                });
                let (watch, registry) = (watch.clone(), registry.clone());
                let answer = hyper::service::Service::call(&router, request);
                async move {
                    let response = answer.await;
                    registry.set(&watch, Phase::Idle);
                    response
                }
            })
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        // The head's time limit is this module's, which also answers 408 and tells idle time apart.
        builder.header_read_timeout(None);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let mut stopped = false;
        loop {
            tokio::select! {
                _ = connection.as_mut() => return Closed::Served,
                closed = self.deadline() => return closed,
                () = self.watch.evict.notified() => return Closed::Evicted,
                _ = stopping.changed(), if !stopped => {
                    stopped = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }

    /// Closing a socket with unread input resets the connection, and a reset can reach the client
    /// before it has read the answer (or while it is still writing the body) and destroy it. So,
    /// as nginx's lingering close does: end our side, then read and drop what still comes until
    /// the client closes, for at most [`LINGER`] (or until the cap needs the room).
    async fn linger(&self) {
        let _ = socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write);
        let mut sink = [0u8; 16 * 1024];
        let drained = async {
            loop {
                if self.stream.readable().await.is_err() {
                    return;
                }
                match self.stream.try_read(&mut sink) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(LINGER, drained) => {}
            () = self.watch.evict.notified() => {}
        }
    }

    /// Completes when the connection has been waiting on its client for too long.
    async fn deadline(&self) -> Closed {
        let shortest = self.limits.header_timeout.min(self.limits.idle_timeout);
        loop {
            let (phase, since) = self.registry.get(&self.watch);
            let (limit, closed) = match phase {
                Phase::Head => (self.limits.header_timeout, Closed::HeaderTimeout),
                Phase::Idle => (self.limits.idle_timeout, Closed::IdleTimeout),
                // Not ours to bound: look again once the shortest limit could have begun and ended.
                Phase::Body | Phase::Busy => {
                    tokio::time::sleep(shortest).await;
                    continue;
                }
            };
            let deadline = since + limit;
            if Instant::now() >= deadline {
                return closed;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// The connection's socket, shared so that a 408 can still be written once hyper has let go of
/// it; the first bytes after an idle spell start the header time limit.
struct Watched {
    stream: Arc<TcpStream>,
    watch: Arc<Watch>,
    registry: Arc<Registry>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    if n > 0 && self.registry.get(&self.watch).0 == Phase::Idle {
                        self.registry.set(&self.watch, Phase::Head);
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The socket closes when the connection ends, which is at once after this.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A request body that must arrive within the body time limit; once it has been read or dropped,
/// the connection is busy with the request.
pub(crate) struct TimedBody {
    incoming: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    /// Read to its end, timed out, or empty from the start.
    ended: bool,
    watch: Arc<Watch>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl TimedBody {
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.registry.set(&self.watch, Phase::Busy);
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame.map_err(BodyError::Read))),
            Poll::Pending if !this.ended && this.deadline.as_mut().poll(cx).is_ready() => {
                this.end();
                this.metrics.timeouts.with_label_values(&["body"]).inc();
                Poll::Ready(Some(Err(BodyError::TimedOut(this.limit))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        if !self.ended && !self.incoming.is_end_stream() {
            self.watch.unread.store(true, Ordering::SeqCst);
        }
        self.end();
    }
}
