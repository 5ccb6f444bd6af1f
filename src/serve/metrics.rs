//! The server's Prometheus metrics, in a registry of their own. Those of a model's queue and
//! batches carry its `model` and `version` labels.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The labels of the per-model metrics.
const MODEL_LABELS: [&str; 2] = ["model", "version"];

/// Every metric `GET /metrics` exposes.
pub(crate) struct Metrics {
    registry: Registry,
    /// Requests answered, by route template and HTTP status.
    pub requests: IntCounterVec,
    /// Seconds from a request's arrival to its answer, by route template.
    pub latency: HistogramVec,
    /// Images per forward pass, by model and version.
    batch_size: HistogramVec,
    /// Seconds per forward pass, by model and version.
    batch_seconds: HistogramVec,
    /// Images waiting in the queue, by model and version.
    queue_depth: IntGaugeVec,
    /// Images classified, by model and version.
    images: IntCounterVec,
    /// Queued images dropped unclassified because their request had gone (client away,
    /// deadline), by model and version.
    dropped: IntCounterVec,
    /// Seconds the warm-up passes took, by model and version; 0 until they are done.
    warmup_seconds: GaugeVec,
    /// Connections open now.
    pub connections_open: IntGauge,
    /// Connections closed for a time limit, by kind: `header`, `body` or `idle`.
    pub timeouts: IntCounterVec,
    /// Connections closed to make room for a new one at the cap.
    pub evicted: IntCounter,
    /// Connections answered 503 at the cap because none could be closed.
    pub refused: IntCounter,
    /// Failed `accept` calls (out of file descriptors, for one), on either port.
    pub accept_errors: IntCounter,
    /// gRPC calls answered, by method and status code.
    pub grpc_requests: IntCounterVec,
    /// Seconds from a gRPC call's arrival to its answer, by method.
    pub grpc_latency: HistogramVec,
    /// gRPC connections closed at once at the connection cap.
    pub grpc_refused: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "densenet_http_requests_total",
                "HTTP requests answered, by route and status",
            ),
            &["route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "densenet_http_request_duration_seconds",
                "Time from a request's arrival to its answer, by route",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 15).expect("valid buckets")),
            &["route"],
        )
        .expect("valid metric");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("densenet_batch_size", "Images per forward pass")
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 10).expect("valid buckets")),
            &MODEL_LABELS,
        )
        .expect("valid metric");
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new("densenet_batch_duration_seconds", "Time per forward pass")
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 15).expect("valid buckets")),
            &MODEL_LABELS,
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new("densenet_queue_depth", "Images waiting in the queue"),
            &MODEL_LABELS,
        )
        .expect("valid metric");
        let images = IntCounterVec::new(
            Opts::new("densenet_images_classified_total", "Images classified"),
            &MODEL_LABELS,
        )
        .expect("valid metric");
        let dropped = IntCounterVec::new(
            Opts::new(
                "densenet_images_dropped_total",
                "Queued images dropped unclassified because their request had gone",
            ),
            &MODEL_LABELS,
        )
        .expect("valid metric");
        let warmup_seconds = GaugeVec::new(
            Opts::new(
                "densenet_warmup_seconds",
                "Time the warm-up passes took before readiness (0 until done)",
            ),
            &MODEL_LABELS,
        )
        .expect("valid metric");
        let connections_open = IntGauge::new("densenet_connections_open", "Connections open now")
            .expect("valid metric");
        let timeouts = IntCounterVec::new(
            Opts::new(
                "densenet_connection_timeouts_total",
                "Connections closed for a time limit, by kind (header, body, idle)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let evicted = IntCounter::new(
            "densenet_connections_evicted_total",
            "Connections closed to make room for a new one at the connection cap",
        )
        .expect("valid metric");
        let refused = IntCounter::new(
            "densenet_connections_refused_total",
            "Connections answered 503 at the connection cap because none could be closed",
        )
        .expect("valid metric");
        let accept_errors = IntCounter::new(
            "densenet_accept_errors_total",
            "Failed accept calls (out of file descriptors, for one)",
        )
        .expect("valid metric");
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "densenet_grpc_requests_total",
                "gRPC calls answered, by method and status code",
            ),
            &["method", "code"],
        )
        .expect("valid metric");
        let grpc_latency = HistogramVec::new(
            HistogramOpts::new(
                "densenet_grpc_request_duration_seconds",
                "Time from a gRPC call's arrival to its answer, by method",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 15).expect("valid buckets")),
            &["method"],
        )
        .expect("valid metric");
        let grpc_refused = IntCounter::new(
            "densenet_grpc_connections_refused_total",
            "gRPC connections closed at once at the connection cap",
        )
        .expect("valid metric");
        // Every kind shows from the start, at 0.
        for kind in ["header", "body", "idle"] {
            timeouts.with_label_values(&[kind]);
        }
        for metric in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(batch_size.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(queue_depth.clone()),
            Box::new(images.clone()),
            Box::new(dropped.clone()),
            Box::new(warmup_seconds.clone()),
            Box::new(connections_open.clone()),
            Box::new(timeouts.clone()),
            Box::new(evicted.clone()),
            Box::new(refused.clone()),
            Box::new(accept_errors.clone()),
            Box::new(grpc_requests.clone()),
            Box::new(grpc_latency.clone()),
            Box::new(grpc_refused.clone()),
        ] {
            registry.register(metric).expect("names are distinct");
        }
        Self {
            registry,
            requests,
            latency,
            batch_size,
            batch_seconds,
            queue_depth,
            images,
            dropped,
            warmup_seconds,
            connections_open,
            timeouts,
            evicted,
            refused,
            accept_errors,
            grpc_requests,
            grpc_latency,
            grpc_refused,
        }
    }

    /// The metrics of one model version, each shown from now on (at 0).
    pub fn model(&self, name: &str, version: u64) -> ModelMetrics {
        let version = version.to_string();
        let labels = [name, version.as_str()];
        ModelMetrics {
            batch_size: self.batch_size.with_label_values(&labels),
            batch_seconds: self.batch_seconds.with_label_values(&labels),
            queue_depth: self.queue_depth.with_label_values(&labels),
            images: self.images.with_label_values(&labels),
            dropped: self.dropped.with_label_values(&labels),
            warmup_seconds: self.warmup_seconds.with_label_values(&labels),
        }
    }

    /// Stops showing the metrics of a model version that was unloaded.
    pub fn forget_model(&self, name: &str, version: u64) {
        let version = version.to_string();
        let labels = [name, version.as_str()];
        // Absent series (never shown) are no error here.
        let _ = self.batch_size.remove_label_values(&labels);
        let _ = self.batch_seconds.remove_label_values(&labels);
        let _ = self.queue_depth.remove_label_values(&labels);
        let _ = self.images.remove_label_values(&labels);
        let _ = self.dropped.remove_label_values(&labels);
        let _ = self.warmup_seconds.remove_label_values(&labels);
    }

    /// The metrics in Prometheus's text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("writing to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The metrics of one model version's queue and batches.
#[derive(Clone)]
pub(crate) struct ModelMetrics {
    /// Images per forward pass.
    pub batch_size: Histogram,
    /// Seconds per forward pass.
    pub batch_seconds: Histogram,
    /// Images waiting in the queue.
    pub queue_depth: IntGauge,
    /// Images classified.
    pub images: IntCounter,
    /// Queued images dropped unclassified because their request had gone (client away, deadline).
    pub dropped: IntCounter,
    /// Seconds the warm-up passes took; 0 until they are done.
    pub warmup_seconds: Gauge,
}
