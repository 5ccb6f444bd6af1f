"""Side-by-side CPU benchmark: this engine against ONNX Runtime and OpenVINO, same weights, same run.

Run by `make bench-compare`, which creates the git-ignored venv tools/.bench-venv (onnxruntime,
openvino, onnx, numpy, safetensors from PyPI) and builds the `engine_bench` example first. Steps:

1. `engine_bench write densenet121 W` writes deterministic densenet121 weights (CIFAR-100) with
   the self-describing metadata this crate reads; with `--cases` including `224` (the default),
   `engine_bench write densenet121-imagenet W` also writes torchvision's ImageNet densenet121 (7×7
   stem, max pool, 1000 classes; BatchNorm statistics far from the identity), run at 224×224.
2. The ONNX graph of each is built here from that file with `onnx.helper`, layer by layer as the
   PyTorch model computes it (Conv, BatchNormalization, Relu, MaxPool, Concat, AveragePool,
   GlobalAveragePool, Gemm), so no PyTorch is needed.
3. The peers in --peers run that graph: ONNX Runtime (ORT_ENABLE_ALL graph optimisations),
   OpenVINO with `INFERENCE_PRECISION_HINT=f32` (`openvino-f32`) and OpenVINO as installed
   (`openvino`: its CPU plugin runs bf16 where the CPU has AVX-512 BF16), each on --threads
   threads; OpenVINO compiles the graph once per batch size with that static shape. The engine
   runs as one long-running `engine_bench serve` process per instruction set in --isa, each
   started with DENSENET_CPU_ISA set to it, in f32; with --bf16 (the default) one more process
   runs the engine in bf16 on the first instruction set, where the CPU has AVX-512 BF16.
4. Everything first computes logits for the same input batch; the engine in f32 and the fp32
   peers must agree with ONNX Runtime within --tolerance (the engine's bf16 within
   --bf16-tolerance, relative to the largest logit; OpenVINO's default precision is only
   reported). Then all are timed in alternating rounds (every network, batch size and runtime in
   each round), each round giving the median time of its iterations, and the median over rounds
   is reported.

For each instruction set it prints `ratio_vs_onnxruntime isa=ISA b1=X b16=Y b64=Z` (the engine's
throughput divided by ONNX Runtime's), `ratio_vs_best_fp32_peer isa=…` (over the faster of ONNX
Runtime and OpenVINO f32 at each batch size) and `ratio_vs_openvino_default isa=…`; with several
instruction sets, also `ISA_vs_FIRST b1=… b16=… b64=…`, each one's throughput over the first one's.
The engine's bf16 gets `ratio_vs_openvino_default isa=ISA precision=bf16 …` and
`bf16_vs_f32 isa=ISA …` lines. The 224×224 network's lines carry the suffix `_224`
(`ratio_vs_onnxruntime_224 isa=ISA b1=X b16=Y`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors import safe_open
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
BN_EPS = 1e-5


def load(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with safe_open(str(path), framework="np") as f:
        config = json.loads(f.metadata()["densenet.config"])
        return {k: f.get_tensor(k) for k in f.keys()}, config


class Graph:
    """Builds an ONNX graph node by node, with the weights as initializers."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.nodes: list = []
        self.inits: list = []
        self.count = 0

    def tensor(self, name: str) -> str:
        self.inits.append(numpy_helper.from_array(self.weights[name].astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        self.count += 1
        out = f"{op.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def bn(self, x: str, p: str, relu: bool = True) -> str:
        names = [f"{p}.weight", f"{p}.bias", f"{p}.running_mean", f"{p}.running_var"]
        y = self.node("BatchNormalization", [x] + [self.tensor(n) for n in names], epsilon=BN_EPS)
        return self.node("Relu", [y]) if relu else y

    def conv(self, x: str, p: str, stride: int = 1) -> str:
        w = self.tensor(f"{p}.weight")
        k = self.weights[w].shape[-1]
        return self.node("Conv", [x, w], kernel_shape=[k, k], strides=[stride] * 2, pads=[k // 2] * 4)


def build_onnx(weights: dict[str, np.ndarray], config: dict, size: int, path: Path) -> None:
    g = Graph(weights)
    stem = config.get("stem", "cifar")
    x = g.conv("input", "conv1", stride=2 if stem == "image_net" else 1)
    if stem != "cifar":
        x = g.bn(x, "norm0")
    if stem == "image_net":
        x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    blocks = config["block_config"]
    for i, layers in enumerate(blocks):
        block = f"dense_block{i}" if i + 1 == len(blocks) else f"dense_block_layer_{i}"
        for j in range(layers):
            p = f"features.{block}.bottle_neck_layer_{j}.bottle_neck"
            y = g.conv(g.bn(x, f"{p}.0"), f"{p}.2")
            y = g.conv(g.bn(y, f"{p}.3"), f"{p}.5")
            x = g.node("Concat", [x, y], axis=1)
        if i + 1 < len(blocks):
            p = f"features.transition_layer_{i}.down_sample"
            y = g.conv(g.bn(x, f"{p}.0", relu=config.get("transition_relu", False)), f"{p}.1")
            x = g.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])
    x = g.node("GlobalAveragePool", [g.bn(x, "features.bn")])
    x = g.node("Flatten", [x], axis=1)
    g.nodes.append(
        helper.make_node("Gemm", [x, g.tensor("linear.weight"), g.tensor("linear.bias")], ["logits"], transB=1)
    )
    graph = helper.make_graph(
        g.nodes,
        "densenet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", config["num_classes"]])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


class Engine:
    """The `engine_bench serve` process: one command line in, one answer line out."""

    def __init__(self, binary: Path, weights: Path, isa: str, precision: str = "f32"):
        env = dict(os.environ, DENSENET_CPU_ISA=isa)
        self.proc = subprocess.Popen(
            [str(binary), "serve", str(weights), precision],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer:
            sys.exit(f"engine_bench stopped answering after {line!r}")
        return answer

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


class Peer:
    """Another runtime on the same ONNX graph: `logits(x)` and the median seconds of a batch."""

    def logits(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def seconds(self, batch: int, iters: int, size: int = 32) -> float:
        x = np.random.default_rng(batch).standard_normal((batch, 3, size, size), dtype=np.float32)
        self.logits(x)  # warm-up
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            self.logits(x)
            times.append(time.perf_counter() - start)
        return statistics.median(times)


class OnnxRuntime(Peer):
    def __init__(self, onnx_path: Path, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.version = f"ONNX Runtime {ort.__version__} (ORT_ENABLE_ALL)"

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": x})[0]


class OpenVino(Peer):
    """OpenVINO's CPU plugin; `precision` None keeps its default (bf16 on AVX-512 BF16 CPUs)."""

    def __init__(self, onnx_path: Path, threads: int, precision: str | None):
        import openvino as ov

        self.core = ov.Core()
        self.onnx_path = onnx_path
        self.config = {"INFERENCE_NUM_THREADS": threads}
        if precision:
            self.config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled: dict[tuple, object] = {}
        hint = precision or "default"
        self.version = f"OpenVINO {ov.get_version().split('-')[0]} ({hint} precision)"

    def request(self, shape: tuple):
        if shape not in self.compiled:
            model = self.core.read_model(str(self.onnx_path))
            model.reshape({"input": list(shape)})
            compiled = self.core.compile_model(model, "CPU", self.config)
            self.compiled[shape] = compiled.create_infer_request()
        return self.compiled[shape]

    def logits(self, x: np.ndarray) -> np.ndarray:
        request = self.request(x.shape)
        request.infer({"input": x})
        return request.get_output_tensor(0).data.copy()


def make_peer(name: str, onnx_path: Path, threads: int) -> Peer:
    if name == "onnxruntime":
        return OnnxRuntime(onnx_path, threads)
    if name == "openvino-f32":
        return OpenVino(onnx_path, threads, "f32")
    if name == "openvino":
        return OpenVino(onnx_path, threads, None)
    sys.exit(f"unknown peer {name!r} (onnxruntime, openvino-f32, openvino)")


class Case:
    """One network at one input size: its weights, its ONNX graph, its peers and engines."""

    def __init__(self, args, preset: str, size: int, title: str, suffix: str, batches: dict[int, int]):
        self.title, self.size, self.suffix, self.batches = title, size, suffix, batches
        weights_path = args.workdir / f"{preset}.safetensors"
        onnx_path = args.workdir / f"{preset}.onnx"
        subprocess.run([str(args.engine), "write", preset, str(weights_path)], check=True)
        weights, config = load(weights_path)
        build_onnx(weights, config, self.size, onnx_path)
        names = ["onnxruntime"] + [p for p in (n.strip() for n in args.peers.split(",")) if p and p != "onnxruntime"]
        self.peers = {name: make_peer(name, onnx_path, args.threads) for name in names}
        self.engines: dict[str, Engine] = {}
        for isa in [i.strip() for i in args.isa.split(",") if i.strip()]:
            engine = Engine(args.engine, weights_path, isa)
            runs = engine.ask("isa")
            if runs != isa or isa in self.engines:
                print(f"note: DENSENET_CPU_ISA={isa} runs {runs} on this CPU: left out")
                engine.close()
                continue
            self.engines[isa] = engine
        if not self.engines:
            sys.exit(f"none of --isa {args.isa} runs on this CPU")
        self.first = next(iter(self.engines))
        if args.bf16:
            engine = Engine(args.engine, weights_path, self.first, "bf16")
            if engine.ask("precision") == "bf16":
                self.engines[f"{self.first}-bf16"] = engine
            else:
                print(f"note: bf16 is not native with {self.first} on this CPU: the engine's bf16 left out")
                engine.close()
        self.results: dict[str, dict[int, list[float]]] = {name: {} for name in self.peers}
        self.results.update({f"densenet {isa}": {} for isa in self.engines})

    def check(self, tolerance: float, bf16_tolerance: float) -> None:
        """The engines and the fp32 peers agree with ONNX Runtime on the same images (the engine's
        bf16 within `bf16_tolerance` of the largest logit)."""
        x = np.random.default_rng(0).standard_normal((2, 3, self.size, self.size), dtype=np.float32)
        theirs = self.peers["onnxruntime"].logits(x)
        for name, peer in list(self.peers.items())[1:]:
            diff = float(np.abs(peer.logits(x) - theirs).max())
            print(f"{self.title}: logits of {name} against onnxruntime: max |Δlogit| = {diff:.2e}")
            if name != "openvino" and not diff <= tolerance:
                sys.exit(f"{name} and ONNX Runtime disagree")
        with tempfile.TemporaryDirectory() as tmp:
            inp, out = Path(tmp) / "input.safetensors", Path(tmp) / "logits.safetensors"
            save_file({"input": x}, str(inp))
            for isa, engine in self.engines.items():
                engine.ask(f"logits {inp} {out}")
                with safe_open(str(out), framework="np") as f:
                    ours = f.get_tensor("logits")
                diff = float(np.abs(ours - theirs).max())
                if isa.endswith("-bf16"):
                    bound = bf16_tolerance * float(np.abs(theirs).max())
                    said = f"{bound:.2e}: {bf16_tolerance:g} of the largest |logit|"
                else:
                    bound, said = tolerance, f"{tolerance:g}"
                print(
                    f"{self.title}: logits agree ({isa}): max |Δlogit| = {diff:.2e} over {x.shape[0]} images "
                    f"(bound {said})"
                )
                if not diff <= bound:
                    sys.exit(f"the engine ({isa}) and ONNX Runtime disagree")

    def round(self, batch: int) -> None:
        """One timing of every runtime at `batch`, one after the other."""
        n = self.batches[batch]
        for name, peer in self.peers.items():
            self.results[name].setdefault(batch, []).append(peer.seconds(batch, n, self.size))
        for isa, engine in self.engines.items():
            seconds = float(engine.ask(f"time {batch} {n} {self.size}"))
            self.results[f"densenet {isa}"].setdefault(batch, []).append(seconds)

    def report(self, args) -> None:
        for engine in self.engines.values():
            engine.close()
        batches = list(self.batches)
        med = {k: {b: statistics.median(v) for b, v in r.items()} for k, r in self.results.items()}
        spread = {
            k: {b: (max(v) - min(v)) / statistics.median(v) for b, v in r.items()} for k, r in self.results.items()
        }
        print(f"\n{self.title}, {os.cpu_count()} CPUs, medians of {args.rounds} alternating rounds")
        print(
            f"{args.threads} threads each; "
            + "; ".join(f"{n}: {p.version}" for n, p in self.peers.items())
            + "\n"
        )
        heads = " | ".join(f"batch {b}, ms" if b == 1 else f"batch {b}, img/s" for b in batches)
        print(f"| runtime | {heads} | spread (max−min)/median |")
        print("|---|" + "---|" * len(batches) + "---|")
        for name, m in med.items():
            cells = " | ".join(f"{1e3 * m[b]:.1f}" if b == 1 else f"{b / m[b]:.1f}" for b in batches)
            s = ", ".join(f"{100 * spread[name][b]:.0f}%" for b in batches)
            print(f"| {name} | {cells} | {s} |")

        fp32_peers = [n for n in self.peers if n != "openvino"]
        med["best fp32 peer"] = {b: min(med[n][b] for n in fp32_peers) for b in batches}

        def line(name: str, over: str, under: str) -> str:
            ratios = " ".join(f"b{b}={med[under][b] / med[over][b]:.2f}" for b in batches)
            return f"{name} {ratios}"

        first = self.first
        fp32_engines = [e for e in self.engines if not e.endswith("-bf16")]
        for isa in fp32_engines:
            print(line(f"ratio_vs_onnxruntime{self.suffix} isa={isa}", f"densenet {isa}", "onnxruntime"))
            print(line(f"ratio_vs_best_fp32_peer{self.suffix} isa={isa}", f"densenet {isa}", "best fp32 peer"))
            if "openvino" in self.peers:
                print(line(f"ratio_vs_openvino_default{self.suffix} isa={isa}", f"densenet {isa}", "openvino"))
        bf16 = f"{first}-bf16"
        if bf16 in self.engines:
            if "openvino" in self.peers:
                print(line(
                    f"ratio_vs_openvino_default{self.suffix} isa={first} precision=bf16", f"densenet {bf16}", "openvino"
                ))
            print(line(f"bf16_vs_f32{self.suffix} isa={first}", f"densenet {bf16}", f"densenet {first}"))
        for isa in fp32_engines[1:]:
            print(line(f"{isa}_vs_{first}{self.suffix}", f"densenet {isa}", f"densenet {first}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", type=Path, default=ROOT / "target/release/examples/engine_bench")
    ap.add_argument("--workdir", type=Path, default=ROOT / "target/bench-compare")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per batch size")
    ap.add_argument("--threads", type=int, default=2, help="threads of each peer")
    ap.add_argument(
        "--peers",
        default="onnxruntime,openvino-f32,openvino",
        help="peers, comma-separated: onnxruntime (always run), openvino-f32, openvino (its default precision)",
    )
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max |Δlogit| allowed")
    ap.add_argument(
        "--isa",
        default="avx512,avx2",
        help="instruction sets to run the engine with, comma-separated (avx512, avx2, portable); "
        "one the CPU lacks is left out",
    )
    ap.add_argument(
        "--cases",
        default="cifar,224",
        help="networks, comma-separated: cifar (CIFAR DenseNet-121, 32×32, batch 1, 16, 64), "
        "224 (torchvision's ImageNet densenet121, 224×224, batch 1 and 16)",
    )
    ap.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the engine in bf16 on the first instruction set (where the CPU has AVX-512 BF16)",
    )
    ap.add_argument(
        "--bf16-tolerance",
        type=float,
        default=2e-2,
        help="max |Δlogit| of the engine's bf16, relative to the largest |logit|",
    )
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    known = {
        "cifar": ("densenet121", 32, "CIFAR DenseNet-121", "", {1: 40, 16: 6, 64: 3}),
        "224": ("densenet121-imagenet", 224, "torchvision densenet121 (ImageNet), 224×224", "_224", {1: 10, 16: 2}),
    }
    cases = []
    for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if name not in known:
            sys.exit(f"unknown case {name!r} (cifar, 224)")
        cases.append(Case(args, *known[name]))
    for case in cases:
        case.check(args.tolerance, args.bf16_tolerance)
    # Every case's rounds interleaved, so that drift of the machine reaches all of them alike.
    for _ in range(args.rounds):
        for case in cases:
            for batch in case.batches:
                case.round(batch)
    for case in cases:
        case.report(args)


if __name__ == "__main__":
    main()
