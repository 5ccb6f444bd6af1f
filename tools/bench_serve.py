"""`densenet serve` under load beside FastAPI + uvicorn + ONNX Runtime, same weights, one run.

Run by `make bench-serve`, which installs `oha` (cargo install) and the git-ignored venv
tools/.serve-venv (fastapi, uvicorn, onnxruntime, onnx, numpy, safetensors, pillow), and builds
`densenet` and the `engine_bench` example in release mode first. Steps:

1. `engine_bench write densenet121 W` writes deterministic CIFAR DenseNet-121 weights; the ONNX
   graph is built from them by tools/bench_compare.py's `build_onnx` (no PyTorch).
2. `engine_bench time W 16 ITERS` gives the in-process `Model::predict` throughput at batch 16,
   taken before each concurrency level; the 64-client level is compared with the one taken just
   before it.
3. Both servers, (a) `densenet serve` and (b) tools/fastapi_ort_server.py under uvicorn, are
   started on loopback ports and warmed up; then, at each concurrency in turn, the in-process
   figure is taken again and `oha` posts a 32×32 PNG to (a)'s and then (b)'s `/v1/classify` for
   --seconds (the other server idles meanwhile), so drift of the machine hits both alike. Requests/s, p50/p99 latency, errors
   (non-200 answers and transport errors), the resident memory at the start and end of each level
   (sampled every second) and the peak (VmHWM) are printed, then

       serve_ratio_vs_fastapi_ort c1=… c16=… c64=…   (our requests/s over theirs)
       serve_vs_inprocess c64=…                       (our images/s over predict at batch 16)

   and the issue's goals at 64 clients are checked and reported (not enforced).

`--smoke` (`make bench-serve-smoke`, run by .ci/run) runs the same steps in seconds: 1 s levels at 1
and 64 clients, 2 in-process iterations, and `--load python` (a small threaded client in this
script, the same figures as oha's) where oha is not installed; it fails where a step fails, so a
change elsewhere cannot silently break the benchmark.

`--slowloris N` measures the server alone against slow and idle clients: normal requests
(`--clients` of them, `--seconds` long) first unloaded, then while one other process holds N
connections open (a third trickling a request head, a third a body announced at a million bytes,
a third idle after one answer; one byte a second each, reopening any the server closes), and prints
both p99s, their ratio, the errors, the server's resident memory and its connection metrics.

`--grpc` serves the gRPC port too and drives it with Triton's own Python clients
(`tritonclient[grpc,http]`): health, metadata, 8 images answered bit for bit alike over gRPC and
HTTP, the error codes; then `--clients` threads send one-image FP32 tensors to
`/v2/models/densenet/infer` (Triton's binary format) and to `ModelInfer`, in alternating rounds,
and `grpc_vs_http` is printed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from bench_compare import build_onnx  # noqa: E402
from bench_compare import load as load_weights  # noqa: E402

LEVELS = (1, 16, 64)
SMOKE_LEVELS = (1, 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with status {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{url} was not ready within {seconds} s")


def python_load(url: str, image: Path, clients: int, seconds: float, pid: int) -> dict:
    """One load level from `clients` threads of this process, each on one kept-alive connection,
    with oha's figures: requests/s, p50 and p99 in seconds, errors and the RSS samples."""
    body = image.read_bytes()
    return http_load(url, "/v1/classify", body, {"Content-Type": "image/png"}, clients, seconds, pid)


def http_load(url: str, path: str, body: bytes, headers: dict, clients: int, seconds: float, pid: int) -> dict:
    """`clients` threads posting `body` to `path`, each on one kept-alive connection."""
    host, port = url.removeprefix("http://").split(":")

    def client(deadline: float, record) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while time.time() < deadline:
            start = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
            record(ok, time.perf_counter() - start)
        conn.close()

    return run_clients(client, clients, seconds, pid, url + path)


def run_clients(client, clients: int, seconds: float, pid: int, what: str) -> dict:
    """Runs `client(deadline, record)` in `clients` threads until the deadline, sampling the
    server's resident memory every second; requests/s, p50 and p99 in seconds, errors, RSS."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.time() + seconds

    def record(ok: bool, latency: float) -> None:
        with lock:
            if ok:
                latencies.append(latency)
            else:
                errors[0] += 1

    threads = [threading.Thread(target=client, args=(deadline, record)) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    rss = []
    while any(t.is_alive() for t in threads):
        rss.append(memory(pid)[0])
        time.sleep(min(1.0, seconds))
    elapsed = time.perf_counter() - started
    latencies.sort()
    if not latencies:
        sys.exit(f"no request to {what} was answered")

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {"rps": len(latencies) / elapsed, "p50": pct(0.5), "p99": pct(0.99), "errors": errors[0], "rss": rss,
            "requests": len(latencies)}


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(args, url: str, clients: int, seconds: float, pid: int) -> dict:
    if args.load == "python":
        return python_load(url, args.image, clients, seconds, pid)
    return oha(args.oha, url, args.image, clients, seconds, pid)


def oha(oha_bin: str, url: str, image: Path, clients: int, seconds: float, pid: int) -> dict:
    """One load level; the server's resident memory is sampled every second while it runs."""
    # -w: requests still in flight at the deadline are awaited, not counted as errors.
    proc = subprocess.Popen(
        [oha_bin, "--no-tui", "--output-format", "json", "-w", "-z", f"{seconds}s", "-c", str(clients),
         "-m", "POST", "-T", "image/png", "-D", str(image), url + "/v1/classify"],
        stdout=subprocess.PIPE, text=True,
    )
    rss = []
    while proc.poll() is None:
        rss.append(memory(pid)[0])
        time.sleep(1)
    stdout = proc.stdout.read()
    if proc.returncode != 0:
        sys.exit(f"oha failed with status {proc.returncode}")
    report = json.loads(stdout)
    statuses = report.get("statusCodeDistribution", {})
    errors = sum(n for code, n in statuses.items() if code != "200")
    errors += sum(report.get("errorDistribution", {}).values())
    percentiles = report["latencyPercentiles"]
    return {
        "rps": report["summary"]["requestsPerSec"],
        "p50": percentiles["p50"],
        "p99": percentiles["p99"],
        "errors": errors,
        "rss": rss,
    }


class Server:
    """One server process on a loopback port, started and warmed up before any level runs."""

    def __init__(self, name: str, command: list[str], env: dict, cwd: Path, port: int, args):
        self.name, self.args = name, args
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        wait_ready(self.url, self.proc)
        load(args, self.url, 4, args.warmup, self.proc.pid)
        self.levels: dict[int, dict] = {}

    def level(self, clients: int) -> None:
        r = load(self.args, self.url, clients, self.args.seconds, self.proc.pid)
        self.levels[clients] = r
        rss = r["rss"] or [memory(self.proc.pid)[0]]
        print(
            f"{self.name:<22} c{clients:<3} {r['rps']:8.1f} req/s  p50 {1e3 * r['p50']:7.1f} ms  "
            f"p99 {1e3 * r['p99']:7.1f} ms  errors {r['errors']}  "
            f"RSS {rss[0]:.1f} → {rss[-1]:.1f} MiB",
            flush=True,
        )

    def peak(self) -> float:
        return memory(self.proc.pid)[1]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def inprocess(engine: Path, weights: Path, iters: int) -> tuple[float, float]:
    """`Model::predict` at batch 16 in its own process: (ms per batch, images/s)."""
    timed = subprocess.run([str(engine), "time", str(weights), "16", str(iters)], check=True,
                           capture_output=True, text=True).stdout
    match = re.search(r"batch 16: ([\d.]+) ms, ([\d.]+) img/s", timed)
    if not match:
        sys.exit(f"unexpected engine_bench output: {timed!r}")
    return float(match.group(1)), float(match.group(2))


SLOW_HEAD = b"POST /v1/classify HTTP/1.1\r\nHost: bench\r\n"
SLOW_BODY = (b"POST /v1/classify HTTP/1.1\r\nHost: bench\r\nContent-Type: image/png\r\n"
             b"Content-Length: 1000000\r\n\r\nabc")
IDLE = b"GET /v2/health/live HTTP/1.1\r\nHost: bench\r\n\r\n"


def hold(host: str, port: int, n: int, ready, stop, reopened) -> None:
    """One client holding `n` slow or idle connections open until `stop` is set (run in a process
    of its own): every second each trickling one gets a byte, and any the server closed (after a
    408, or idle) is opened again; `reopened` counts those."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 256), hard))
    socks: list = [None] * n

    def open_one(i: int) -> None:
        s = socket.create_connection((host, port))
        s.sendall((SLOW_HEAD, SLOW_BODY, IDLE)[i % 3])
        s.setblocking(False)
        socks[i] = s

    for i in range(n):
        open_one(i)
    ready.set()
    while not stop.is_set():
        for i, s in enumerate(socks):
            try:
                while True:
                    if not s.recv(65536):
                        raise ConnectionResetError
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                open_one(i)
                reopened.value += 1
                continue
            if i % 3 < 2:
                try:
                    s.send(b"X" if i % 3 == 0 else b"a")
                except OSError:
                    pass
        stop.wait(1.0)
    for s in socks:
        s.close()


def metrics_of(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("densenet_conn") or line.startswith("densenet_accept"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def serve_alone(args, source: str, path: Path, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int, str]:
    """`densenet serve` on a free port with the models from `source path` (`--weights FILE` or
    `--repository DIR`), batching as the load levels do; returns the process, port and URL."""
    port = free_port()
    proc = subprocess.Popen(
        [str(args.densenet), "serve", source, str(path), "--addr", f"127.0.0.1:{port}",
         "--max-batch", "16", "--max-delay", args.max_delay, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    return proc, port, f"http://127.0.0.1:{port}"


def slowloris(args, weights_path: Path) -> None:
    proc, port, url = serve_alone(args, "--weights", weights_path)
    try:
        wait_ready(url, proc)
        load(args, url, 4, args.warmup, proc.pid)
        unloaded = load(args, url, args.clients, args.seconds, proc.pid)
        idle_rss = memory(proc.pid)[0]
        ready, stop = multiprocessing.Event(), multiprocessing.Event()
        reopened = multiprocessing.Value("i", 0)
        holder = multiprocessing.Process(target=hold, args=("127.0.0.1", port, args.slowloris, ready, stop, reopened))
        started = time.time()
        holder.start()
        if not ready.wait(300):
            sys.exit("the slow client could not open its connections")
        opened = time.time() - started
        held = metrics_of(url)
        loaded = load(args, url, args.clients, args.seconds, proc.pid)
        after = metrics_of(url)
        rss, peak = memory(proc.pid)
        stop.set()
        holder.join(60)
        # The slow connections, once gone, leave the memory they took.
        time.sleep(2)
        released = memory(proc.pid)[0]
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"densenet serve, {args.clients} clients for {args.seconds:g} s each, {os.cpu_count()} CPUs, "
          f"load from {args.load}")
    for name, r in (("unloaded", unloaded), (f"{args.slowloris} slow conns", loaded)):
        print(f"{name:<20} {r['rps']:8.1f} req/s  p50 {1e3 * r['p50']:7.1f} ms  p99 {1e3 * r['p99']:7.1f} ms  "
              f"errors {r['errors']}")
    print(f"slow connections opened in {opened:.1f} s; reopened after the server closed them: "
          f"{reopened.value}")
    print("server metrics with them held: " + ", ".join(f"{k} {v:g}" for k, v in held.items()))
    print("and after the loaded level:    " + ", ".join(f"{k} {v:g}" for k, v in after.items()))
    print(f"server RSS: {idle_rss:.1f} MiB before, {rss:.1f} MiB with them (peak {peak:.1f}), "
          f"{released:.1f} MiB once they were gone")
    ratio = loaded["p99"] / unloaded["p99"]
    print(f"slowloris_p99_ratio={ratio:.2f} errors={loaded['errors']}")
    goal = ratio < 2 and loaded["errors"] == 0
    print(f"goal (p99 under 2x unloaded, zero errors): {'met' if goal else 'NOT MET'}")


def reloads(args, weights_path: Path) -> None:
    """`--reloads N`: the server on a model repository under `--clients` clients for `--seconds`,
    while its model's file is replaced and `POST /v2/repository/models/densenet/load`ed N times,
    evenly spaced; every failed request counts."""
    repository = args.workdir / "repository"
    shutil.rmtree(repository, ignore_errors=True)
    version = repository / "densenet" / "1"
    version.mkdir(parents=True)
    shutil.copyfile(weights_path, version / "model.safetensors")
    proc, _, url = serve_alone(args, "--repository", repository)
    swaps: list[tuple[int, float, str]] = []

    def reload_all() -> None:
        gap = args.seconds / (args.reloads + 1)
        for i in range(args.reloads):
            time.sleep(gap)
            # A new file under the same name (a new inode and time): the server sees it changed.
            fresh = version / "model.safetensors.new"
            shutil.copyfile(weights_path, fresh)
            os.replace(fresh, version / "model.safetensors")
            started = time.perf_counter()
            request = urllib.request.Request(url + "/v2/repository/models/densenet/load", data=b"{}",
                                             method="POST", headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=120) as r:
                    swaps.append((r.status, time.perf_counter() - started, r.read().decode()))
            except urllib.error.HTTPError as e:
                swaps.append((e.code, time.perf_counter() - started, e.read().decode()))

    try:
        wait_ready(url, proc)
        load(args, url, 4, args.warmup, proc.pid)
        reloader = threading.Thread(target=reload_all)
        reloader.start()
        loaded = load(args, url, args.clients, args.seconds, proc.pid)
        reloader.join()
        rss, peak = memory(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"densenet serve --repository, {args.clients} clients for {args.seconds:g} s, {args.reloads} "
          f"reloads, {os.cpu_count()} CPUs, load from {args.load}")
    print(f"{loaded['rps']:.1f} req/s  p50 {1e3 * loaded['p50']:.1f} ms  p99 {1e3 * loaded['p99']:.1f} ms  "
          f"errors {loaded['errors']}")
    for status, seconds, body in swaps:
        print(f"load: {status} in {seconds:.2f} s  {body[:120]}")
    print(f"server RSS at the end {rss:.1f} MiB (peak {peak:.1f})")
    ok = sum(status == 200 for status, _, _ in swaps)
    print(f"reloads={ok}/{args.reloads} errors={loaded['errors']}")
    goal = ok == args.reloads and loaded["errors"] == 0
    print(f"goal (every reload swapped in, zero failed requests): {'met' if goal else 'NOT MET'}")


def tensor_load(kind: str, target: str, clients: int, seconds: float, pid: int) -> dict:
    """One load level of `/v2/models/densenet/infer` requests of one 32×32 FP32 image from
    `clients` threads, each with its own connection: `kind` "http" posts Triton's binary tensor
    format with http.client, "grpc" calls ModelInfer through the stub of Triton's gRPC client
    package (raw contents).
    Figures as python_load's."""
    import grpc
    import numpy as np
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    image = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    if kind == "http":
        header = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                         "parameters": {"binary_data_size": image.nbytes}}]}).encode()
        headers = {"Content-Type": "application/octet-stream",
                   "Inference-Header-Content-Length": str(len(header))}
        return http_load(target, "/v2/models/densenet/infer", header + image.tobytes(), headers,
                         clients, seconds, pid)

    # The request built once and sent through the stub of Triton's client package, as the HTTP
    # side sends prebuilt bytes: the client's own costs, which share the server's cores, stay small.
    request = service_pb2.ModelInferRequest(model_name="densenet", raw_input_contents=[image.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 32, 32])

    def client(deadline: float, record) -> None:
        # A connection of its own per client, as on the HTTP side.
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.time() < deadline:
            start = time.perf_counter()
            try:
                stub.ModelInfer(request, timeout=60)
                ok = True
            except grpc.RpcError:
                ok = False
            record(ok, time.perf_counter() - start)
        channel.close()

    return run_clients(client, clients, seconds, pid, f"gRPC {target}")


def grpc_check(url: str, grpc_target: str) -> None:
    """Triton's own clients against the server: gRPC answers equal HTTP's bit for bit (both of
    Triton's clients, binary tensors both ways), and the errors' codes."""
    import numpy as np
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    grpc_client = triton_grpc.InferenceServerClient(grpc_target)
    http_client = triton_http.InferenceServerClient(url.removeprefix("http://"))
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("densenet")
    metadata = grpc_client.get_model_metadata("densenet", as_json=True)
    assert metadata["inputs"][0]["shape"] == ["-1", "3", "32", "32"], metadata
    images = np.random.default_rng(1).standard_normal((8, 3, 32, 32), dtype=np.float32)
    answers = []
    for module, client in ((triton_grpc, grpc_client), (triton_http, http_client)):
        tensor = module.InferInput("input", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        result = client.infer("densenet", [tensor])
        answers.append([result.as_numpy(name) for name in ("logits", "probabilities")])
    for name, g, h in zip(("logits", "probabilities"), *answers):
        if g.shape != (8, 100) or g.tobytes() != h.tobytes():
            sys.exit(f"gRPC's {name} differ from HTTP's: {np.abs(g - h).max()}")
    for model, shape, code in (("absent", [1, 3, 32, 32], "StatusCode.NOT_FOUND"),
                               ("densenet", [1, 3, 16, 16], "StatusCode.INVALID_ARGUMENT")):
        tensor = triton_grpc.InferInput("input", shape, "FP32")
        tensor.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
        try:
            grpc_client.infer(model, [tensor])
            sys.exit(f"{model} {shape}: no error")
        except triton_grpc.InferenceServerException as e:
            if e.status() != code:
                sys.exit(f"{model} {shape}: {e.status()} ({e.message()}), expected {code}")
    print("Triton's gRPC and HTTP clients: live, ready, metadata; 8 images answered bit for bit alike "
          "over gRPC and HTTP; an unknown model NOT_FOUND, a wrong shape INVALID_ARGUMENT")


def grpc_bench(args, weights_path: Path) -> None:
    """`--grpc`: Triton's clients check the gRPC service against HTTP, then `--clients` clients
    send one-image tensor requests over HTTP and over gRPC, in alternating rounds."""
    grpc_port = free_port()
    proc, _, url = serve_alone(args, "--weights", weights_path, ("--grpc-addr", f"127.0.0.1:{grpc_port}"))
    target = f"127.0.0.1:{grpc_port}"
    rounds = 1 if args.smoke else 3
    results: dict[str, list[dict]] = {"http": [], "grpc": []}
    try:
        wait_ready(url, proc)
        grpc_check(url, target)
        for kind in results:
            tensor_load(kind, url if kind == "http" else target, 4, args.warmup, proc.pid)
        for _ in range(rounds):
            for kind in results:
                cpu = cpu_seconds(proc.pid)
                r = tensor_load(kind, url if kind == "http" else target, args.clients, args.seconds, proc.pid)
                r["cpu_ms"] = 1e3 * (cpu_seconds(proc.pid) - cpu) / r["requests"]
                results[kind].append(r)
                print(f"{kind:<5} c{args.clients:<3} {r['rps']:8.1f} req/s  p50 {1e3 * r['p50']:7.1f} ms  "
                      f"p99 {1e3 * r['p99']:7.1f} ms  errors {r['errors']}  server CPU {r['cpu_ms']:.2f} ms "
                      "per request", flush=True)
        rss, peak = memory(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    median = {k: sorted(r["rps"] for r in v)[len(v) // 2] for k, v in results.items()}
    cpu = {k: sorted(r["cpu_ms"] for r in v)[len(v) // 2] for k, v in results.items()}
    errors = sum(r["errors"] for v in results.values() for r in v)
    print(f"server RSS at the end {rss:.1f} MiB (peak {peak:.1f})")
    ratio = median["grpc"] / median["http"]
    print(f"grpc_vs_http c{args.clients}={ratio:.2f} (medians of {rounds} rounds: gRPC {median['grpc']:.1f}, "
          f"HTTP {median['http']:.1f} req/s) errors={errors}")
    print(f"server CPU per request: gRPC {cpu['grpc']:.2f} ms, HTTP {cpu['http']:.2f} ms")
    goal = ratio >= 1.0 and errors == 0
    print(f"goal (gRPC at least HTTP's throughput, zero errors): {'met' if goal else 'NOT MET'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20, help="load time per concurrency level")
    ap.add_argument("--warmup", type=float, default=3, help="warm-up load before the levels")
    ap.add_argument("--densenet", type=Path, default=ROOT / "target/release/densenet")
    ap.add_argument("--engine", type=Path, default=ROOT / "target/release/examples/engine_bench")
    ap.add_argument("--workdir", type=Path, default=ROOT / "target/bench-serve")
    ap.add_argument("--image", type=Path, default=ROOT / "examples/images/cifar100_00_49.png")
    ap.add_argument("--oha", default="oha")
    ap.add_argument("--load", choices=("oha", "python"), help="load generator (default: oha; "
                    "with --smoke, python where oha is not installed)")
    ap.add_argument("--max-delay", default="2ms", help="densenet serve --max-delay")
    ap.add_argument("--smoke", action="store_true", help="every step in seconds (CI): 1 s levels at 1 and 64 clients")
    ap.add_argument("--slowloris", type=int, metavar="N",
                    help="the server alone, unloaded and then beside N slow or idle connections")
    ap.add_argument("--clients", type=int, default=16, help="normal clients of --slowloris and --reloads")
    ap.add_argument("--reloads", type=int, metavar="N",
                    help="the server on a model repository, its model replaced and reloaded N times under load")
    ap.add_argument("--grpc", action="store_true",
                    help="Triton's gRPC client against the gRPC port, checked against HTTP and timed beside it "
                         "at --clients")
    args = ap.parse_args()
    if args.load is None:
        args.load = "python" if args.smoke and not shutil.which(args.oha) else "oha"
    if args.smoke:
        args.seconds, args.warmup = 1, 0.5
    levels = SMOKE_LEVELS if args.smoke else LEVELS
    iters = 2 if args.smoke else 9

    args.workdir.mkdir(parents=True, exist_ok=True)
    weights_path = args.workdir / "densenet121.safetensors"
    onnx_path = args.workdir / "densenet121.onnx"
    subprocess.run([str(args.engine), "write", "densenet121", str(weights_path)], check=True)
    if args.slowloris:
        slowloris(args, weights_path)
        return
    if args.reloads:
        reloads(args, weights_path)
        return
    if args.grpc:
        grpc_bench(args, weights_path)
        return
    weights, config = load_weights(weights_path)
    build_onnx(weights, config, 32, onnx_path)

    print(f"{args.seconds:g} s per level, 32×32 PNG {args.image.name}, {os.cpu_count()} CPUs, load from "
          f"{args.load}; both servers up at once (the idle one sleeps), levels alternating between them, "
          "the in-process figure taken just before each densenet level\n")

    servers = []
    try:
        port = free_port()
        servers.append(Server(
            "densenet serve",
            [str(args.densenet), "serve", "--weights", str(weights_path), "--addr", f"127.0.0.1:{port}",
             "--max-batch", "16", "--max-delay", args.max_delay],
            dict(os.environ), ROOT, port, args,
        ))
        port = free_port()
        servers.append(Server(
            "FastAPI+uvicorn+ORT",
            [sys.executable, "-m", "uvicorn", "fastapi_ort_server:app", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--log-level", "warning"],
            dict(os.environ, DENSENET_ONNX=str(onnx_path)), ROOT / "tools", port, args,
        ))
        ours, theirs = servers
        batch = {}
        for clients in levels:
            batch[clients] = inprocess(args.engine, weights_path, iters)
            print(f"{'in-process predict':<22} b16  {batch[clients][1]:8.1f} img/s  "
                  f"{batch[clients][0]:.1f} ms per batch", flush=True)
            ours.level(clients)
            theirs.level(clients)
        peaks = {s.name: s.peak() for s in servers}
    finally:
        for server in servers:
            server.stop()

    batch_ms, inprocess_rate = batch[64]
    print("\npeak RSS: " + ", ".join(f"{name} {peak:.1f} MiB" for name, peak in peaks.items()))
    ratio = {c: ours.levels[c]["rps"] / theirs.levels[c]["rps"] for c in levels}
    print("serve_ratio_vs_fastapi_ort " + " ".join(f"c{c}={ratio[c]:.2f}" for c in levels))
    c64 = ours.levels[64]
    efficiency = c64["rps"] / inprocess_rate
    print(f"serve_vs_inprocess c64={efficiency:.2f}")

    # Flat: the resident memory at the end of the 64-client level within 10% + 16 MiB of what
    # it was after its first quarter.
    rss = c64["rss"] or [0.0]
    settled = rss[len(rss) // 4]
    goals = {
        "≥ 80% of in-process batch-16 throughput": efficiency >= 0.8,
        "≥ 1.5× FastAPI + ONNX Runtime": ratio[64] >= 1.5,
        "zero errors": all(ours.levels[c]["errors"] == 0 for c in levels),
        f"p99 ≤ 4× the batch time ({4 * batch_ms:.0f} ms)": 1e3 * c64["p99"] <= 4 * batch_ms,
        f"RSS flat over the level ({settled:.1f} → {rss[-1]:.1f} MiB)": rss[-1] <= settled * 1.1 + 16,
    }
    # Little's law: with 64 clients always waiting, the mean latency is 64 / throughput, and that
    # is already 4 batch times at the in-process batch-16 rate; the tail over that floor is what
    # the server adds.
    floor = 64 / c64["rps"]
    print(f"c64 latency floor (64 clients / throughput) {1e3 * floor:.0f} ms: "
          f"p50 {c64['p50'] / floor:.2f}×, p99 {c64['p99'] / floor:.2f}× of it")
    print("\ngoals at 64 clients:")
    for goal, met in goals.items():
        print(f"  {'met    ' if met else 'NOT MET'} {goal}")


if __name__ == "__main__":
    main()
