"""The Python package against torch, ONNX Runtime and OpenVINO from Python, and against the engine
in-process: same weights, same threads, one run, alternating rounds.

Run by `make bench-python`, which creates the git-ignored venv tools/.python-bench-venv (torch,
onnxruntime, openvino, onnx, numpy, safetensors from PyPI), installs the package into it with
`pip install ./python` (a release build) and builds the `engine_bench` example. Steps:

1. The CIFAR DenseNet-121 (100 classes, 32×32) of tools/densenet_ref.py is built in torch with
   the deterministic weights of `deterministic_state_dict` and saved as a raw state_dict in
   safetensors: the file every runtime here loads.
2. Each runtime runs in a process of its own (their thread pools spin after each call and would
   slow whoever runs next in the same process), started by this script with `--worker KIND` and
   answering the lines `engine_bench serve` answers: `time BATCH ITERS` (median seconds per
   batch) and `logits IN OUT`. The kinds: `densenet` (this package's `Model.predict` on a numpy
   array), `torch` (the module in `eval()`, under `torch.inference_mode()`, on a tensor made
   with `torch.from_numpy`), `onnxruntime` and `openvino-f32` (`INFERENCE_PRECISION_HINT=f32`)
   on the ONNX graph that tools/bench_compare.py builds from the same weights; and `engine`,
   `engine_bench serve` itself: the engine's own in-process figure, no Python.
   Every one uses --threads threads (the engine's through RAYON_NUM_THREADS).
3. Everything first computes logits for the same batch, which must agree with torch's within
   --tolerance; `Model.predict` is also given the torch tensor itself and must answer the same.
4. Then all are timed in alternating rounds (each batch size, then each runtime, in every round),
   each round giving the median of its iterations; the median over rounds is reported.

It prints a table (ms per batch, images/s) and the lines `ratio_vs_torch b1=X b16=Y b64=Z` (the
package's throughput over torch's), `ratio_vs_onnxruntime …`, `ratio_vs_openvino_f32 …` and
`python_vs_engine …` (the package's throughput over the engine's in-process one: the binding's
cost).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from bench_compare import Engine, OnnxRuntime, OpenVino, build_onnx  # noqa: E402

KINDS = ["densenet", "torch", "onnxruntime", "openvino-f32", "engine"]


def batch_of(batch: int) -> np.ndarray:
    """The timed input: N(0, 1), as tools/bench_compare.py times its peers."""
    return np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)


def runtime(kind: str, weights: Path, onnx_path: Path, threads: int):
    """`kind`'s function from a float32 batch to its logits, loaded once."""
    if kind == "densenet":
        import densenet

        model = densenet.Model.load(weights)
        return model.predict
    if kind == "torch":
        import torch
        from densenet_ref import build_preset

        torch.set_num_threads(threads)
        net = build_preset("densenet121", 100)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(str(weights)).items()})
        net.eval()

        def forward(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return net(torch.from_numpy(x)).numpy()

        return forward
    if kind == "onnxruntime":
        return OnnxRuntime(onnx_path, threads).logits
    if kind == "openvino-f32":
        return OpenVino(onnx_path, threads, "f32").logits
    raise SystemExit(f"unknown worker kind {kind!r}")


def serve(kind: str, weights: Path, onnx_path: Path, threads: int) -> None:
    """Answers `time BATCH ITERS` and `logits IN OUT` lines on stdin, as `engine_bench serve`."""
    forward = runtime(kind, weights, onnx_path, threads)
    for line in sys.stdin:
        words = line.split()
        if words[0] == "time":
            batch, iters = int(words[1]), int(words[2])
            x = batch_of(batch)
            forward(x)  # warm-up
            times = []
            for _ in range(iters):
                start = time.perf_counter()
                forward(x)
                times.append(time.perf_counter() - start)
            answer = str(statistics.median(times))
        elif words[0] == "logits":
            save_file({"logits": np.ascontiguousarray(forward(load_file(words[1])["input"]))}, words[2])
            answer = "ok"
        else:
            answer = f"unknown command {words[0]!r}"
        print(answer, flush=True)


class Worker(Engine):
    """A runtime in its own process, spoken to as `engine_bench serve` is."""

    def __init__(self, argv: list[str], threads: int):
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def check(workers: dict[str, Worker], weights: Path, work: Path, tolerance: float) -> None:
    """Every runtime's logits against torch's, and the package on a torch tensor."""
    import torch

    import densenet

    x = batch_of(4)
    save_file({"input": x}, str(work / "in.safetensors"))
    logits = {}
    for kind, worker in workers.items():
        out = work / f"{kind}.safetensors"
        worker.ask(f"logits {work / 'in.safetensors'} {out}")
        logits[kind] = load_file(str(out))["logits"]
    reference = logits["torch"]
    for kind, values in logits.items():
        diff = float(np.abs(values - reference).max())
        print(f"check {kind}: max |Δlogit| vs torch = {diff:.2e}")
        if diff > tolerance:
            raise SystemExit(f"{kind}'s logits differ from torch's by {diff} (> {tolerance})")
    from_tensor = densenet.Model.load(weights).predict(torch.from_numpy(x))
    if not np.array_equal(from_tensor, logits["densenet"]):
        raise SystemExit("Model.predict on a torch tensor differs from Model.predict on its numpy array")
    print("check densenet: Model.predict(torch tensor) equals Model.predict(numpy array)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", type=Path, default=Path("target/release/examples/engine_bench"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of every runtime")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="largest |Δlogit| against torch")
    ap.add_argument("--worker", choices=KINDS[:-1], help=argparse.SUPPRESS)
    ap.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--onnx", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        serve(args.worker, args.weights, args.onnx, args.threads)
        return

    import torch
    from densenet_ref import build_preset, deterministic_state_dict

    import densenet

    batches = [int(b) for b in args.batches.split(",")]
    # Iterations per round: more for the short batches, so that each median is steady.
    iters = {b: max(3, 48 // b) for b in batches}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = work / "densenet121_cifar100.safetensors"
        net = build_preset("densenet121", 100)
        deterministic_state_dict(net)
        save_file({k: v.contiguous().numpy() for k, v in net.state_dict().items()}, str(weights))
        onnx_path = work / "densenet121.onnx"
        model = densenet.Model.load(weights)
        build_onnx(load_file(str(weights)), model.config, 32, onnx_path)

        me = [sys.executable, str(Path(__file__).resolve())]
        common = ["--weights", str(weights), "--onnx", str(onnx_path), "--threads", str(args.threads)]
        workers = {kind: Worker([*me, "--worker", kind, *common], args.threads) for kind in KINDS[:-1]}
        workers["engine"] = Worker([str(args.engine), "serve", str(weights), "f32"], args.threads)
        try:
            check(workers, weights, work, args.tolerance)
            times: dict[tuple[str, int], list[float]] = {(k, b): [] for k in workers for b in batches}
            for r in range(args.rounds):
                for b in batches:
                    for kind, worker in workers.items():
                        times[kind, b].append(float(worker.ask(f"time {b} {iters[b]}")))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            for worker in workers.values():
                worker.close()

    median = {key: statistics.median(v) for key, v in times.items()}
    import onnxruntime
    import openvino

    print(
        f"\nDenseNet-121 CIFAR-100, 32×32, f32, {args.threads} threads each, {args.rounds} alternating rounds; "
        f"CPU: {cpu_name()}; densenet {densenet.__version__} (isa {model.isa}), "
        f"torch {torch.__version__}, ONNX Runtime {onnxruntime.__version__}, OpenVINO {openvino.get_version().split('-')[0]}"
    )
    print(f"{'runtime':<14}" + "".join(f"{f'b{b} ms':>10}{f'b{b} img/s':>12}" for b in batches))
    for kind in workers:
        cells = "".join(f"{1e3 * median[kind, b]:>10.2f}{b / median[kind, b]:>12.0f}" for b in batches)
        print(f"{kind:<14}{cells}")
    for line, peer in [
        ("ratio_vs_torch", "torch"),
        ("ratio_vs_onnxruntime", "onnxruntime"),
        ("ratio_vs_openvino_f32", "openvino-f32"),
        ("python_vs_engine", "engine"),
    ]:
        ratios = " ".join(f"b{b}={median[peer, b] / median['densenet', b]:.2f}" for b in batches)
        print(f"{line} {ratios}")


if __name__ == "__main__":
    main()
