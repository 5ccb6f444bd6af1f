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
        assert_eq!(
            server.metric("densenet_warmup_seconds{model=\"densenet\",version=\"1\"}"),
            0.0
        );
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
