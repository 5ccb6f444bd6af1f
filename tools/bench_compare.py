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
3. The fp32 peers in --peers run that graph: ONNX Runtime (ORT_ENABLE_ALL graph optimisations),
   OpenVINO with `INFERENCE_PRECISION_HINT=f32` (`openvino-f32`) and OpenVINO as installed
   (`openvino`: its CPU plugin runs bf16 where the CPU has AVX-512 BF16), each on --threads
   threads; OpenVINO compiles the graph once per batch size with that static shape. The engine
   runs as one long-running `engine_bench serve` process per instruction set in --isa, each
   started with DENSENET_CPU_ISA set to it, in f32; with --bf16 (the default) one more process
   runs the engine in bf16 on the first instruction set, where the CPU has AVX-512 BF16; with
   --int8 (the default) one more per instruction set in int8, where the engine answers that it
   runs int8 there (an engine without int8, or on a CPU without AVX2, is left out with a note).
4. The int8 peers run one int8 graph made from that one by ONNX Runtime's `quant_pre_process`
   (which folds the BatchNormalization after each convolution into it) and `quantize_static`:
   QDQ format, per-channel int8 weights, uint8 activations, MinMax ranges from 32 calibration
   images, 3×SIZE×SIZE, N(0, 1) from numpy's `default_rng(13)` (like every input here), 8 at a
   time. Convolutions, Gemm and pools are quantised; BatchNormalization and Concat are not,
   because OpenVINO 2026.4.1 crashes compiling the graph when they are. It is cached in --workdir
   under a key of the fp32 graph, the calibration, the settings and the ONNX Runtime version.
   `onnxruntime-int8` is ONNX Runtime (ORT_ENABLE_ALL) on it, `openvino-int8` OpenVINO at its
   default precision hint: its CPU plugin runs the quantised convolutions in int8 whatever the
   hint (all 120 of them with f32 and with the default, bf16 here), the hint only sets the
   layers left in floating point; the table's header says how many ran in int8.
5. Everything first computes logits for the same input batch; the engine in f32 and the fp32
   peers must agree with ONNX Runtime within --tolerance (the engine's bf16 and int8 within
   --bf16-tolerance and --int8-tolerance, relative to the largest logit; OpenVINO's default
   precision and the int8 peers are only reported, the latter also relative to the largest
   logit). Then all are timed in alternating rounds (every network, batch size and runtime in
   each round), each round giving the median time of its iterations, and the median over rounds
   is reported.

`--smoke` (`make bench-compare-smoke`, run by .ci/run) runs the same steps in seconds: the CIFAR
network only, ONNX Runtime as the only peer, batches 1 and 16 with 2 and 1 iterations, one round;
it fails where a step fails (a graph that does not build, logits that disagree, an engine that
stops), so that a change elsewhere cannot silently break the benchmark.

With `--baseline B` (another build's `engine_bench`, e.g. of the main branch before a change), each
f32 engine also runs from B, in the same alternating rounds, and `vs_baseline isa=ISA b1=…` gives
this build's throughput over B's: how a change moved the engine, within one run.

For each instruction set it prints `ratio_vs_onnxruntime isa=ISA b1=X b16=Y b64=Z` (the engine's
throughput divided by ONNX Runtime's), `ratio_vs_best_fp32_peer isa=…` (over the faster of ONNX
Runtime and OpenVINO f32 at each batch size) and `ratio_vs_openvino_default isa=…`; with several
instruction sets, also `ISA_vs_FIRST b1=… b16=… b64=…`, each one's throughput over the first one's.
The engine's bf16 gets `ratio_vs_openvino_default isa=ISA precision=bf16 …` and
`bf16_vs_f32 isa=ISA …` lines; its int8 `ratio_vs_best_int8_peer isa=ISA …` (over the faster of
the int8 peers at each batch size), `int8_vs_f32 isa=ISA …` and, with bf16, `int8_vs_bf16 isa=ISA
…`. On a CPU with AMX the engine's int8 also runs with DENSENET_AMX=0 (`densenet avx512-int8-noamx`,
`int8_vs_f32 isa=avx512 amx=off …`), as a CPU with AVX-512 VNNI and no tiles runs it. The 224×224 network's lines carry the suffix `_224` (`ratio_vs_onnxruntime_224 isa=ISA b1=X
b16=Y`).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
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
# The int8 peers' calibration inputs: N(0, 1) images like every batch here, the same for every peer.
CALIBRATION_SEED, CALIBRATION_IMAGES, CALIBRATION_BATCH = 13, 32, 8
# OpenVINO 2026.4.1 crashes (segmentation fault) compiling a graph whose BatchNormalization or Concat
# inputs are quantised, and both int8 peers run one graph: its products and pools are int8.
QUANTIZED_OPS = ["Conv", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten"]


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


def quantize_onnx(onnx_path: Path, size: int) -> Path:
    """The QDQ int8 graph of `onnx_path` (ONNX Runtime's `quantize_static`: per-channel int8
    weights, uint8 activations, MinMax ranges over the calibration inputs), cached beside it under a
    key of the fp32 graph, the calibration, the ONNX Runtime version and this function's text (so
    that a change of settings makes a new graph)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    spec = f"{ort.__version__} {CALIBRATION_SEED} {CALIBRATION_IMAGES} {QUANTIZED_OPS}"
    spec = (spec + inspect.getsource(quantize_onnx)).encode()
    key = hashlib.sha256(onnx_path.read_bytes() + spec).hexdigest()[:12]
    stem = onnx_path.name.removesuffix(".onnx")
    path = onnx_path.with_name(f"{stem}.int8-{key}.onnx")
    if path.exists():
        return path
    for old in onnx_path.parent.glob(f"{stem}.int8-*.onnx"):
        old.unlink()
    x = np.random.default_rng(CALIBRATION_SEED).standard_normal(
        (CALIBRATION_IMAGES, 3, size, size), dtype=np.float32
    )

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = [{"input": x[i : i + CALIBRATION_BATCH]} for i in range(0, len(x), CALIBRATION_BATCH)]
            self.set_range(0, len(self.batches))

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.rest = iter(self.batches[start_index:end_index])

        def get_next(self):
            return next(self.rest, None)

    with tempfile.TemporaryDirectory(dir=onnx_path.parent) as tmp:
        # The pre-processing folds each BatchNormalization that follows a convolution into it, as
        # ONNX Runtime does to the fp32 graph; sympy's symbolic shapes are not needed for these ops.
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            Calibration(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # One batch's ranges at a time: all of them at 224×224 would take gigabytes.
            extra_options={"CalibStridedMinMax": 1},
        )
        out.replace(path)
    return path


class Engine:
    """The `engine_bench serve` process: one command line in, one answer line out."""

    def __init__(self, binary: Path, weights: Path, isa: str, precision: str = "f32", amx: bool = True):
        env = dict(os.environ, DENSENET_CPU_ISA=isa)
        if not amx:
            env["DENSENET_AMX"] = "0"
        self.proc = subprocess.Popen(
            [str(binary), "serve", str(weights), precision],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def ask(self, line: str, required: bool = True) -> str:
        """The answer to `line`; "" from a process that has stopped, unless `required`."""
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        answer = self.proc.stdout.readline().strip()
        if not answer and required:
            sys.exit(f"engine_bench stopped answering after {line!r}")
        return answer

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
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
    def __init__(self, onnx_path: Path, threads: int, int8: bool = False):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.version = f"ONNX Runtime {ort.__version__} (ORT_ENABLE_ALL{', QDQ int8 graph' if int8 else ''})"

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": x})[0]


class OpenVino(Peer):
    """OpenVINO's CPU plugin; `precision` None keeps its default (bf16 on AVX-512 BF16 CPUs)."""

    def __init__(self, onnx_path: Path, threads: int, precision: str | None, int8: bool = False):
        import openvino as ov

        self.core = ov.Core()
        self.onnx_path = onnx_path
        self.config = {"INFERENCE_NUM_THREADS": threads}
        if precision:
            self.config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled: dict[tuple, object] = {}
        self.int8 = int8
        hint = precision or "default"
        graph = "QDQ int8 graph, " if int8 else ""
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
        capped = f", instruction sets capped at {cap}" if cap else ""
        self.version = f"OpenVINO {ov.get_version().split('-')[0]} ({graph}{hint} precision{capped})"

    def request(self, shape: tuple):
        if shape not in self.compiled:
            model = self.core.read_model(str(self.onnx_path))
            model.reshape({"input": list(shape)})
            compiled = self.core.compile_model(model, "CPU", self.config)
            if self.int8 and not self.compiled:
                self.version = f"{self.version[:-1]}: {int8_layers(compiled)})"
            self.compiled[shape] = compiled.create_infer_request()
        return self.compiled[shape]

    def logits(self, x: np.ndarray) -> np.ndarray:
        request = self.request(x.shape)
        request.infer({"input": x})
        return request.get_output_tensor(0).data.copy()


def int8_layers(compiled) -> str:
    """How many of the compiled model's convolutions OpenVINO runs in 8 bits, and the precision hint
    it chose (which only decides the layers left in floating point)."""
    convs = [
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    ]
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    eight = sum(p in ("u8", "i8") for p in convs)
    return f"{hint} here, {eight} of {len(convs)} convolutions in int8"


PEERS = "onnxruntime, openvino-f32, openvino, onnxruntime-int8, openvino-int8"


def cpu_has(flag: str) -> bool:
    """Whether /proc/cpuinfo lists `flag` (False where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False
# Held to --tolerance against ONNX Runtime; OpenVINO's default precision and the int8 peers are
# only reported.
FP32_PEERS = ("onnxruntime", "openvino-f32")


def make_peer(name: str, onnx_path: Path, int8_path: Path | None, threads: int) -> Peer:
    if name == "onnxruntime":
        return OnnxRuntime(onnx_path, threads)
    if name == "openvino-f32":
        return OpenVino(onnx_path, threads, "f32")
    if name == "openvino":
        return OpenVino(onnx_path, threads, None)
    if name == "onnxruntime-int8":
        return OnnxRuntime(int8_path, threads, int8=True)
    if name == "openvino-int8":
        # Its default precision hint: the QDQ parts run in int8 under any hint (checked: all 120
        # convolutions in u8 with f32 and with the default bf16), the hint only sets the rest.
        return OpenVino(int8_path, threads, None, int8=True)
    sys.exit(f"unknown peer {name!r} ({PEERS})")


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
        int8_path = quantize_onnx(onnx_path, size) if any(n.endswith("-int8") for n in names) else None
        self.peers = {name: make_peer(name, onnx_path, int8_path, args.threads) for name in names}
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
        self.fp32 = list(self.engines)
        if args.baseline:
            for isa in self.fp32:
                self.engines[f"{isa}-baseline"] = Engine(args.baseline, weights_path, isa)
        if args.bf16:
            engine = Engine(args.engine, weights_path, self.first, "bf16")
            if engine.ask("precision") == "bf16":
                self.engines[f"{self.first}-bf16"] = engine
            else:
                print(f"note: bf16 is not native with {self.first} on this CPU: the engine's bf16 left out")
                engine.close()
        if args.int8:
            # On each instruction set: int8 runs with AVX-512 VNNI (or AMX) on avx512 where the CPU
            # has it, with AVX2's instructions on avx2. An engine without int8 there, or one that
            # falls back to another precision (an older build, on a CPU without VNNI), stops or
            # answers something else.
            for isa in self.fp32:
                engine = Engine(args.engine, weights_path, isa, "int8")
                runs = engine.ask("precision", required=False)
                if runs == "int8":
                    self.engines[f"{isa}-int8"] = engine
                else:
                    said = f"it runs {runs}" if runs else "it did not start"
                    print(f"note: the engine's int8 with {isa} left out ({said})")
                    engine.close()
                    continue
                # Where the products run on AMX tiles: also with DENSENET_AMX=0 (AVX-512 VNNI), as
                # a CPU without AMX (Ice Lake, Zen 4) runs them.
                if isa == "avx512" and cpu_has("amx_int8"):
                    self.engines[f"{isa}-int8-noamx"] = Engine(args.engine, weights_path, isa, "int8", amx=False)
        self.results: dict[str, dict[int, list[float]]] = {name: {} for name in self.peers}
        self.results.update({f"densenet {isa}": {} for isa in self.engines})

    def check(self, tolerance: float, bf16_tolerance: float, int8_tolerance: float) -> None:
        """The engines and the fp32 peers agree with ONNX Runtime on the same images (the engine's
        bf16 and int8 within `bf16_tolerance` and `int8_tolerance` of the largest logit)."""
        x = np.random.default_rng(0).standard_normal((2, 3, self.size, self.size), dtype=np.float32)
        theirs = self.peers["onnxruntime"].logits(x)
        largest = float(np.abs(theirs).max())
        for name, peer in list(self.peers.items())[1:]:
            diff = float(np.abs(peer.logits(x) - theirs).max())
            if name.endswith("-int8"):
                relative = f" ({diff / largest:.2e} of the largest |logit|)"
            else:
                relative = ""
            print(f"{self.title}: logits of {name} against onnxruntime: max |Δlogit| = {diff:.2e}{relative}")
            if name in FP32_PEERS and not diff <= tolerance:
                sys.exit(f"{name} and ONNX Runtime disagree")
        with tempfile.TemporaryDirectory() as tmp:
            inp, out = Path(tmp) / "input.safetensors", Path(tmp) / "logits.safetensors"
            save_file({"input": x}, str(inp))
            for isa, engine in self.engines.items():
                engine.ask(f"logits {inp} {out}")
                with safe_open(str(out), framework="np") as f:
                    ours = f.get_tensor("logits")
                diff = float(np.abs(ours - theirs).max())
                if "-bf16" in isa or "-int8" in isa:
                    share = bf16_tolerance if "-bf16" in isa else int8_tolerance
                    bound = share * largest
                    said = f"{bound:.2e}: {share:g} of the largest |logit|"
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

        fp32_peers = [n for n in self.peers if n in FP32_PEERS]
        med["best fp32 peer"] = {b: min(med[n][b] for n in fp32_peers) for b in batches}
        int8_peers = [n for n in self.peers if n.endswith("-int8")]
        if int8_peers:
            med["best int8 peer"] = {b: min(med[n][b] for n in int8_peers) for b in batches}

        def line(name: str, over: str, under: str) -> str:
            ratios = " ".join(f"b{b}={med[under][b] / med[over][b]:.2f}" for b in batches)
            return f"{name} {ratios}"

        first = self.first
        fp32_engines = self.fp32
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
        for isa in fp32_engines:
            int8 = f"{isa}-int8"
            if int8 not in self.engines:
                continue
            if int8_peers:
                print(line(f"ratio_vs_best_int8_peer{self.suffix} isa={isa}", f"densenet {int8}", "best int8 peer"))
            print(line(f"int8_vs_f32{self.suffix} isa={isa}", f"densenet {int8}", f"densenet {isa}"))
            if f"{int8}-noamx" in self.engines:
                print(line(f"int8_vs_f32{self.suffix} isa={isa} amx=off", f"densenet {int8}-noamx", f"densenet {isa}"))
            if f"{isa}-bf16" in self.engines:
                print(line(f"int8_vs_bf16{self.suffix} isa={isa}", f"densenet {int8}", f"densenet {isa}-bf16"))
        for isa in fp32_engines[1:]:
            print(line(f"{isa}_vs_{first}{self.suffix}", f"densenet {isa}", f"densenet {first}"))
        for isa in fp32_engines:
            if f"{isa}-baseline" in self.engines:
                print(line(f"vs_baseline{self.suffix} isa={isa}", f"densenet {isa}", f"densenet {isa}-baseline"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", type=Path, default=ROOT / "target/release/examples/engine_bench")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="another build's engine_bench, run beside --engine in f32 on each instruction set (vs_baseline lines)",
    )
    ap.add_argument("--workdir", type=Path, default=ROOT / "target/bench-compare")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per batch size")
    ap.add_argument("--threads", type=int, default=2, help="threads of each peer")
    ap.add_argument(
        "--peers",
        default="onnxruntime,openvino-f32,openvino,onnxruntime-int8,openvino-int8",
        help="peers, comma-separated: onnxruntime (always run), openvino-f32, openvino (its default precision), "
        "onnxruntime-int8, openvino-int8 (both on the graph quantised by ONNX Runtime's quantize_static)",
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
    ap.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the engine in int8 on each instruction set (where the engine has int8 there)",
    )
    ap.add_argument(
        "--int8-tolerance",
        type=float,
        default=5e-2,
        help="max |Δlogit| of the engine's int8, relative to the largest |logit|",
    )
    ap.add_argument(
        "--peer-isa",
        metavar="ISA",
        help="cap OpenVINO's instruction sets (oneDNN's ONEDNN_MAX_CPU_ISA, which its CPU plugin "
        "honours), e.g. AVX2 beside --isa avx2 on a CPU with AVX-512; ONNX Runtime is not capped",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="every step in seconds (CI): the cifar case, ONNX Runtime only, batches 1 and 16, one round",
    )
    args = ap.parse_args()
    if args.peer_isa:
        # Read by OpenVINO's oneDNN when it first dispatches, so set before any peer is made.
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.peer_isa

    args.workdir.mkdir(parents=True, exist_ok=True)
    known = {
        "cifar": ("densenet121", 32, "CIFAR DenseNet-121", "", {1: 40, 16: 6, 64: 3}),
        "224": ("densenet121-imagenet", 224, "torchvision densenet121 (ImageNet), 224×224", "_224", {1: 10, 16: 2}),
    }
    if args.smoke:
        args.rounds, args.peers, args.cases = 1, "onnxruntime", "cifar"
        known["cifar"] = known["cifar"][:4] + ({1: 2, 16: 1},)
    cases = []
    for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if name not in known:
            sys.exit(f"unknown case {name!r} (cifar, 224)")
        cases.append(Case(args, *known[name]))
    for case in cases:
        case.check(args.tolerance, args.bf16_tolerance, args.int8_tolerance)
    # Every case's rounds interleaved, so that drift of the machine reaches all of them alike.
    for _ in range(args.rounds):
        for case in cases:
            for batch in case.batches:
                case.round(batch)
    for case in cases:
        case.report(args)


if __name__ == "__main__":
    main()
