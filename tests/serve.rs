//! `densenet serve`, started as a user starts it, on an ephemeral loopback port, driven by a real
//! HTTP client: every route, every error status, batching, load shedding, the token and
//! graceful shutdown. The Open Inference Protocol requests are written by hand from the KServe
//! v2 REST specification.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long anything in these tests may take before it counts as hung.
const PATIENCE: Duration = Duration::from_secs(60);

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/images");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    v.sort();
    v
}

/// A running `densenet serve` with a small CIFAR-100 model; killed if a test fails.
struct Served {
    child: Child,
    url: String,
    weights: PathBuf,
    stderr: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

fn weights_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("model.safetensors");
    deterministic_model(small_config(100))
        .save(&weights, false)
        .unwrap();
    (dir, weights)
}

fn serve_command(weights: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_densenet"));
    command
        .arg("serve")
        .arg("--weights")
        .arg(weights)
        .args(["--addr", "127.0.0.1:0"])
        .args(args)
        .env_remove("DENSENET_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn start(args: &[&str]) -> Served {
    start_with(args, |_| {})
}

fn start_with(args: &[&str], edit: impl FnOnce(&mut Command)) -> Served {
    let (dir, weights) = weights_dir();
    let mut command = serve_command(&weights, args);
    edit(&mut command);
    let server = launch(command, dir, weights);
    server.said("ready: ");
    server
}

/// Starts the server and returns once it listens, which may be before it is ready.
fn launch(mut command: Command, dir: tempfile::TempDir, weights: PathBuf) -> Served {
    let mut child = command.spawn().unwrap();
    let (tx, stderr) = mpsc::channel();
    let pipe = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in pipe.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut served = Served {
        child,
        url: String::new(),
        weights,
        stderr,
        _dir: dir,
    };
    let line = served.said("listening on ");
    let url = line.split_whitespace().nth(2).unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    served.url = url;
    served
}

impl Served {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Waits for the next line on stderr that starts with `start`, and returns it.
    fn said(&self, start: &str) -> String {
        loop {
            let line = self
                .stderr
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("the server never said {start:?}"));
            if line.starts_with(start) {
                return line;
            }
        }
    }

    /// The host and port, for raw connections.
    fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// Sends SIGTERM and waits for the exit; returns the status and what was said on stderr.
    fn terminate(&mut self) -> (ExitStatus, String) {
        self.signal_term();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < PATIENCE, "the server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pipe closes with the process: read what it said to the end.
        let said: Vec<String> =
            std::iter::from_fn(|| self.stderr.recv_timeout(PATIENCE).ok()).collect();
        (status, said.join("\n"))
    }

    fn signal_term(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    fn metrics(&self) -> String {
        let (status, _, body) = get(&self.url("/metrics"), None);
        assert_eq!(status, 200);
        body
    }

    /// The value of one sample of `/metrics`, e.g. `densenet_queue_depth`.
    fn metric(&self, sample: &str) -> f64 {
        metric(&self.metrics(), sample)
    }

    /// Waits until a sample reaches `value`.
    fn wait_for(&self, sample: &str, value: f64) {
        let start = Instant::now();
        while self.metric(sample) != value {
            assert!(start.elapsed() < PATIENCE, "{sample} never reached {value}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
        .parse()
        .unwrap()
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(PATIENCE).build()
}

/// Status, `Retry-After` and body of an answer, whatever its status.
fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, Option<String>, String) {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = response.status();
    let retry = response.header("retry-after").map(str::to_string);
    (status, retry, response.into_string().unwrap())
}

fn get(url: &str, token: Option<&str>) -> (u16, Option<String>, String) {
    let mut request = agent().get(url);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    answer(request.call())
}

fn post(url: &str, content_type: &str, body: &[u8]) -> (u16, Option<String>, String) {
    answer(
        agent()
            .post(url)
            .set("Content-Type", content_type)
            .send_bytes(body),
    )
}

fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let (status, _, text) = post(url, "application/json", body.to_string().as_bytes());
    (status, serde_json::from_str(&text).unwrap())
}

/// The `error` field of an error answer, checking that it is one.
fn error_of(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {body}"))
        .to_string()
}

/// The f32 values of a JSON array, as written by the server (checked to be numbers).
fn floats(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| (v.as_f64().unwrap() as f32).to_bits())
        .collect()
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Checks an answer's `top_k` against the library's, probabilities to the bit.
fn assert_same_top_k(answer: &Value, expected: &[densenet::TopK]) {
    let top = answer
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {answer}"));
    assert_eq!(top.len(), expected.len());
    for (got, want) in top.iter().zip(expected) {
        assert_eq!(got["index"], want.index);
        assert_eq!(got["label"], want.label.as_str());
        let p = got["probability"].as_f64().unwrap() as f32;
        assert_eq!(p.to_bits(), want.probability.to_bits(), "{got} vs {want:?}");
    }
}

const BOUNDARY: &str = "densenet-test-boundary";

fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for (file, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; \
                 filename=\"{file}\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

/// An inference request for `images` (each [3, 32, 32] values), flat data.
fn infer_request(images: &[Vec<f32>]) -> Value {
    let data: Vec<f32> = images.iter().flatten().copied().collect();
    json!({
        "id": "request-1",
        "inputs": [{"name": "input", "shape": [images.len(), 3, 32, 32], "datatype": "FP32", "data": data}]
    })
}

fn image_values(model: &densenet::Model, path: &Path) -> Vec<f32> {
    model
        .preprocessing()
        .load(path, model.device())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn every_route_and_every_bad_request() {
    let server = start(&["--max-body", "200000", "--queue", "8", "--max-delay", "1ms"]);
    let model = densenet::Model::load(&server.weights).unwrap();
    let images = examples();
    let png = std::fs::read(&images[0]).unwrap();

    // Health and metadata.
    assert_eq!(get(&server.url("/v2/health/live"), None).0, 200);
    let (status, _, body) = get(&server.url("/v2/health/ready"), None);
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true}"#));
    let (status, _, body) = get(&server.url("/v2"), None);
    assert_eq!(status, 200);
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(meta["name"], "densenet");
    assert!(meta["extensions"].is_array());
    for path in ["/v2/models/densenet", "/v2/models/densenet/versions/1"] {
        let (status, _, body) = get(&server.url(path), None);
        assert_eq!(status, 200, "{path}");
        let meta: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(meta["name"], "densenet");
        assert_eq!(
            meta["inputs"],
            json!([{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}])
        );
        assert_eq!(
            meta["outputs"],
            json!([
                {"name": "logits", "datatype": "FP32", "shape": [-1, 100]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 100]}
            ])
        );
    }
    assert_eq!(get(&server.url("/v2/models/densenet/ready"), None).0, 200);
    assert_eq!(
        get(&server.url("/v2/models/densenet/versions/1/ready"), None).0,
        200
    );
    for path in [
        "/v2/models/resnet",
        "/v2/models/resnet/ready",
        "/v2/models/densenet/versions/2",
    ] {
        let (status, _, body) = get(&server.url(path), None);
        assert_eq!(status, 404, "{path}");
        assert!(
            error_of(&body).contains("resnet") || body.contains("\\\"2\\\""),
            "{body}"
        );
    }
    let (status, _, body) = get(&server.url("/v3/nothing"), None);
    assert_eq!(status, 404);
    assert!(error_of(&body).contains("/v3/nothing"), "{body}");
    let (status, _, body) = answer(agent().delete(&server.url("/v2")).call());
    assert_eq!(status, 405);
    assert!(error_of(&body).contains("DELETE"), "{body}");

    // /v1/classify: one bare image, as the library classifies it.
    let (status, _, body) = post(&server.url("/v1/classify?top_k=3"), "image/png", &png);
    assert_eq!(status, 200, "{body}");
    let answers: Vec<Value> = serde_json::from_str(&body).unwrap();
    let x = model
        .preprocessing()
        .load(&images[0], model.device())
        .unwrap();
    let expected = model.predict_top_k(&x, 3).unwrap().remove(0);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["file"], Value::Null);
    assert_same_top_k(&answers[0]["top_k"], &expected.top_k);
    assert_eq!(
        answers[0]["coarse"],
        densenet::labels::cifar100_coarse_of(expected.top_k[0].index).unwrap()
    );
    // No content type: recognised by content too.
    let (status, _, body) = answer(agent().post(&server.url("/v1/classify")).send_bytes(&png));
    assert_eq!(status, 200, "{body}");

    // Several as multipart, in request order, named by their file names.
    let files: Vec<(String, Vec<u8>)> = images[..3]
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            (name, std::fs::read(p).unwrap())
        })
        .collect();
    let parts: Vec<(&str, &[u8])> = files
        .iter()
        .rev()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let (content_type, body) = multipart(&parts);
    let (status, _, text) = post(&server.url("/v1/classify?top_k=1"), &content_type, &body);
    assert_eq!(status, 200, "{text}");
    let answers: Vec<Value> = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = answers
        .iter()
        .map(|a| a["file"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = parts.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, expected);
    assert!(answers
        .iter()
        .all(|a| a["top_k"].as_array().unwrap().len() == 1));

    // Bad /v1/classify requests.
    let (content_type, body) = multipart(&[("a.png", &png), ("broken.png", b"not an image")]);
    let (status, _, text) = post(&server.url("/v1/classify"), &content_type, &body);
    assert_eq!(status, 400);
    assert!(
        error_of(&text).starts_with("part 2 (broken.png): "),
        "{text}"
    );
    let (status, _, text) = post(&server.url("/v1/classify"), "image/png", b"GIF89a...");
    assert_eq!(status, 400);
    assert!(error_of(&text).starts_with("body: "), "{text}");
    let (status, _, text) = post(&server.url("/v1/classify"), "text/plain", b"hello");
    assert_eq!(status, 415);
    assert!(error_of(&text).contains("text/plain"), "{text}");
    let (status, _, text) = post(
        &server.url("/v1/classify"),
        "image/png",
        &vec![0u8; 300_000],
    );
    assert_eq!(status, 413);
    assert!(error_of(&text).contains("--max-body"), "{text}");
    for query in ["top_k=0", "top_k=x", "k=3"] {
        let (status, _, text) = post(
            &server.url(&format!("/v1/classify?{query}")),
            "image/png",
            &png,
        );
        assert_eq!(status, 400, "{query}");
        assert!(error_of(&text).contains("query parameter"), "{text}");
    }
    let nine: Vec<(&str, &[u8])> = (0..9).map(|_| ("a.png", png.as_slice())).collect();
    let (content_type, body) = multipart(&nine);
    let (status, _, text) = post(&server.url("/v1/classify"), &content_type, &body);
    assert_eq!(status, 413);
    assert!(error_of(&text).contains("--queue"), "{text}");

    // Inference through the Open Inference Protocol: the logits and probabilities of the
    // library, flat or nested data alike.
    let infer = server.url("/v2/models/densenet/infer");
    let values: Vec<Vec<f32>> = images[..2]
        .iter()
        .map(|p| image_values(&model, p))
        .collect();
    let (status, body) = post_json(&infer, &infer_request(&values));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_name"], "densenet");
    assert_eq!(body["id"], "request-1");
    let outputs = body["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    assert_eq!(outputs[0]["name"], "logits");
    assert_eq!(outputs[1]["name"], "probabilities");
    assert_eq!(outputs[0]["shape"], json!([2, 100]));
    assert_eq!(outputs[0]["datatype"], "FP32");
    let data: Vec<f32> = values.iter().flatten().copied().collect();
    let batch = candle_core::Tensor::from_vec(data, (2, 3, 32, 32), model.device()).unwrap();
    let expected = model.predict(&batch).unwrap();
    let logits: Vec<f32> = expected.iter().flat_map(|p| p.logits.clone()).collect();
    let probabilities: Vec<f32> = expected
        .iter()
        .flat_map(|p| p.probabilities.clone())
        .collect();
    assert_eq!(floats(&outputs[0]["data"]), bits(&logits));
    assert_eq!(floats(&outputs[1]["data"]), bits(&probabilities));
    let nested: Vec<Vec<Vec<&[f32]>>> = values
        .iter()
        .map(|image| {
            image
                .chunks(1024)
                .map(|plane| plane.chunks(32).collect())
                .collect()
        })
        .collect();
    let request = json!({
        "inputs": [{"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": nested}],
        "outputs": [{"name": "probabilities"}]
    });
    let (status, body) = post_json(
        &server.url("/v2/models/densenet/versions/1/infer"),
        &request,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(body["outputs"][0]["name"], "probabilities");
    assert_eq!(floats(&body["outputs"][0]["data"]), bits(&probabilities));

    // Bad inference requests: each names the input or output and what is wrong.
    let one = &values[..1];
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut request = infer_request(one);
        edit(&mut request);
        request
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            with(&|r| r["inputs"][0]["datatype"] = json!("INT8")),
            "input \"input\": datatype INT8",
        ),
        (
            with(&|r| r["inputs"][0]["shape"] = json!([1, 3, 16, 16])),
            "input \"input\": shape [1, 3, 16, 16]",
        ),
        (
            with(&|r| r["inputs"][0]["shape"] = json!([2, 3, 32, 32])),
            "input \"input\": 3072 values",
        ),
        (
            with(&|r| r["inputs"][0]["name"] = json!("image")),
            "input \"image\": the model has no such input",
        ),
        (
            with(&|r| r["inputs"][0]["data"][5] = json!(1e7)),
            "input \"input\": image 0 holds 10000000",
        ),
        (
            with(&|r| r["inputs"][0]["data"][5] = json!(1e39)),
            "input \"input\": image 0 holds inf",
        ),
        (
            with(&|r| r["inputs"][0]["data"][5] = json!("NaN")),
            "input \"input\": data: invalid type",
        ),
        (
            with(&|r| r["outputs"] = json!([{"name": "features"}])),
            "output \"features\": the model has no such output",
        ),
        (
            with(&|r| r["inputs"] = json!([])),
            "inputs: expected exactly one input",
        ),
        (
            with(&|r| {
                r["inputs"][0].as_object_mut().unwrap().remove("data");
            }),
            "input \"input\": no data",
        ),
        (
            json!({"outputs": []}),
            "request body: not an inference request: missing field `inputs`",
        ),
    ];
    for (request, expected) in cases {
        let (status, body) = post_json(&infer, &request);
        assert_eq!(status, 400, "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.starts_with(expected),
            "{message} (expected {expected}…)"
        );
    }
    let (status, _, text) = post(&infer, "application/json", b"{\"inputs\": [");
    assert_eq!(status, 400);
    assert!(error_of(&text).starts_with("request body: "), "{text}");
    let (status, _, text) = post(&infer, "application/octet-stream", b"\0\0\0\0");
    assert_eq!(status, 415);
    assert!(error_of(&text).contains("application/json"), "{text}");

    // Triton's binary tensor data extension (what its clients send by default): the JSON header,
    // its length in Inference-Header-Content-Length, then the input's bytes; outputs asked in
    // binary come back as JSON, which those clients read too.
    let binary = |size: usize, bytes: &[u8]| {
        let header = json!({
            "inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                        "parameters": {"binary_data_size": size}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]
        })
        .to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(bytes);
        answer(
            agent()
                .post(&infer)
                .set("Content-Type", "application/octet-stream")
                .set("Inference-Header-Content-Length", &header.len().to_string())
                .send_bytes(&body),
        )
    };
    let bytes: Vec<u8> = values[0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let (status, _, text) = binary(bytes.len(), &bytes);
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["outputs"][0]["name"], "logits");
    assert_eq!(
        floats(&body["outputs"][0]["data"]),
        bits(&expected[0].logits)
    );
    let (status, _, text) = binary(bytes.len(), &bytes[..100]);
    assert_eq!(status, 400);
    assert!(
        error_of(&text).starts_with("input \"input\": binary_data_size 12288: 100 bytes"),
        "{text}"
    );
    let (status, _, _) = post(&infer, "application/json", &vec![b' '; 300_000]);
    assert_eq!(status, 413);
    let (status, body) = post_json(&server.url("/v2/models/resnet/infer"), &infer_request(one));
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("resnet"), "{body}");

    // Metrics: requests by route and status, latency, batches, queue, images.
    let text = server.metrics();
    assert!(
        metric(
            &text,
            "densenet_http_requests_total{route=\"/v1/classify\",status=\"200\"}"
        ) >= 3.0
    );
    assert_eq!(
        metric(
            &text,
            "densenet_http_requests_total{route=\"/v1/classify\",status=\"415\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "densenet_http_requests_total{route=\"/v2/models/{name}/infer\",status=\"404\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "densenet_http_requests_total{route=\"unmatched\",status=\"404\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &text,
            "densenet_http_request_duration_seconds_count{route=\"/v1/classify\"}"
        ) >= 3.0
    );
    assert_eq!(
        metric(
            &text,
            "densenet_images_classified_total{model=\"densenet\",version=\"1\"}"
        ),
        2.0 + 3.0 + 2.0 + 2.0 + 1.0
    );
    assert_eq!(
        metric(
            &text,
            "densenet_queue_depth{model=\"densenet\",version=\"1\"}"
        ),
        0.0
    );
    assert!(
        metric(
            &text,
            "densenet_batch_size_count{model=\"densenet\",version=\"1\"}"
        ) >= 4.0
    );
    assert!(
        text.contains("# TYPE densenet_batch_size histogram"),
        "{text}"
    );
}

#[test]
fn concurrent_requests_share_batches_with_bit_identical_answers() {
    let server = start(&["--max-batch", "8", "--max-delay", "500ms"]);
    let model = densenet::Model::load(&server.weights).unwrap();
    let images: Vec<PathBuf> = examples().into_iter().take(8).collect();
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let threads: Vec<_> = images
            .iter()
            .map(|path| {
                let url = server.url("/v1/classify?top_k=100");
                scope.spawn(move || {
                    let (status, _, text) = post(&url, "image/png", &std::fs::read(path).unwrap());
                    assert_eq!(status, 200, "{text}");
                    serde_json::from_str::<Vec<Value>>(&text).unwrap().remove(0)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let text = server.metrics();
    let batches = metric(
        &text,
        "densenet_batch_size_count{model=\"densenet\",version=\"1\"}",
    );
    let alone = metric(
        &text,
        "densenet_batch_size_bucket{model=\"densenet\",version=\"1\",le=\"1\"}",
    );
    assert_eq!(
        metric(
            &text,
            "densenet_batch_size_sum{model=\"densenet\",version=\"1\"}"
        ),
        8.0
    );
    assert!(batches > alone, "no batch of more than one image:\n{text}");
    // Every answer is the image's own, classified alone, to the last bit.
    for (path, answer) in images.iter().zip(&answers) {
        let x = model.preprocessing().load(path, model.device()).unwrap();
        let alone = model.predict_top_k(&x, 100).unwrap().remove(0);
        assert_same_top_k(&answer["top_k"], &alone.top_k);
    }
}

#[test]
fn a_lone_client_does_not_wait_for_company() {
    // The first image waits --max-delay for others; once a pass held one image and nothing came
    // behind it, the next ones run at once instead of paying the delay each time.
    let server = start(&["--max-batch", "8", "--max-delay", "5s"]);
    let png = std::fs::read(&examples()[0]).unwrap();
    let url = server.url("/v1/classify");
    let started = Instant::now();
    assert_eq!(post(&url, "image/png", &png).0, 200);
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "the first image did not wait"
    );
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(post(&url, "image/png", &png).0, 200);
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "a lone request waited {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        server.metric("densenet_batch_size_count{model=\"densenet\",version=\"1\"}"),
        4.0
    );
}

#[test]
fn a_batch_computes_each_image_as_alone() {
    let model = deterministic_model(small_config(100));
    let tensors: Vec<candle_core::Tensor> = examples()
        .iter()
        .take(9)
        .map(|p| model.preprocessing().load(p, model.device()).unwrap())
        .collect();
    let batch = densenet::preprocess::batch(&tensors).unwrap();
    let together = model.predict(&batch).unwrap();
    for (image, prediction) in tensors.iter().zip(&together) {
        let alone = model.predict(image).unwrap().remove(0);
        assert_eq!(prediction.logits, alone.logits);
        assert_eq!(prediction.probabilities, alone.probabilities);
    }
}

#[test]
fn a_full_queue_sheds_load() {
    let server = start(&["--queue", "2", "--max-batch", "64", "--max-delay", "2s"]);
    let png = std::fs::read(&examples()[0]).unwrap();
    std::thread::scope(|scope| {
        let (content_type, body) = multipart(&[("a.png", &png), ("b.png", &png)]);
        let url = server.url("/v1/classify");
        let waiting = scope.spawn(move || post(&url, &content_type, &body));
        server.wait_for(
            "densenet_queue_depth{model=\"densenet\",version=\"1\"}",
            2.0,
        );
        let (status, retry, text) = post(&server.url("/v1/classify"), "image/png", &png);
        assert_eq!(status, 503, "{text}");
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(error_of(&text).contains("queue is full"), "{text}");
        let (status, _, text) = waiting.join().unwrap();
        assert_eq!(status, 200, "{text}");
    });
    assert_eq!(
        server.metric("densenet_http_requests_total{route=\"/v1/classify\",status=\"503\"}"),
        1.0
    );
}

#[test]
fn a_request_past_its_deadline_is_504_and_not_computed() {
    let server = start(&[
        "--timeout",
        "300ms",
        "--max-batch",
        "64",
        "--max-delay",
        "1500ms",
    ]);
    let png = std::fs::read(&examples()[0]).unwrap();
    let started = Instant::now();
    let (status, _, text) = post(&server.url("/v1/classify"), "image/png", &png);
    assert_eq!(status, 504, "{text}");
    assert!(error_of(&text).contains("--timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_millis(1400));
    assert_one_image_dropped_uncomputed(&server);
}

/// Waits until the server has dropped one image, and checks that nothing was computed.
fn assert_one_image_dropped_uncomputed(server: &Served) {
    server.wait_for(
        "densenet_images_dropped_total{model=\"densenet\",version=\"1\"}",
        1.0,
    );
    assert_eq!(
        server.metric("densenet_images_classified_total{model=\"densenet\",version=\"1\"}"),
        0.0
    );
    assert_eq!(
        server.metric("densenet_batch_size_count{model=\"densenet\",version=\"1\"}"),
        0.0
    );
}

#[test]
fn a_departed_client_is_not_computed() {
    // The server's own deadline is far away: only the client's departure can drop the image.
    let server = start(&[
        "--timeout",
        "60s",
        "--max-batch",
        "64",
        "--max-delay",
        "1500ms",
    ]);
    let png = std::fs::read(&examples()[0]).unwrap();
    let impatient = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(200))
        .build();
    let result = impatient
        .post(&server.url("/v1/classify"))
        .set("Content-Type", "image/png")
        .send_bytes(&png);
    assert!(
        matches!(result, Err(ureq::Error::Transport(_))),
        "{result:?}"
    );
    drop(impatient);
    assert_one_image_dropped_uncomputed(&server);
    assert_eq!(
        server.metric("densenet_queue_depth{model=\"densenet\",version=\"1\"}"),
        0.0
    );
}

#[test]
fn a_token_guards_every_route_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let token_arg = token_file.to_str().unwrap();
    let server = start(&["--token-file", token_arg]);
    for path in ["/v2/health/live", "/v2/health/ready"] {
        assert_eq!(get(&server.url(path), None).0, 200, "{path}");
    }
    for path in [
        "/v2",
        "/v2/models/densenet",
        "/v2/models/densenet/ready",
        "/metrics",
        "/nowhere",
    ] {
        for token in [None, Some("wrong"), Some("s3cret-token-and-more")] {
            let (status, _, body) = get(&server.url(path), token);
            assert_eq!(status, 401, "{path} {token:?}");
            assert!(error_of(&body).contains("bearer token"), "{body}");
        }
        assert_ne!(
            get(&server.url(path), Some("s3cret-token")).0,
            401,
            "{path}"
        );
    }
    let png = std::fs::read(&examples()[0]).unwrap();
    assert_eq!(post(&server.url("/v1/classify"), "image/png", &png).0, 401);
    let (status, _, body) = answer(
        agent()
            .post(&server.url("/v1/classify"))
            .set("Authorization", "Bearer s3cret-token")
            .set("Content-Type", "image/png")
            .send_bytes(&png),
    );
    assert_eq!(status, 200, "{body}");
    // The token from the environment.
    let server = start_with(&[], |c| {
        c.env("DENSENET_TOKEN", "from-env");
    });
    assert_eq!(get(&server.url("/v2"), None).0, 401);
    assert_eq!(get(&server.url("/v2"), Some("from-env")).0, 200);
    // An empty token is refused at start, not taken as none.
    std::fs::write(&token_file, "\n").unwrap();
    let (_dir, weights) = weights_dir();
    let out = serve_command(&weights, &["--token-file", token_arg])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the token is empty"));
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (_dir, weights) = weights_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_densenet"))
        .args(["serve", "--addr", &addr, "--weights"])
        .arg(&weights)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits_0() {
    let mut server = start(&[
        "--max-batch",
        "64",
        "--max-delay",
        "1500ms",
        "--drain",
        "30s",
    ]);
    let images: Vec<PathBuf> = examples().into_iter().take(4).collect();
    let answers = std::thread::scope(|scope| {
        let threads: Vec<_> = images
            .iter()
            .map(|path| {
                let url = server.url("/v1/classify");
                scope.spawn(move || post(&url, "image/png", &std::fs::read(path).unwrap()))
            })
            .collect();
        server.wait_for(
            "densenet_queue_depth{model=\"densenet\",version=\"1\"}",
            4.0,
        );
        server.signal_term();
        // The listener closes: new connections are refused while the requests are finishing.
        let port = server.url.rsplit(':').next().unwrap().to_string();
        let start = Instant::now();
        while std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok() {
            assert!(start.elapsed() < PATIENCE, "still accepting connections");
            std::thread::sleep(Duration::from_millis(10));
        }
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    // None lost, none cut: every request has its full answer.
    for (path, (status, _, text)) in images.iter().zip(answers) {
        assert_eq!(status, 200, "{}: {text}", path.display());
        let answer: Vec<Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(answer[0]["top_k"].as_array().unwrap().len(), 5);
    }
    let (status, said) = server.terminate();
    assert_eq!(status.code(), Some(0), "{said}");
    assert!(said.contains("stopped: every request answered"), "{said}");
}

#[test]
fn readiness_turns_false_while_requests_are_still_taken_during_the_shutdown_delay() {
    let mut server = start(&["--shutdown-delay", "4s", "--drain", "10s"]);
    assert_eq!(get(&server.url("/v2/health/ready"), None).0, 200);
    server.signal_term();
    let start = Instant::now();
    loop {
        let (status, _, text) = get(&server.url("/v2/health/ready"), None);
        if status != 200 {
            assert_eq!(status, 400, "{text}");
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "readiness stayed true after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Not ready, yet still live and still answering: a load balancer has time to stop sending.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the delay ran out before the checks"
    );
    assert_eq!(get(&server.url("/v2/health/live"), None).0, 200);
    let png = std::fs::read(&examples()[0]).unwrap();
    let (status, _, text) = post(&server.url("/v1/classify"), "image/png", &png);
    assert_eq!(status, 200, "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "answered after the delay: not a proof"
    );
    let (status, said) = server.terminate();
    assert_eq!(status.code(), Some(0), "{said}");
    assert!(said.contains("--shutdown-delay"), "{said}");
    assert!(
        start.elapsed() >= Duration::from_secs(4),
        "exited before the delay ran out"
    );
}

#[test]
fn a_drain_that_runs_out_exits_1() {
    let mut server = start(&[
        "--max-batch",
        "64",
        "--max-delay",
        "20s",
        "--drain",
        "200ms",
    ]);
    let png = std::fs::read(&examples()[0]).unwrap();
    let url = server.url("/v1/classify");
    let stuck = std::thread::spawn(move || {
        let _ = agent()
            .post(&url)
            .set("Content-Type", "image/png")
            .send_bytes(&png);
    });
    server.wait_for(
        "densenet_queue_depth{model=\"densenet\",version=\"1\"}",
        1.0,
    );
    let (status, said) = server.terminate();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains("--drain"), "{said}");
    stuck.join().unwrap();
}

/// A raw connection to the server, for clients that no HTTP library would be.
fn connect(server: &Served) -> TcpStream {
    let stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Everything the server sends until it closes the connection.
fn until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    match stream.read_to_end(&mut out) {
        Ok(_) => {}
        // Closed with a reset once the answer was sent: what came before it stands.
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "reading the answer: {e} (after {:?})",
            String::from_utf8_lossy(&out)
        ),
    }
    String::from_utf8(out).unwrap()
}

/// One whole answer on a kept-alive connection: its head and its `Content-Length` bytes.
fn one_answer(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed mid-answer");
        out.push(byte[0]);
    }
    let head = String::from_utf8(out).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    head + &String::from_utf8(body).unwrap()
}

const SLOW_HEAD: &[u8] = b"POST /v1/classify HTTP/1.1\r\nHost: test\r\n";
/// A request whose body is announced at a million bytes, of which 3 come.
const SLOW_BODY: &[u8] =
    b"POST /v1/classify HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n\r\nabc";
const LIVE: &[u8] = b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n";

#[test]
fn slow_heads_and_bodies_are_answered_408_and_idle_connections_closed() {
    let server = start(&[
        "--header-timeout",
        "500ms",
        "--body-timeout",
        "500ms",
        "--keep-alive-timeout",
        "500ms",
    ]);
    let mut head = connect(&server);
    head.write_all(SLOW_HEAD).unwrap();
    let mut body = connect(&server);
    body.write_all(SLOW_BODY).unwrap();
    let mut infer = connect(&server);
    infer
        .write_all(
            b"POST /v2/models/densenet/infer HTTP/1.1\r\nHost: test\r\n\
              Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"inputs\"",
        )
        .unwrap();
    let mut silent = connect(&server);
    let mut idle = connect(&server);
    idle.write_all(LIVE).unwrap();
    let started = Instant::now();
    assert!(one_answer(&mut idle).starts_with("HTTP/1.1 200"));

    let said = until_closed(&mut head);
    assert!(said.starts_with("HTTP/1.1 408 "), "{said}");
    assert!(said.contains("--header-timeout"), "{said}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    for stream in [&mut body, &mut infer] {
        let said = until_closed(stream);
        assert!(said.starts_with("HTTP/1.1 408 "), "{said}");
        assert!(
            said.contains("request body not received within 500ms (--body-timeout)"),
            "{said}"
        );
    }
    let said = until_closed(&mut silent);
    assert!(said.starts_with("HTTP/1.1 408 "), "{said}");
    // An idle connection is closed without a word, once its time is up.
    assert_eq!(until_closed(&mut idle), "");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let text = server.metrics();
    let timeouts = |kind: &str| {
        metric(
            &text,
            &format!("densenet_connection_timeouts_total{{kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(timeouts("header"), 2.0, "{text}");
    assert_eq!(timeouts("body"), 2.0, "{text}");
    assert_eq!(timeouts("idle"), 1.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "densenet_http_requests_total{route=\"/v1/classify\",status=\"408\"}"
        ),
        1.0
    );
    // The metrics request's own connection.
    assert_eq!(metric(&text, "densenet_connections_open"), 1.0);
}

#[test]
fn a_client_still_sending_a_refused_body_is_not_reset() {
    let server = start(&["--max-body", "1000"]);
    let mut client = connect(&server);
    client
        .write_all(
            b"POST /v1/classify HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n\
              Content-Length: 300000\r\n\r\n",
        )
        .unwrap();
    client.write_all(&[b'x'; 5000]).unwrap();
    // Answered once the body is past the limit, long before its end.
    let said = one_answer(&mut client);
    assert!(said.starts_with("HTTP/1.1 413 "), "{said}");
    assert!(said.contains("--max-body"), "{said}");
    // A client that writes its whole body before it reads, as most do: had the server closed
    // with the body unread, the reset would fail these writes (and could destroy the answer).
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..30 {
        client.write_all(&[b'x'; 10_000]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(until_closed(&mut client), "");
}

/// Slow clients of every kind: `n` connections, a third trickling a head, a third trickling a
/// body, a third idle after one answer; returns them with the thread that trickles until `stop`.
fn slow_clients(server: &Served, n: usize) -> Vec<(usize, TcpStream)> {
    (0..n)
        .map(|i| {
            let mut stream = connect(server);
            match i % 3 {
                0 => stream.write_all(SLOW_HEAD).unwrap(),
                1 => stream.write_all(SLOW_BODY).unwrap(),
                _ => {
                    stream.write_all(LIVE).unwrap();
                    assert!(one_answer(&mut stream).starts_with("HTTP/1.1 200"));
                }
            }
            (i % 3, stream)
        })
        .collect()
}

/// Sends one byte of head (a header line's worth at a time) or body to every trickling client,
/// every 100 ms, until `stop` is set; a closed connection is left alone.
fn trickle(clients: &mut [(usize, TcpStream)], stop: &std::sync::atomic::AtomicBool) {
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        for (kind, stream) in clients.iter_mut() {
            let byte: &[u8] = if *kind == 0 { b"X" } else { b"a" };
            if *kind < 2 {
                let _ = stream.write(byte);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The slowest of `n` classify requests, each checked to be answered 200.
fn slowest_of(server: &Served, n: usize, png: &[u8]) -> Duration {
    (0..n)
        .map(|_| {
            let started = Instant::now();
            let (status, _, text) = post(&server.url("/v1/classify"), "image/png", png);
            assert_eq!(status, 200, "{text}");
            started.elapsed()
        })
        .max()
        .unwrap()
}

#[test]
fn hundreds_of_slow_and_idle_connections_do_not_hold_up_requests() {
    let server = start(&[
        "--header-timeout",
        "4s",
        "--body-timeout",
        "4s",
        "--keep-alive-timeout",
        "4s",
    ]);
    let png = std::fs::read(&examples()[0]).unwrap();
    let unloaded = slowest_of(&server, 10, &png);
    let mut clients = slow_clients(&server, 300);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let loaded = std::thread::scope(|scope| {
        let trickling = scope.spawn(|| trickle(&mut clients, &stop));
        // All 300 are held at once, none refused.
        assert!(server.metric("densenet_connections_open") >= 300.0);
        let loaded = slowest_of(&server, 20, &png);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        trickling.join().unwrap();
        loaded
    });
    // Requests among them are answered as fast as alone, give or take a busy test machine.
    assert!(
        loaded < unloaded * 5 + Duration::from_millis(500),
        "slowest request {loaded:?} among slow clients, {unloaded:?} alone"
    );
    // Then each slow client is answered 408 for its head or body, and idle ones are closed.
    for (kind, stream) in &mut clients {
        let said = until_closed(stream);
        match kind {
            0 => assert!(said.contains("--header-timeout"), "{said}"),
            1 => assert!(said.contains("--body-timeout"), "{said}"),
            _ => assert_eq!(said, ""),
        }
    }
    let text = server.metrics();
    for kind in ["header", "body", "idle"] {
        let sample = format!("densenet_connection_timeouts_total{{kind=\"{kind}\"}}");
        assert_eq!(metric(&text, &sample), 100.0, "{sample}");
    }
    assert_eq!(metric(&text, "densenet_connections_refused_total"), 0.0);
    assert_eq!(metric(&text, "densenet_connections_evicted_total"), 0.0);
}

#[test]
fn under_a_small_open_file_limit_slow_connections_make_room_for_requests() {
    let (dir, weights) = weights_dir();
    let server_command = serve_command(
        &weights,
        &[
            "--header-timeout",
            "60s",
            "--body-timeout",
            "60s",
            "--keep-alive-timeout",
            "60s",
        ],
    );
    // The same command under `ulimit -n 128`, which the server cannot raise.
    let mut command = Command::new("sh");
    command
        .args(["-c", "ulimit -n 128 && exec \"$0\" \"$@\""])
        .arg(server_command.get_program())
        .args(server_command.get_args())
        .env_remove("DENSENET_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let server = launch(command, dir, weights);
    let said = server.said("connections: ");
    assert!(said.contains("at most 96 at once"), "{said}");
    assert!(said.contains("open-file limit 128"), "{said}");
    server.said("ready: ");
    let png = std::fs::read(&examples()[0]).unwrap();
    // 250 slow clients, far more than the 128 descriptors the server has.
    let mut clients = slow_clients(&server, 250);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let trickling = scope.spawn(|| trickle(&mut clients, &stop));
        let slowest = slowest_of(&server, 20, &png);
        assert!(slowest < Duration::from_secs(5), "{slowest:?}");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        trickling.join().unwrap();
    });
    let text = server.metrics();
    assert_eq!(metric(&text, "densenet_accept_errors_total"), 0.0, "{text}");
    assert_eq!(
        metric(&text, "densenet_connections_refused_total"),
        0.0,
        "{text}"
    );
    assert!(metric(&text, "densenet_connections_open") <= 96.0, "{text}");
    // Every request made room by closing the longest-waiting slow client.
    assert!(
        metric(&text, "densenet_connections_evicted_total") >= 250.0 - 96.0,
        "{text}"
    );
    // The first clients, the longest waiting, were closed: idle ones first, unanswered.
    let (kind, first) = &mut clients[2];
    assert_eq!(*kind, 2);
    assert_eq!(until_closed(first), "");
}

#[test]
fn at_the_cap_the_longest_waiting_connection_makes_room_else_503() {
    let server = start(&[
        "--max-connections",
        "2",
        "--max-batch",
        "64",
        "--max-delay",
        "1500ms",
    ]);
    // Two connections, one idle after an answer, one sending a head: the idle one goes first.
    let mut idle = connect(&server);
    idle.write_all(LIVE).unwrap();
    assert!(one_answer(&mut idle).starts_with("HTTP/1.1 200"));
    let mut head = connect(&server);
    head.write_all(SLOW_HEAD).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(get(&server.url("/v2/health/live"), None).0, 200);
    assert_eq!(until_closed(&mut idle), "");
    head.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let waiting = head.read(&mut [0u8; 1]).unwrap_err().kind();
    assert!(
        matches!(waiting, ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{waiting:?}"
    );
    drop(head);

    // Two requests waiting for their batch: every connection is busy, so a third is refused.
    let png = std::fs::read(&examples()[0]).unwrap();
    std::thread::scope(|scope| {
        let busy: Vec<_> = (0..2)
            .map(|_| {
                let (url, png) = (server.url("/v1/classify"), &png);
                scope.spawn(move || post(&url, "image/png", png))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        // It sends nothing: the answer comes before any request could.
        let mut third = connect(&server);
        let said = until_closed(&mut third);
        assert!(said.starts_with("HTTP/1.1 503 "), "{said}");
        assert!(said.contains("retry-after: 1"), "{said}");
        assert!(said.contains("--max-connections"), "{said}");
        for request in busy {
            let (status, _, text) = request.join().unwrap();
            assert_eq!(status, 200, "{text}");
        }
    });
    let text = server.metrics();
    assert_eq!(
        metric(&text, "densenet_connections_refused_total"),
        1.0,
        "{text}"
    );
    assert!(
        metric(&text, "densenet_connections_evicted_total") >= 1.0,
        "{text}"
    );
}

#[test]
fn readiness_waits_for_the_warm_up() {
    // A warm-up pass of 2048 images takes long enough to be seen.
    let (dir, weights) = weights_dir();
    let server = launch(
        serve_command(&weights, &["--max-batch", "2048"]),
        dir,
        weights,
    );
    let mut saw_unready = false;
    let start = Instant::now();
    loop {
        let (status, _, body) = get(&server.url("/v2/health/ready"), None);
        if status == 200 {
            break;
        }
        assert_eq!((status, body.as_str()), (400, r#"{"ready":false}"#));
        // Alive all the while.
        assert_eq!(get(&server.url("/v2/health/live"), None).0, 200);
        if server.metric("densenet_warmup_seconds{model=\"densenet\",version=\"1\"}") != 0.0 {
            // The warm-up ended since readiness was asked: readiness says so now.
            assert_eq!(get(&server.url("/v2/health/ready"), None).0, 200);
        }
        saw_unready = true;
        assert!(start.elapsed() < PATIENCE, "never ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(saw_unready, "ready before the first probe: no proof");
    let text = server.metrics();
    assert!(
        metric(
            &text,
            "densenet_warmup_seconds{model=\"densenet\",version=\"1\"}"
        ) > 0.0,
        "{text}"
    );
    // The warm-up is not a batch of requests.
    assert_eq!(
        metric(
            &text,
            "densenet_batch_size_count{model=\"densenet\",version=\"1\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(
            &text,
            "densenet_images_classified_total{model=\"densenet\",version=\"1\"}"
        ),
        0.0
    );
    let said = server.said("ready: ");
    assert!(
        said.contains("warm-up passes of 2048 and 1 images took"),
        "{said}"
    );
}

// Several models and versions, and their reload.

/// A model of 100 classes with the deterministic weights but its classifier's scaled by
/// `scale`: another model of the same architecture, whose file is the same size.
fn scaled_model(scale: f64) -> densenet::Model {
    let config = small_config(100);
    let device = candle_core::Device::Cpu;
    let mut tensors = densenet::weights::synthetic::state_dict(&config, &device).unwrap();
    for (name, tensor) in tensors.iter_mut() {
        if name.ends_with("linear.weight") {
            *tensor = (tensor.clone() * scale).unwrap();
        }
    }
    let info = densenet::ModelInfo {
        labels: densenet::labels::default_labels(100),
        config,
        preprocessing: densenet::Preprocessing::cifar100(),
    };
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &device);
    densenet::Model::from_varbuilder(vb, info).unwrap()
}

/// The three models of these tests: `old` (100 classes, the deterministic weights, as the
/// tests above serve), `new` (the same but for its classifier) and `ten` (10 classes).
struct Files {
    old: PathBuf,
    new: PathBuf,
    ten: PathBuf,
}

fn model_files(dir: &Path) -> Files {
    let files = Files {
        old: dir.join("old.safetensors"),
        new: dir.join("new.safetensors"),
        ten: dir.join("ten.safetensors"),
    };
    deterministic_model(small_config(100))
        .save(&files.old, false)
        .unwrap();
    scaled_model(2.0).save(&files.new, false).unwrap();
    deterministic_model(small_config(10))
        .save(&files.ten, false)
        .unwrap();
    // Not three models that answer alike.
    let sizes: Vec<u64> = [&files.old, &files.new]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    assert_eq!(sizes[0], sizes[1]);
    files
}

/// Copies `from` over `to` as a deployment would: written beside it, then renamed onto it.
fn replace(from: &Path, to: &Path) {
    let temporary = to.with_extension("partial");
    std::fs::copy(from, &temporary).unwrap();
    std::fs::rename(&temporary, to).unwrap();
}

/// Puts `file` at `DIR/NAME/VERSION/model.safetensors`.
fn put_version(dir: &Path, name: &str, version: &str, file: &Path) {
    let folder = dir.join(name).join(version);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(file, folder.join("model.safetensors")).unwrap();
}

/// `densenet serve` with these arguments (models given by them), once ready.
fn serve_models(args: &[&std::ffi::OsStr], dir: tempfile::TempDir) -> Served {
    let mut command = Command::new(env!("CARGO_BIN_EXE_densenet"));
    command
        .arg("serve")
        .args(["--addr", "127.0.0.1:0", "--max-delay", "1ms"])
        .args(args)
        .env_remove("DENSENET_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let weights = dir.path().to_path_buf();
    let server = launch(command, dir, weights);
    server.said("ready: ");
    server
}

/// What the library answers for an image with the model in `file`: its top 3 and its logits.
fn expected(file: &Path, image: &Path) -> (densenet::Prediction, Vec<f32>) {
    let model = densenet::Model::load(file).unwrap();
    let x = model.preprocessing().load(image, model.device()).unwrap();
    let prediction = model.predict_top_k(&x, 3).unwrap().remove(0);
    let values = image_values(&model, image);
    let logits = prediction.logits.clone();
    assert_eq!(values.len(), 3 * 32 * 32);
    (prediction, logits)
}

/// The probabilities of a `/v1/classify` answer's top classes, as bits.
fn top_bits(text: &str) -> Vec<u32> {
    let answers: Vec<Value> = serde_json::from_str(text).unwrap_or_else(|_| panic!("{text}"));
    answers[0]["top_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["probability"].as_f64().unwrap() as f32).to_bits())
        .collect()
}

fn prediction_bits(prediction: &densenet::Prediction) -> Vec<u32> {
    prediction
        .top_k
        .iter()
        .map(|t| t.probability.to_bits())
        .collect()
}

#[test]
fn several_models_and_versions_are_served_at_once_each_as_alone() {
    let dir = tempfile::tempdir().unwrap();
    let files = model_files(dir.path());
    let repository = dir.path().join("repository");
    put_version(&repository, "alpha", "1", &files.old);
    put_version(&repository, "alpha", "2", &files.new);
    put_version(&repository, "beta", "1", &files.ten);
    // What Triton keeps beside the versions, and files beside the models, are left alone.
    std::fs::write(repository.join("alpha/config.pbtxt"), "name: \"alpha\"").unwrap();
    std::fs::write(repository.join("README"), "models").unwrap();
    let server = serve_models(&["--repository".as_ref(), repository.as_os_str()], dir);
    let image = &examples()[0];
    let png = std::fs::read(image).unwrap();
    let old = expected(&files.old, image);
    let new = expected(&files.new, image);
    let ten = expected(&files.ten, image);
    assert_ne!(old.1, new.1);

    // The index, Triton's shape.
    let (status, index) = post_json(&server.url("/v2/repository/index"), &json!({}));
    assert_eq!(status, 200, "{index}");
    assert_eq!(
        index,
        json!([
            {"name": "alpha", "version": "1", "state": "READY"},
            {"name": "alpha", "version": "2", "state": "READY"},
            {"name": "beta", "version": "1", "state": "READY"}
        ])
    );
    let (status, ready) = post_json(&server.url("/v2/repository/index"), &json!({"ready": true}));
    assert_eq!((status, &ready), (200, &index));
    let (status, _, text) = post(
        &server.url("/v2/repository/index"),
        "application/json",
        b"[",
    );
    assert_eq!(status, 400, "{text}");
    assert!(
        error_of(&text).starts_with("request body: not an index request"),
        "{text}"
    );
    // Metadata per model, every version listed.
    let (status, _, body) = get(&server.url("/v2/models/alpha"), None);
    assert_eq!(status, 200, "{body}");
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(meta["versions"], json!(["1", "2"]));
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 100]));
    let (_, _, body) = get(&server.url("/v2/models/beta/versions/1"), None);
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(meta["name"], "beta");
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 10]));
    let (status, _, body) = get(&server.url("/v2/models/alpha/versions/2/ready"), None);
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"name":"alpha","ready":true,"version":"2"}"#)
    );

    // Inference: each version its own logits, to the bit; the highest version without one.
    let values = {
        let model = densenet::Model::load(&files.old).unwrap();
        image_values(&model, image)
    };
    let request = infer_request(std::slice::from_ref(&values));
    for (path, version, logits) in [
        ("/v2/models/alpha/versions/1/infer", "1", &old.1),
        ("/v2/models/alpha/versions/2/infer", "2", &new.1),
        ("/v2/models/alpha/infer", "2", &new.1),
        ("/v2/models/beta/infer", "1", &ten.1),
    ] {
        let (status, body) = post_json(&server.url(path), &request);
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["model_version"], version, "{path}");
        assert_eq!(floats(&body["outputs"][0]["data"]), bits(logits), "{path}");
    }
    // /v1/classify by ?model= (and &version=), each as the library classifies it.
    for (query, prediction) in [
        ("model=alpha&version=1", &old.0),
        ("model=alpha", &new.0),
        ("version=2&model=alpha", &new.0),
        ("model=beta", &ten.0),
    ] {
        let url = server.url(&format!("/v1/classify?top_k=3&{query}"));
        let (status, _, text) = post(&url, "image/png", &png);
        assert_eq!(status, 200, "{query}: {text}");
        let answers: Vec<Value> = serde_json::from_str(&text).unwrap();
        assert_same_top_k(&answers[0]["top_k"], &prediction.top_k);
    }
    // Several models and none named: which are there.
    let (status, _, text) = post(&server.url("/v1/classify"), "image/png", &png);
    assert_eq!(status, 400, "{text}");
    let message = error_of(&text);
    assert!(
        message.contains("?model=NAME (\"alpha\", \"beta\")"),
        "{message}"
    );

    // Unknown models and versions: 404 naming them.
    for (path, named) in [
        (
            "/v2/models/gamma",
            "unknown model \"gamma\" (the models are \"alpha\", \"beta\")",
        ),
        (
            "/v2/models/alpha/versions/3",
            "model \"alpha\" has no version \"3\" (its versions are 1, 2)",
        ),
        (
            "/v2/models/beta/versions/x/ready",
            "model \"beta\" has no version \"x\"",
        ),
    ] {
        let (status, _, body) = get(&server.url(path), None);
        assert_eq!(status, 404, "{path}");
        assert!(error_of(&body).contains(named), "{body}");
    }
    let (status, body) = post_json(&server.url("/v2/models/gamma/versions/1/infer"), &request);
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("\"gamma\""),
        "{body}"
    );
    for (query, named) in [
        ("model=gamma", "\"gamma\""),
        ("model=beta&version=2", "no version \"2\""),
    ] {
        let url = server.url(&format!("/v1/classify?{query}"));
        let (status, _, text) = post(&url, "image/png", &png);
        assert_eq!(status, 404, "{query}");
        assert!(error_of(&text).contains(named), "{text}");
    }

    // Each version its own queue and batches.
    let text = server.metrics();
    for (labels, images) in [
        ("{model=\"alpha\",version=\"1\"}", 2.0),
        ("{model=\"alpha\",version=\"2\"}", 4.0),
        ("{model=\"beta\",version=\"1\"}", 2.0),
    ] {
        let sample = format!("densenet_images_classified_total{labels}");
        assert_eq!(metric(&text, &sample), images, "{sample}");
        assert_eq!(metric(&text, &format!("densenet_queue_depth{labels}")), 0.0);
        assert!(metric(&text, &format!("densenet_warmup_seconds{labels}")) > 0.0);
    }
}

#[test]
fn models_named_one_by_one_are_each_served_as_version_1() {
    let dir = tempfile::tempdir().unwrap();
    let files = model_files(dir.path());
    let (a, b) = (
        format!("hundred={}", files.old.display()),
        format!("ten={}", files.ten.display()),
    );
    let (old, ten) = (files.old.clone(), files.ten.clone());
    let server = serve_models(
        &[
            "--model".as_ref(),
            a.as_ref(),
            "--model".as_ref(),
            b.as_ref(),
        ],
        dir,
    );
    let (status, _, index) = post(&server.url("/v2/repository/index"), "application/json", b"");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&index).unwrap(),
        json!([
            {"name": "hundred", "version": "1", "state": "READY"},
            {"name": "ten", "version": "1", "state": "READY"}
        ])
    );
    let image = &examples()[1];
    let png = std::fs::read(image).unwrap();
    for (name, file) in [("hundred", &old), ("ten", &ten)] {
        let url = server.url(&format!("/v1/classify?top_k=3&model={name}"));
        let (status, _, text) = post(&url, "image/png", &png);
        assert_eq!(status, 200, "{text}");
        assert_eq!(top_bits(&text), prediction_bits(&expected(file, image).0));
        let (status, _, _) = get(&server.url(&format!("/v2/models/{name}/versions/1")), None);
        assert_eq!(status, 200);
    }
}

/// A client that posts `png` to `url` until `stop`, noting when each request started, its
/// status and its top probabilities.
fn hammer(
    url: &str,
    png: &[u8],
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<(Instant, u16, String)> {
    let mut answers = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let started = Instant::now();
        let (status, _, text) = post(url, "image/png", png);
        answers.push((started, status, text));
    }
    answers
}

#[test]
fn a_reload_under_load_fails_no_request_and_swaps_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let files = model_files(dir.path());
    let served = dir.path().join("served.safetensors");
    std::fs::copy(&files.old, &served).unwrap();
    let spec = format!("m={}", served.display());
    let image = &examples()[2];
    let png = std::fs::read(image).unwrap();
    let old = prediction_bits(&expected(&files.old, image).0);
    let new = prediction_bits(&expected(&files.new, image).0);
    assert_ne!(old, new);
    let (new_file, old_file) = (files.new.clone(), files.old.clone());
    let server = serve_models(&["--model".as_ref(), spec.as_ref()], dir);
    let url = server.url("/v1/classify?top_k=3");
    let load = server.url("/v2/repository/models/m/load");

    // A request in flight across the swap: its model is resolved when its head arrives, and
    // half its body comes before the load, half after.
    let mut in_flight = connect(&server);
    let head = format!(
        "POST /v1/classify?top_k=3 HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n\
         Content-Length: {}\r\n\r\n",
        png.len()
    );
    in_flight.write_all(head.as_bytes()).unwrap();
    in_flight.write_all(&png[..png.len() / 2]).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (loaded_at, answers) = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| hammer(&url, &png, &stop)))
            .collect();
        std::thread::sleep(Duration::from_millis(800));
        replace(&new_file, &served);
        let (status, body) = post_json(&load, &json!({}));
        let loaded_at = Instant::now();
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"name": "m", "versions": [
                {"version": "1", "change": "reloaded", "file": served.display().to_string()}
            ]})
        );
        std::thread::sleep(Duration::from_millis(800));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let answers: Vec<_> = clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        (loaded_at, answers)
    });
    // Not one request failed; each answer is the old model's or the new one's, and every request
    // made once the load had answered got the new one.
    let (mut before, mut after) = (0, 0);
    for (started, status, text) in &answers {
        assert_eq!(*status, 200, "{text}");
        let got = top_bits(text);
        if *started > loaded_at {
            assert_eq!(got, new, "an old answer after the load returned");
            after += 1;
        } else {
            assert!(got == old || got == new, "{text}");
            before += usize::from(got == old);
        }
    }
    assert!(
        before > 0 && after > 0,
        "{before} old answers, {after} after the load"
    );
    // The request in flight finishes on the model it started on.
    in_flight.write_all(&png[png.len() / 2..]).unwrap();
    let said = one_answer(&mut in_flight);
    assert!(said.starts_with("HTTP/1.1 200 "), "{said}");
    let (_, body) = said.split_once("\r\n\r\n").unwrap();
    assert_eq!(top_bits(body), old);

    // Loading an unchanged file changes nothing.
    let (status, body) = post_json(&load, &json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["versions"][0]["change"], "unchanged");

    // A broken file: the load says which and why, and the model loaded before serves on.
    let bytes = std::fs::read(&served).unwrap();
    let broken = server.weights.join("broken.safetensors");
    std::fs::write(&broken, &bytes[..bytes.len() / 3]).unwrap();
    replace(&broken, &served);
    let (status, body) = post_json(&load, &json!({}));
    assert_eq!(status, 500, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("model \"m\" version 1: {}: ", served.display())),
        "{message}"
    );
    let (status, _, text) = post(&url, "image/png", &png);
    assert_eq!(status, 200, "{text}");
    assert_eq!(top_bits(&text), new);
    assert_eq!(get(&server.url("/v2/models/m/ready"), None).0, 200);

    // Unloaded, it is gone; loaded again (mended), it is back.
    let (status, body) = post_json(&server.url("/v2/repository/models/m/unload"), &json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["versions"][0]["change"], "unloaded");
    let (status, _, text) = post(&url, "image/png", &png);
    assert_eq!(status, 404, "{text}");
    assert!(error_of(&text).contains("holds no model"), "{text}");
    assert_eq!(
        post_json(&server.url("/v2/repository/index"), &json!({})).1,
        json!([])
    );
    replace(&old_file, &served);
    let (status, body) = post_json(&load, &json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["versions"][0]["change"], "loaded");
    let (status, _, text) = post(&url, "image/png", &png);
    assert_eq!(status, 200, "{text}");
    assert_eq!(top_bits(&text), old);
    // Models the server does not hold.
    for name in ["other", ".hidden", "m%2F.."] {
        let url = server.url(&format!("/v2/repository/models/{name}/load"));
        let (status, body) = post_json(&url, &json!({}));
        assert_eq!(status, 404, "{name}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with("unknown model"),
            "{body}"
        );
    }
}

#[test]
fn a_repository_is_scanned_again_on_load_and_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let files = model_files(dir.path());
    let repository = dir.path().join("repository");
    put_version(&repository, "alpha", "1", &files.old);
    let server = serve_models(&["--repository".as_ref(), repository.as_os_str()], dir);
    let image = &examples()[3];
    let png = std::fs::read(image).unwrap();
    let old = prediction_bits(&expected(&files.old, image).0);
    let new = prediction_bits(&expected(&files.new, image).0);
    let ten = prediction_bits(&expected(&files.ten, image).0);
    let classify = |query: &str| {
        let url = server.url(&format!("/v1/classify?top_k=3&{query}"));
        let (status, _, text) = post(&url, "image/png", &png);
        (status, text)
    };
    let load = server.url("/v2/repository/models/alpha/load");

    // A new version: loaded, and the highest serves; the other is unchanged.
    put_version(&repository, "alpha", "2", &files.new);
    let (status, body) = post_json(&load, &json!({}));
    assert_eq!(status, 200, "{body}");
    let changes: Vec<(&str, &str)> = body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap(),
                v["change"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(changes, [("1", "unchanged"), ("2", "loaded")]);
    let (status, text) = classify("model=alpha");
    assert_eq!(status, 200, "{text}");
    assert_eq!(top_bits(&text), new);
    assert_eq!(top_bits(&classify("model=alpha&version=1").1), old);
    // A version removed: unloaded.
    std::fs::remove_dir_all(repository.join("alpha/1")).unwrap();
    let (status, body) = post_json(&load, &json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["versions"],
        json!([{"version": "1", "change": "unloaded",
                "file": repository.join("alpha/1/model.safetensors").display().to_string()},
               {"version": "2", "change": "unchanged",
                "file": repository.join("alpha/2/model.safetensors").display().to_string()}])
    );
    assert_eq!(classify("model=alpha&version=1").0, 404);
    assert_eq!(
        server.metrics().matches("version=\"1\"").count(),
        0,
        "the unloaded version's metrics are gone"
    );

    // SIGHUP: a new model folder loads, and a broken version leaves its model as it was.
    put_version(&repository, "beta", "1", &files.ten);
    std::fs::create_dir_all(repository.join("alpha/3")).unwrap();
    let hangup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    server.said("SIGHUP: ");
    let missing = repository.join("alpha/3/model.safetensors");
    let line = server.said("reload");
    assert_eq!(
        line,
        format!(
            "reload: model \"beta\" version 1: loaded from {}",
            repository.join("beta/1/model.safetensors").display()
        )
    );
    let line = server.said("reload");
    assert_eq!(
        line,
        format!(
            "reload failed, what was served serves on: {}: missing: each version folder \
             holds model.safetensors",
            missing.display()
        )
    );
    assert_eq!(
        server.said("reload done: "),
        "reload done: 1 version(s) changed, 1 model(s) failed"
    );
    assert_eq!(top_bits(&classify("model=beta").1), ten);
    assert_eq!(top_bits(&classify("model=alpha").1), new);
    // The load route says the same.
    let (status, body) = post_json(&load, &json!({}));
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&missing.display().to_string()),
        "{body}"
    );
    // Only the repository's own model folders: a name is never a way out of it.
    for name in ["gamma", "..%2Frepository", ".git"] {
        let url = server.url(&format!("/v2/repository/models/{name}/load"));
        let (status, body) = post_json(&url, &json!({}));
        assert_eq!(status, 404, "{name}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with("unknown model"),
            "{body}"
        );
    }
    std::fs::remove_dir(repository.join("alpha/3")).unwrap();
    std::fs::create_dir_all(repository.join("alpha/v3")).unwrap();
    let (status, body) = post_json(&load, &json!({}));
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("alpha/v3: not a version folder"),
        "{body}"
    );
    assert_eq!(top_bits(&classify("model=alpha").1), new);
}

/// Runs `densenet serve` with `args`, which must fail at start: its stderr.
fn fails_to_start(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_densenet"))
        .arg("serve")
        .args(["--addr", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    stderr
}

#[test]
fn bad_model_arguments_and_repositories_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let files = model_files(dir.path());
    let old = files.old.display().to_string();
    let missing = dir.path().join("missing.safetensors").display().to_string();
    let model = |spec: String| fails_to_start(&["--model".as_ref(), spec.as_ref()]);
    let said = model("justaname".into());
    assert!(said.contains("`justaname`: expected NAME=PATH"), "{said}");
    let said = model(format!("={old}"));
    assert!(said.contains("model name ``: it is empty"), "{said}");
    let said = model("a=".into());
    assert!(said.contains("`a=`: the path is empty"), "{said}");
    let said = model(format!("a={missing}"));
    assert!(said.contains(&format!("--model a={missing}: ")), "{said}");
    assert!(said.contains("No such file"), "{said}");
    let spec = format!("a={old}");
    let said = fails_to_start(&[
        "--model".as_ref(),
        spec.as_ref(),
        "--model".as_ref(),
        spec.as_ref(),
    ]);
    assert!(said.contains("the name \"a\" is given twice"), "{said}");
    let said = fails_to_start(&[
        "--model".as_ref(),
        spec.as_ref(),
        "--weights".as_ref(),
        old.as_ref(),
    ]);
    assert!(said.contains("cannot be used with"), "{said}");

    // Repositories, each wrong in one way.
    let repository = |name: &str, make: &dyn Fn(&Path)| {
        let root = dir.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        make(&root);
        let said = fails_to_start(&["--repository".as_ref(), root.as_os_str()]);
        (root, said)
    };
    let (root, said) = repository("empty", &|_| {});
    assert!(
        said.contains(&format!("--repository {0}: {0}: no models", root.display())),
        "{said}"
    );
    let said = fails_to_start(&["--repository".as_ref(), missing.as_ref()]);
    assert!(said.contains(&format!("{missing}: No such file")), "{said}");
    // Said once, not again as the cause of the cause.
    assert_eq!(said.matches("No such file").count(), 1, "{said}");
    let (root, said) = repository("no-versions", &|root| {
        std::fs::create_dir(root.join("a")).unwrap();
    });
    assert!(
        said.contains(&format!("{}: no versions", root.join("a").display())),
        "{said}"
    );
    for bad in ["v1", "0", "01", "-1"] {
        let (root, said) = repository(&format!("bad-version-{bad}"), &|root| {
            put_version(root, "a", "1", &files.old);
            std::fs::create_dir_all(root.join("a").join(bad)).unwrap();
        });
        let folder = root.join("a").join(bad);
        assert!(
            said.contains(&format!("{}: not a version folder", folder.display())),
            "{said}"
        );
    }
    let (root, said) = repository("no-file", &|root| {
        std::fs::create_dir_all(root.join("a/1")).unwrap();
        std::fs::write(root.join("a/1/model.pth"), b"").unwrap();
    });
    let file = root.join("a/1/model.safetensors");
    assert!(
        said.contains(&format!(
            "{}: missing: each version folder holds model.safetensors",
            file.display()
        )),
        "{said}"
    );
    let (root, said) = repository("broken", &|root| {
        std::fs::create_dir_all(root.join("a/1")).unwrap();
        std::fs::write(root.join("a/1/model.safetensors"), b"not weights").unwrap();
    });
    let file = root.join("a/1/model.safetensors");
    assert!(
        said.contains(&format!("model \"a\" version 1: {}: ", file.display())),
        "{said}"
    );
    assert_eq!(said.matches("not a valid").count(), 1, "{said}");
}

#[test]
fn a_replaced_version_lets_go_of_its_model_and_an_in_memory_one_cannot_reload() {
    use densenet::serve::{ChangeKind, Options, Repository, RepositoryError, Server, Source, Stop};
    let dir = tempfile::tempdir().unwrap();
    let files = model_files(dir.path());
    let served = dir.path().join("served.safetensors");
    std::fs::copy(&files.old, &served).unwrap();
    let source = Source::Files(vec![("m".to_string(), served.clone())]);
    let cpu = candle_core::Device::Cpu;
    let repository = Repository::open(source, &cpu, candle_core::DType::F32).unwrap();
    let old = std::sync::Arc::downgrade(repository.versions()[0].model());
    let options = || Options {
        max_batch: 2,
        ..Options::default()
    };
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = Server::bind_repository(addr, repository, options())
            .await
            .unwrap();
        server.warmed_up().await.unwrap();
        let models = server.models();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            stopped.await.ok();
        }));
        replace(&files.new, &served);
        let changes = models.load("m").await.unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].kind, ChangeKind::Reloaded);
        assert_eq!(models.served(), [("m".to_string(), vec![1])]);
        // Nothing holds the old version any more: its thread ends and its model is freed.
        let start = Instant::now();
        while old.strong_count() > 0 {
            assert!(start.elapsed() < PATIENCE, "the old model is still held");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(()).unwrap();
        assert_eq!(running.await.unwrap().unwrap(), Stop::Drained);

        // A model given in memory has no file to load again.
        let model = std::sync::Arc::new(deterministic_model(small_config(10)));
        let server = Server::bind(addr, model, options()).await.unwrap();
        let error = server.models().load("densenet").await.unwrap_err();
        assert!(matches!(error, RepositoryError::InMemory { .. }), "{error}");
        let error = server.models().load("other").await.unwrap_err();
        assert!(
            matches!(error, RepositoryError::UnknownModel { .. }),
            "{error}"
        );
    });
}

/// The client generated from proto/grpc_inference.proto by build.rs (as Triton's own clients
/// are generated from the same protocol).
#[allow(clippy::all)]
mod grpc {
    include!(concat!(env!("OUT_DIR"), "/grpc_client/inference.rs"));
}

use grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
use grpc::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

type GrpcClient = GrpcInferenceServiceClient<tonic::transport::Channel>;

/// A server with `--grpc-addr 127.0.0.1:0` (and `args`), and the gRPC address it said.
fn start_grpc(args: &[&str]) -> (Served, String) {
    let mut all = vec!["--grpc-addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let (dir, weights) = weights_dir();
    let server = launch(serve_command(&weights, &all), dir, weights);
    let line = server.said("gRPC (inference.GRPCInferenceService) on ");
    let addr = line.rsplit(' ').next().unwrap().to_string();
    server.said("ready: ");
    (server, format!("http://{addr}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `ModelInfer` for model `name` with one FP32 input of `images`, as raw bytes.
fn raw_infer(name: &str, images: &[Vec<f32>]) -> grpc::ModelInferRequest {
    let bytes = images.iter().flatten().flat_map(|v| v.to_le_bytes());
    grpc::ModelInferRequest {
        model_name: name.into(),
        id: "grpc-1".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![images.len() as i64, 3, 32, 32],
            ..Default::default()
        }],
        raw_input_contents: vec![bytes.collect()],
        ..Default::default()
    }
}

fn raw_floats(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn grpc_answers_as_http_does_bit_for_bit() {
    let (mut server, grpc_url) = start_grpc(&[]);
    let model = densenet::Model::load(&server.weights).unwrap();
    let images: Vec<Vec<f32>> = examples()[..3]
        .iter()
        .map(|p| image_values(&model, p))
        .collect();
    let (status, http) = post_json(
        &server.url("/v2/models/densenet/infer"),
        &infer_request(&images),
    );
    assert_eq!(status, 200, "{http}");
    let rt = runtime();
    rt.block_on(async {
        let mut client = GrpcClient::connect(grpc_url).await.unwrap();
        let live = client
            .server_live(grpc::ServerLiveRequest {})
            .await
            .unwrap();
        assert!(live.into_inner().live);
        let ready = client.server_ready(grpc::ServerReadyRequest {}).await;
        assert!(ready.unwrap().into_inner().ready);
        let ready = client
            .model_ready(grpc::ModelReadyRequest {
                name: "densenet".into(),
                version: "1".into(),
            })
            .await;
        assert!(ready.unwrap().into_inner().ready);
        let metadata = client
            .server_metadata(grpc::ServerMetadataRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(metadata.name, "densenet");
        let metadata = client
            .model_metadata(grpc::ModelMetadataRequest {
                name: "densenet".into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(metadata.versions, ["1"]);
        assert_eq!(metadata.inputs[0].name, "input");
        assert_eq!(metadata.inputs[0].shape, [-1, 3, 32, 32]);
        assert_eq!(metadata.outputs[0].shape, [-1, 100]);

        // Raw bytes, both outputs: the same bits as HTTP's JSON.
        let answer = client
            .model_infer(raw_infer("densenet", &images))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (answer.model_name.as_str(), answer.model_version.as_str()),
            ("densenet", "1")
        );
        assert_eq!(answer.id, "grpc-1");
        assert_eq!(answer.outputs.len(), 2);
        for (i, output) in answer.outputs.iter().enumerate() {
            assert_eq!(output.name, http["outputs"][i]["name"]);
            assert_eq!(output.datatype, "FP32");
            assert_eq!(output.shape, [3, 100]);
            assert_eq!(
                raw_floats(&answer.raw_output_contents[i]),
                floats(&http["outputs"][i]["data"]),
                "{}",
                output.name
            );
        }
        // The values in `contents`, one output asked for, the version named: the same.
        let mut request = raw_infer("densenet", &images);
        request.raw_input_contents.clear();
        request.inputs[0].contents = Some(grpc::InferTensorContents {
            fp32_contents: images.concat(),
            ..Default::default()
        });
        request.model_version = "1".into();
        request.outputs = vec![InferRequestedOutputTensor {
            name: "probabilities".into(),
            ..Default::default()
        }];
        let answer = client.model_infer(request).await.unwrap().into_inner();
        assert_eq!(answer.outputs.len(), 1);
        assert_eq!(answer.outputs[0].name, "probabilities");
        assert_eq!(
            raw_floats(&answer.raw_output_contents[0]),
            floats(&http["outputs"][1]["data"])
        );
    });
    assert_eq!(
        server.metric(r#"densenet_grpc_requests_total{code="Ok",method="ModelInfer"}"#),
        2.0
    );
    // The client's connection closes with its runtime (one left open would hold the shutdown
    // until it answers the server's GOAWAY and PING, or --drain runs out).
    drop(rt);
    let (status, said) = server.terminate();
    assert!(status.success(), "{said}");
}

#[test]
fn grpc_errors_name_what_is_wrong_under_the_right_code() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "grpc-token\n").unwrap();
    let (server, grpc_url) = start_grpc(&["--token-file", token_file.to_str().unwrap()]);
    let image = vec![0.25f32; 3 * 32 * 32];
    let rt = runtime();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(grpc_url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        // Without the token: health answers, the rest is UNAUTHENTICATED.
        let mut bare = GrpcClient::new(channel.clone());
        assert!(bare.server_live(grpc::ServerLiveRequest {}).await.is_ok());
        assert!(bare.server_ready(grpc::ServerReadyRequest {}).await.is_ok());
        let refused = bare
            .model_infer(raw_infer("densenet", std::slice::from_ref(&image)))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(refused.message().contains("bearer token"), "{refused:?}");
        let wrong = tonic::metadata::MetadataValue::from_static("Bearer wrong");
        let mut request = tonic::Request::new(grpc::ServerMetadataRequest {});
        request.metadata_mut().insert("authorization", wrong);
        let refused = bare.server_metadata(request).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);

        let token = tonic::metadata::MetadataValue::from_static("Bearer grpc-token");
        let mut client = GrpcClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", token.clone());
            Ok(r)
        });
        let ok = client
            .model_infer(raw_infer("densenet", std::slice::from_ref(&image)))
            .await;
        assert!(ok.is_ok(), "{ok:?}");

        type Edit = fn(&mut grpc::ModelInferRequest);
        let cases: [(Edit, tonic::Code, &str); 11] = [
            (
                |r| r.model_name = "absent".into(),
                tonic::Code::NotFound,
                "absent",
            ),
            (|r| r.model_version = "7".into(), tonic::Code::NotFound, "7"),
            (
                |r| r.inputs[0].shape = vec![1, 3, 16, 16],
                tonic::Code::InvalidArgument,
                "input \"input\": shape [1, 3, 16, 16], expected [N, 3, 32, 32]",
            ),
            (
                |r| r.inputs[0].datatype = "FP16".into(),
                tonic::Code::InvalidArgument,
                "input \"input\": datatype FP16, expected FP32",
            ),
            (
                |r| r.inputs[0].name = "pixels".into(),
                tonic::Code::InvalidArgument,
                "input \"pixels\": the model has no such input",
            ),
            (
                |r| r.raw_input_contents[0].truncate(100),
                tonic::Code::InvalidArgument,
                "raw_input_contents: 100 bytes, shape [1, 3, 32, 32] needs 12288",
            ),
            (
                |r| r.raw_input_contents[0][..4].copy_from_slice(&f32::NAN.to_le_bytes()),
                tonic::Code::InvalidArgument,
                "image 0 holds NaN: values must be finite",
            ),
            (
                |r| r.inputs.push(r.inputs[0].clone()),
                tonic::Code::InvalidArgument,
                "inputs: expected exactly one input",
            ),
            (
                |r| r.raw_input_contents.clear(),
                tonic::Code::InvalidArgument,
                "no contents (and no raw_input_contents)",
            ),
            (
                |r| {
                    r.inputs[0].contents = Some(grpc::InferTensorContents {
                        int_contents: vec![1],
                        ..Default::default()
                    });
                    r.raw_input_contents.clear();
                },
                tonic::Code::InvalidArgument,
                "go in fp32_contents",
            ),
            (
                |r| {
                    r.outputs = vec![InferRequestedOutputTensor {
                        name: "features".into(),
                        ..Default::default()
                    }]
                },
                tonic::Code::InvalidArgument,
                "output \"features\": the model has no such output",
            ),
        ];
        for (edit, code, message) in cases {
            let mut request = raw_infer("densenet", std::slice::from_ref(&image));
            edit(&mut request);
            let status = client.model_infer(request).await.unwrap_err();
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(message), "{status:?}");
        }
        let missing = client
            .model_metadata(grpc::ModelMetadataRequest {
                name: "absent".into(),
                version: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        // A message beyond --max-body is refused by its size.
        let huge = vec![image.clone(); 1500];
        let refused = client
            .model_infer(raw_infer("densenet", &huge))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    });
    let metrics = get(&server.url("/metrics"), Some("grpc-token")).2;
    assert!(
        metric(
            &metrics,
            r#"densenet_grpc_requests_total{code="InvalidArgument",method="ModelInfer"}"#
        ) >= 9.0
    );
}

#[test]
fn grpc_connections_are_capped_and_silent_ones_closed() {
    let (server, grpc_url) = start_grpc(&[
        "--max-connections",
        "2",
        "--header-timeout",
        "1s",
        "--keep-alive-timeout",
        "2s",
        "--timeout",
        "1s",
    ]);
    let addr = grpc_url.trim_start_matches("http://").to_string();
    let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    // Give the two their places before the third comes.
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(&addr).unwrap();
    third.set_read_timeout(Some(PATIENCE)).unwrap();
    let start = Instant::now();
    assert_eq!(
        third.read(&mut [0; 16]).unwrap_or(0),
        0,
        "the third is closed"
    );
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "closed at once"
    );
    server.wait_for("densenet_grpc_connections_refused_total", 1.0);
    // The silent two (sent the server's HTTP/2 settings) are closed after --header-timeout,
    // which makes room for a real client.
    for mut stream in silent {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        if let Err(e) = stream.read_to_end(&mut Vec::new()) {
            assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "{e}"
            );
        }
    }
    server.wait_for(r#"densenet_connection_timeouts_total{kind="header"}"#, 2.0);
    runtime().block_on(async {
        let mut client = GrpcClient::connect(grpc_url).await.unwrap();
        let image = vec![0.5f32; 3 * 32 * 32];
        let answer = client.model_infer(raw_infer("densenet", &[image])).await;
        assert!(answer.is_ok(), "{answer:?}");
        // Then silent past --keep-alive-timeout: closed as idle.
        server.wait_for(r#"densenet_connection_timeouts_total{kind="idle"}"#, 1.0);
    });
}
