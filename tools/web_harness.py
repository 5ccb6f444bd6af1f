#!/usr/bin/env python3
"""The browser part's test and benchmark: headless Chromium driven over WebDriver (plain HTTP).

    python3 tools/web_harness.py test  [--classify BIN] [--engine-bench BIN]
    python3 tools/web_harness.py bench [--smoke] [--rounds N] [--iters N] [--cases ...]

`make web-test` and `make bench-web` run these after `make web` has built the module into
web/www/pkg/; this script builds nothing of the crate. Python's standard library only: the ONNX
graphs of the benchmark are built by tools/bench_compare.py in the venv tools/.bench-venv.

Both start a static server on 127.0.0.1 (an ephemeral port) that serves web/www/ at /, the example
images at /images/ (and JPEG fixtures at /jpeg/), the run's model files at /models/ and
onnxruntime-web's dist/ at /ort/, with the COOP/COEP headers that make the page cross-origin
isolated; then `chromedriver` on another ephemeral port, and one headless Chromium session with a
fresh profile. Nothing reaches outside the machine;
chromedriver and Chromium are killed when the run ends, whatever happens.

`test` loads web/www/index.html and drives it through its test hook (`window.densenetPage`), which
takes the code path of a user's dropped files: a model file (`engine_bench write bc100`: the
DenseNet-BC-100 (k=12) CIFAR-100 network with the crate's deterministic weights, 3.4 MB), then every
PNG of examples/images/, each classified in the page's Worker with top-5 and the class activation
map. Each is compared with the native `classify --json --top-k 6 --explain DIR` on the same file:
the same top-5 classes in order (two classes whose native probabilities differ by under 1e-6 may
swap), probabilities within 1e-5, CAM pictures of the same size within 2 per channel. The JPEGs of
tests/fixtures/pillow/ are classified both ways too, and their difference (the `image` crate's
decoder in the page, libjpeg-turbo as Pillow natively) is reported, not checked. It checks too that
a PyTorch checkpoint loads and classifies like its native run, that a frame of Chromium's fake
camera is classified through the page's buttons, that a file which is no model and an image that
is no image each show an error in the page, and that the page keeps drawing frames while the Worker
classifies. It prints the time from the model's fetch to the first answer (the goal: under a
second) and exits non-zero on any failure.

`bench` loads web/www/bench.html and times the engine's wasm (`Classifier.logits`) beside
onnxruntime-web (its wasm backend, SIMD, one thread) on the same weights: CIFAR DenseNet-121
(`engine_bench write densenet121`, 32×32) and torchvision's densenet121 (`engine_bench write
densenet121-imagenet`, 224×224), batch 1 and 16, on the page's thread. The engine runs the module
densenet.js picks (relaxed SIMD where the browser has it and web/www/pkg-relaxed/ is built), or the
one --simd names; one module per page session. All first compute logits for one seeded input batch
and must agree within --tolerance of the largest logit. Then rounds alternate the runtimes over
every case; a round gives the median of its iterations, the report the median over rounds
(`performance.now()` in the page: no virtual time). It prints a table and
`ratio_vs_onnxruntime_web model=M batch=B X` lines (the engine's throughput over onnxruntime-web's;
with --simd, `ratio_vs_onnxruntime_web module=MODULE model=M batch=B X`). `--smoke` runs one small
case once, for CI.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.server
import json
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WWW = ROOT / "web" / "www"
IMAGES = ROOT / "examples" / "images"
ORT_DIST = ROOT / "web" / "node_modules" / "onnxruntime-web" / "dist"
BENCH_VENV_PYTHON = ROOT / "tools" / ".bench-venv" / "bin" / "python"
WORKDIR = ROOT / "target" / "web-harness"
# A small PyTorch checkpoint of the interop fixtures (a BC network), to prove the .pth path.
PTH_FIXTURE = ROOT / "tests" / "fixtures" / "interop" / "bc_small.pth"
# JPEGs of Pillow's test fixtures (subsamplings, progressive, grey, CMYK; 96×96 digits): the page
# decodes them with the `image` crate, the native build with libjpeg-turbo as Pillow does, so their
# difference is measured and reported, not held to the PNG tolerances.
JPEG_FIXTURES = ROOT / "tests" / "fixtures" / "pillow"

PROB_TOLERANCE = 1e-5
CAM_TOLERANCE = 2
# Two classes whose native probabilities differ by less than this are tied at float32 precision:
# the wasm engine may rank them either way without being wrong.
TIE = 1e-6


class Failure(Exception):
    """A check that failed: reported in one line, and the run exits with status 1."""


def log(*parts) -> None:
    print(*parts, flush=True)


# --- The static server ------------------------------------------------------------------------

MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".ts": "text/plain; charset=utf-8",
    ".map": "application/json",
}


class StaticServer:
    """Serves `routes` (URL prefix → directory, or exact path → file) on 127.0.0.1, ephemeral port,
    every answer cross-origin isolated (COOP/COEP), so that SharedArrayBuffer is available as on a
    well-configured host."""

    def __init__(self, routes: dict[str, Path]):
        self.routes = sorted(routes.items(), key=lambda kv: -len(kv[0]))
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (the standard library's name)
                server.answer(self, body=True)

            def do_HEAD(self):  # noqa: N802
                server.answer(self, body=False)

            def log_message(self, *args):  # quiet: failures are reported by the checks
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def resolve(self, url_path: str) -> Path | None:
        path = urllib.parse.unquote(url_path.split("?", 1)[0].split("#", 1)[0])
        for prefix, target in self.routes:
            if prefix.endswith("/"):
                if not path.startswith(prefix):
                    continue
                rest = path[len(prefix):] or "index.html"
                base = target.resolve()
                file = (base / rest).resolve()
                # Nothing outside the served folder, whatever `..` the request holds.
                if base != file and base not in file.parents:
                    return None
                return file / "index.html" if file.is_dir() else file
            if path == prefix:
                return target
        return None

    def answer(self, req, body: bool) -> None:
        file = self.resolve(req.path)
        if file is None or not file.is_file():
            data, status, mime = b"not found\n", 404, "text/plain; charset=utf-8"
        else:
            data, status = file.read_bytes(), 200
            mime = MIME.get(file.suffix.lower(), "application/octet-stream")
        req.send_response(status)
        req.send_header("Content-Type", mime)
        req.send_header("Content-Length", str(len(data)))
        req.send_header("Cross-Origin-Opener-Policy", "same-origin")
        req.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        req.send_header("Cross-Origin-Resource-Policy", "same-origin")
        # Each run serves what was just built: no stale module from the browser's cache.
        req.send_header("Cache-Control", "no-store")
        req.end_headers()
        if body:
            req.wfile.write(data)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


# --- WebDriver over plain HTTP ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium(explicit: str | None) -> str:
    # The real binary rather than Debian's /usr/bin/chromium shell wrapper, which adds flags.
    for candidate in [explicit, "/usr/lib/chromium/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")]:
        if candidate and Path(candidate).is_file():
            return candidate
    raise Failure("Chromium is not installed (Debian: apt-get install chromium chromium-driver)")


class Browser:
    """One headless Chromium session through chromedriver, W3C WebDriver over urllib."""

    def __init__(self, chromium: str, chromedriver: str, script_timeout_s: float, headed: bool = False):
        self.chromium, self.chromedriver = chromium, chromedriver
        self.script_timeout_s, self.headed = script_timeout_s, headed
        # More browser switches for an experiment, e.g. V8's: --js-flags=--no-wasm-inlining
        self.extra_args = os.environ.get("DENSENET_CHROMIUM_ARGS", "").split()
        self.driver: subprocess.Popen | None = None
        self.session: str | None = None
        self.profile = tempfile.mkdtemp(prefix="web-harness-profile-")
        self.driver_log = Path(self.profile + ".chromedriver.log")
        self.capabilities: dict = {}

    def request(self, method: str, path: str, body=None, timeout: float = 60):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            try:
                value = json.loads(e.read()).get("value", {})
                message = f"{value.get('error')}: {value.get('message', '').splitlines()[0]}"
            except (ValueError, AttributeError, IndexError):
                message = str(e)
            raise Failure(f"WebDriver {method} {path}: {message}") from None

    def __enter__(self):
        if not shutil.which(self.chromedriver) and not Path(self.chromedriver).is_file():
            raise Failure("chromedriver is not installed (Debian: apt-get install chromium-driver)")
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        # Its own process group, so that the browser it starts goes down with it.
        self.driver = subprocess.Popen(
            [self.chromedriver, f"--port={port}", f"--log-path={self.driver_log}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.request("GET", "/status", timeout=2).get("ready"):
                    break
            except (Failure, OSError):
                pass
            if self.driver.poll() is not None or time.monotonic() > deadline:
                raise Failure(f"chromedriver did not start (see {self.driver_log})")
            time.sleep(0.1)
        args = [f"--user-data-dir={self.profile}", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps",
                # A timed page must not be slowed as a hidden one would be.
                "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                # The camera, for a page that asks: a fake one, never a real device.
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                "--window-size=1280,900"] + self.extra_args
        if not self.headed:
            args.insert(0, "--headless=new")
        caps = {"browserName": "chrome", "pageLoadStrategy": "normal",
                "goog:chromeOptions": {"binary": self.chromium, "args": args}}
        value = self.request("POST", "/session", {"capabilities": {"alwaysMatch": caps}}, timeout=60)
        self.session = value["sessionId"]
        self.capabilities = value.get("capabilities", {})
        self.request("POST", f"/session/{self.session}/timeouts",
                     {"pageLoad": 60_000, "script": int(self.script_timeout_s * 1000)})
        return self

    def __exit__(self, *exc):
        try:
            if self.session:
                self.request("DELETE", f"/session/{self.session}", timeout=10)
        except (Failure, OSError):
            pass
        finally:
            if self.driver:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.driver.pid, signal.SIGTERM)
                try:
                    self.driver.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.driver.pid, signal.SIGKILL)
                    self.driver.wait()
            # Chromium started in chromedriver's group; anything left of it goes now.
            self.kill_leftover_browsers()
            shutil.rmtree(self.profile, ignore_errors=True)
            if exc[0] is None:
                self.driver_log.unlink(missing_ok=True)

    def kill_leftover_browsers(self) -> None:
        """Chromium processes of this run's own profile (its command line names it), if any
        outlived chromedriver."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if f"--user-data-dir={self.profile}".encode() in cmdline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(proc.name), signal.SIGKILL)

    @property
    def version(self) -> str:
        return self.capabilities.get("browserVersion", "?")

    def screenshot(self, path: Path) -> None:
        png = self.request("GET", f"/session/{self.session}/screenshot", timeout=60)
        path.write_bytes(base64.b64decode(png))

    def pick_files(self, css: str, paths: list[Path]) -> None:
        """Chooses `paths` in the file input `css`, as a user's file dialog would."""
        element = self.request("POST", f"/session/{self.session}/element", {"using": "css selector", "value": css})
        eid = next(iter(element.values()))
        self.request("POST", f"/session/{self.session}/element/{eid}/value",
                     {"text": "\n".join(str(p) for p in paths)})

    def open(self, url: str) -> None:
        self.request("POST", f"/session/{self.session}/url", {"url": url}, timeout=90)

    def open_page(self, url: str, hook: str, script: str) -> None:
        """Opens `url` and waits for its script (`script`) to publish `window.<hook>`."""
        self.open(url)
        self.run(f"""
            for (let i = 0; i < 200 && !window.{hook}; i++) await new Promise(r => setTimeout(r, 25));
            if (!window.{hook}) throw new Error('{script} did not start (window.{hook} is missing)');
        """)

    def run(self, body: str, *args, timeout: float | None = None):
        """Runs `body`, the body of an async JavaScript function of `args`, in the page; returns its
        result, or raises Failure with the page's error."""
        script = (
            "const done = arguments[arguments.length - 1];"
            "const args = Array.prototype.slice.call(arguments, 0, -1);"
            f"(async (...args) => {{ {body} }})(...args).then("
            " (value) => done({ ok: true, value: value === undefined ? null : value }),"
            " (e) => done({ ok: false, error: String((e && (e.stack || e.message)) || e) }));"
        )
        limit = (timeout or self.script_timeout_s) + 30
        out = self.request("POST", f"/session/{self.session}/execute/async",
                           {"script": script, "args": list(args)}, timeout=limit)
        if not out or not out.get("ok"):
            raise Failure(f"in the page: {(out or {}).get('error')}")
        return out["value"]


# --- Native side ----------------------------------------------------------------------------------


def default_binary(name: str, example: bool = False) -> Path:
    sub = "examples/" if example else ""
    for profile in ["release", "debug"]:
        path = ROOT / "target" / profile / f"{sub}{name}"
        if path.is_file():
            return path
    return ROOT / "target" / "release" / f"{sub}{name}"


def need_file(path: Path, how: str) -> Path:
    if not path.is_file():
        raise Failure(f"{path} is missing: {how}")
    return path


def write_model(engine_bench: Path, preset: str, out: Path) -> Path:
    """`engine_bench write PRESET`, kept while the binary is older than the file."""
    if not out.is_file() or out.stat().st_mtime < engine_bench.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(engine_bench), "write", preset, str(out)], check=True)
    return out


def native_classify(classify: Path, weights: Path, images: list[Path], explain: Path, check: bool = True) -> dict:
    """The CLI's answers, by file name: top-6 (the sixth tells a tie at rank 5) and the CAM PNG.
    With check=False, files it cannot read are left out instead of failing the run."""
    cmd = [str(classify), "--quiet", "--weights", str(weights), "--json", "--top-k", "6",
           "--explain", str(explain), "--force", "--device", "cpu"] + [str(p) for p in images]
    out = subprocess.run(cmd, check=check, capture_output=True, text=True).stdout
    answers = {}
    for line in out.splitlines():
        row = json.loads(line)
        answers[Path(row["file"]).name] = row
    return answers


def read_png(path: Path) -> tuple[int, int, int, bytes]:
    """(width, height, channels, pixels) of an 8-bit, non-interlaced greyscale/RGB/RGBA PNG, as the
    CLI writes them."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise Failure(f"{path} is not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, chunk = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise Failure(f"{path}: a PNG this reader does not know (depth {depth}, colour {color})")
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return width, height, channels, bytes(out)


def cam_difference(native_png: Path, cam: dict, left_half: bool = False) -> int:
    """The largest per-channel difference between the CLI's CAM picture and the page's (RGBA); with
    left_half, only of its left half: the image as the network saw it."""
    width, height, channels, pixels = read_png(native_png)
    if (cam["width"], cam["height"]) != (width, height):
        raise Failure(f"CAM picture is {cam['width']}×{cam['height']} in the page, "
                      f"{width}×{height} natively ({native_png.name})")
    rgba = base64.b64decode(cam["rgba"])
    if len(rgba) != width * height * 4:
        raise Failure(f"CAM picture has {len(rgba)} bytes for {width}×{height} RGBA")
    worst = 0
    for i in range(width * height):
        if left_half and i % width >= width // 2:
            continue
        for c in range(min(channels, 3)):
            worst = max(worst, abs(rgba[4 * i + c] - pixels[channels * i + c]))
    return worst


def compare_top(name: str, page_top: list[dict], native_top: list[dict], k: int) -> float:
    """Checks the page's top-k against the CLI's (same classes in order, probabilities within
    PROB_TOLERANCE; classes tied within TIE may swap); returns the largest probability difference."""
    if len(page_top) != k:
        raise Failure(f"{name}: the page gave {len(page_top)} classes, not {k}")
    native = {c["index"]: c for c in native_top}
    worst = 0.0
    for rank, (got, want) in enumerate(zip(page_top, native_top), 1):
        twin = native.get(got["index"])
        if got["index"] != want["index"] and (twin is None or abs(twin["probability"] - want["probability"]) > TIE):
            raise Failure(f"{name}: rank {rank} is class {got['index']} ({got['label']}) in the page, "
                          f"{want['index']} ({want['label']}) natively")
        if got["label"] != twin["label"]:
            raise Failure(f"{name}: class {got['index']} is labelled {got['label']!r} in the page, "
                          f"{twin['label']!r} natively")
        diff = abs(got["probability"] - twin["probability"])
        if diff > PROB_TOLERANCE:
            raise Failure(f"{name}: class {got['index']} has probability {got['probability']:.7f} "
                          f"in the page, {twin['probability']:.7f} natively")
        worst = max(worst, diff)
    return worst


# --- test ---------------------------------------------------------------------------------------


def check_module_built() -> None:
    need_file(WWW / "index.html", "the page is part of the repository")
    pkg = WWW / "pkg"
    if not any(pkg.glob("*.js")):
        raise Failure(f"the WebAssembly module is not built ({pkg} is empty): run `make web`")


def cmd_test(args) -> None:
    check_module_built()
    classify = need_file(args.classify, "build it: cargo build --release --bin classify")
    engine_bench = need_file(args.engine_bench, "build it: cargo build --release --example engine_bench")
    WORKDIR.mkdir(parents=True, exist_ok=True)
    model = write_model(engine_bench, "bc100", WORKDIR / "bc100.safetensors")
    images = sorted(IMAGES.glob("*.png"))
    if not images:
        raise Failure(f"no PNG in {IMAGES}")
    with tempfile.TemporaryDirectory(prefix="web-harness-") as tmp:
        tmp = Path(tmp)
        # 100 random bytes, the same each run, so that the message checked is the same too.
        (tmp / "not-a-model.safetensors").write_bytes(random.Random(25).randbytes(100))
        (tmp / "not-an-image.png").write_bytes(b"these bytes are no picture, whatever the name says")
        shutil.copy(model, tmp / model.name)
        pth = tmp / PTH_FIXTURE.name
        if PTH_FIXTURE.is_file():
            shutil.copy(PTH_FIXTURE, pth)
        native = native_classify(classify, model, images, tmp / "cam")
        native_pth = native_classify(classify, pth, images[:3], tmp / "cam-pth") if pth.is_file() else {}

        jpegs = sorted(JPEG_FIXTURES.glob("jpeg/*.jpg")) + sorted(JPEG_FIXTURES.glob("digits/*.jpg"))
        native_jpeg = native_classify(classify, model, jpegs, tmp / "cam-jpeg", check=False) if jpegs else {}

        routes = {"/": WWW, "/images/": IMAGES, "/models/": tmp, "/jpeg/": JPEG_FIXTURES}
        with StaticServer(routes) as server, Browser(find_chromium(args.chromium), args.chromedriver,
                                                     args.script_timeout, args.headed) as browser:
            log(f"serving {server.origin}; chromium {browser.version}")
            browser.open_page(f"{server.origin}/index.html", "densenetPage", "app.js")
            results = []
            failures = []

            def check(label, fn):
                try:
                    value = fn()
                    results.append(f"ok    {label}" + (f": {value}" if value else ""))
                except Failure as e:
                    failures.append(f"FAIL  {label}: {e}")
                    results.append(failures[-1])
                log(results[-1])

            # A model and its first answer, timed from the model's fetch, as a user's open + drop.
            first = browser.run("""
                const [modelUrl, imageUrl] = args;
                const t0 = performance.now();
                const loaded = await densenetPage.loadModelUrl(modelUrl);
                const tLoaded = performance.now();
                const [answer] = await densenetPage.classifyUrls([imageUrl], { topK: 5, cam: true });
                const t1 = performance.now();
                return { loaded, answer, loadMs: tLoaded - t0, firstMs: t1 - t0, sinceNavigation: t1 };
            """, f"/models/{model.name}", f"/images/{images[0].name}")
            if not first["loaded"].get("ok"):
                raise Failure(f"the model did not load in the page: {first['loaded'].get('error')}")
            info = first["loaded"]["info"]
            log(f"model {model.name} ({model.stat().st_size / 1e6:.1f} MB): {info.get('architecture')}, "
                f"{info.get('classes')} classes, {info.get('inputWidth')}×{info.get('inputHeight')}, "
                f"isa {info.get('isa')}, simd {info.get('simd')}, precision {info.get('precision')}")
            load_line = (f"model load + first answer: {first['firstMs']:.0f} ms (load {first['loadMs']:.0f} ms, "
                         f"page navigation to first answer {first['sinceNavigation']:.0f} ms; goal < 1000 ms: "
                         f"{'met' if first['firstMs'] < 1000 else 'NOT met'})")
            log(load_line)

            # Every example image, with a frame counter running on the page's thread meanwhile.
            run = browser.run("""
                const [urls] = args;
                let frames = 0, last = performance.now(), longest = 0, running = true;
                const tick = (t) => { frames++; longest = Math.max(longest, t - last); last = t; if (running) requestAnimationFrame(tick); };
                requestAnimationFrame(tick);
                const t0 = performance.now();
                const answers = await densenetPage.classifyUrls(urls, { topK: 5, cam: true });
                const ms = performance.now() - t0;
                running = false;
                const encode = (rgba) => { let s = ''; for (let i = 0; i < rgba.length; i += 0x8000) s += String.fromCharCode.apply(null, rgba.subarray(i, i + 0x8000)); return btoa(s); };
                for (const a of answers) if (a.cam) a.cam = { width: a.cam.width, height: a.cam.height, rgba: encode(a.cam.rgba) };
                const cards = document.querySelectorAll('#results .result:not(.error)').length;
                return { answers, ms, frames, longest, cards };
            """, [f"/images/{p.name}" for p in images])
            answers = run["answers"]

            worst_prob, worst_cam = 0.0, 0

            def check_images():
                nonlocal worst_prob, worst_cam
                if len(answers) != len(images):
                    raise Failure(f"{len(answers)} answers for {len(images)} images")
                for path, answer in zip(images, answers):
                    if not answer.get("ok"):
                        raise Failure(f"{path.name}: {answer.get('error')}")
                    want = native[path.name]
                    worst_prob = max(worst_prob, compare_top(path.name, answer["top"], want["top_k"], 5))
                    if not answer.get("cam"):
                        raise Failure(f"{path.name}: no CAM picture with {{cam: true}}")
                    diff = cam_difference(tmp / "cam" / f"{path.stem}.cam.png", answer["cam"])
                    if diff > CAM_TOLERANCE:
                        raise Failure(f"{path.name}: CAM picture differs by {diff} (> {CAM_TOLERANCE})")
                    worst_cam = max(worst_cam, diff)
                return (f"{len(images)} images: top-5 as native, max |Δp| {worst_prob:.2e}, "
                        f"CAM max pixel difference {worst_cam} (≤ {CAM_TOLERANCE}); "
                        f"{run['ms'] / len(images):.1f} ms per image in the page")

            check("example images against native classify", check_images)

            def measure_jpeg():
                if not native_jpeg:
                    return "skipped: no JPEG fixtures"
                answers = browser.run("""
                    const answers = await densenetPage.classifyUrls(args[0], { topK: 5, cam: true });
                    const encode = (rgba) => { let s = ''; for (let i = 0; i < rgba.length; i += 0x8000) s += String.fromCharCode.apply(null, rgba.subarray(i, i + 0x8000)); return btoa(s); };
                    for (const a of answers) if (a.cam) a.cam = { width: a.cam.width, height: a.cam.height, rgba: encode(a.cam.rgba) };
                    return answers;
                """, [f"/jpeg/{p.relative_to(JPEG_FIXTURES)}" for p in jpegs])
                same_top1, worst_p, worst_px, notes = 0, 0.0, 0, []
                for path, answer in zip(jpegs, answers):
                    want = native_jpeg.get(path.name)
                    if not answer.get("ok") or want is None:
                        notes.append(f"{path.name}: " + (answer.get("error") or "unread natively"))
                        continue
                    native_p = {c["index"]: c["probability"] for c in want["top_k"]}
                    same_top1 += answer["top"][0]["index"] == want["top_k"][0]["index"]
                    worst_p = max([worst_p] + [abs(c["probability"] - native_p[c["index"]])
                                               for c in answer["top"] if c["index"] in native_p])
                    worst_px = max(worst_px, cam_difference(tmp / "cam-jpeg" / f"{path.stem}.cam.png",
                                                            answer["cam"], left_half=True))
                done = len(jpegs) - len(notes)
                if not done:
                    raise Failure(f"no JPEG classified in the page: {notes[0]}")
                if len(notes) > 3:
                    notes[3:] = [f"{len(notes) - 3} more"]
                return (f"{done}/{len(jpegs)} JPEGs (image crate in the page, libjpeg-turbo as Pillow natively): "
                        f"top-1 the same for {same_top1}, max |Δp| {worst_p:.2e}, network input max pixel "
                        f"difference {worst_px} (measured, not checked)" + "".join(f"; {n}" for n in notes))

            check("JPEG difference to native (Pillow's decoder)", measure_jpeg)

            def check_cards():
                # The results are drawn, one card per image (plus the first one's).
                if run["cards"] < len(images):
                    raise Failure(f"{run['cards']} result cards in the page for {len(images)} images")

            check("results shown in the page", check_cards)

            def check_responsive():
                # The Worker computes; the page's thread keeps drawing frames meanwhile.
                if run["frames"] < 3 or run["longest"] > 250:
                    raise Failure(f"{run['frames']} frames in {run['ms']:.0f} ms, longest gap "
                                  f"{run['longest']:.0f} ms: the page froze")
                return f"{run['frames']} frames during {run['ms']:.0f} ms, longest gap {run['longest']:.0f} ms"

            check("page responsive while classifying", check_responsive)

            def check_bad_image():
                out = browser.run("""
                    const [url] = args;
                    const [answer] = await densenetPage.classifyUrls([url], { topK: 5, cam: true });
                    const cards = document.querySelectorAll('#results .result.error');
                    return { answer, shown: [...cards].map((c) => c.textContent).join(' | ') };
                """, "/models/not-an-image.png")
                if out["answer"].get("ok"):
                    raise Failure("a file that is no image was classified")
                return expect_message("bad image", out["answer"].get("error"), out["shown"])

            check("bad image gives an error in the page", check_bad_image)

            def check_camera():
                # Chromium's fake camera (a test pattern) through the page's own buttons: a frame
                # goes to the engine as ImageData.
                out = browser.run("""
                    const wait = async (test, what) => {
                      for (let i = 0; i < 400; i++) { if (test()) return; await new Promise(r => setTimeout(r, 25)); }
                      throw new Error(`timed out waiting for ${what}`);
                    };
                    const before = document.querySelectorAll('#results .result').length;
                    document.getElementById('camera-start').click();
                    await wait(() => document.getElementById('video').videoWidth > 0 || document.getElementById('camera-error').textContent, 'the camera');
                    const error = document.getElementById('camera-error').textContent;
                    if (error) return { error };
                    const size = `${document.getElementById('video').videoWidth}×${document.getElementById('video').videoHeight}`;
                    document.getElementById('camera-capture').click();
                    await wait(() => document.querySelectorAll('#results .result').length > before &&
                                     !document.querySelector('#results .result').classList.contains('busy'), 'the answer');
                    document.getElementById('camera-stop').click();
                    const card = document.querySelector('#results .result');
                    return { error: card.querySelector('.message').textContent, classes: card.querySelectorAll('.top li').length,
                             cam: !!card.querySelector('canvas.cam'), size };
                """)
                if out["error"]:
                    raise Failure(out["error"])
                if out["classes"] != 5 or not out["cam"]:
                    raise Failure(f"the frame's card shows {out['classes']} classes, CAM {out['cam']}")
                return f"a {out['size']} frame of the fake camera (ImageData) classified, top-5 and CAM shown"

            check("camera capture", check_camera)

            def check_pth():
                if not native_pth:
                    return "skipped: no PyTorch fixture"
                out = browser.run("""
                    const [modelUrl, urls] = args;
                    const loaded = await densenetPage.loadModelUrl(modelUrl);
                    if (!loaded.ok) return { loaded };
                    return { loaded, answers: await densenetPage.classifyUrls(urls, { topK: 5 }) };
                """, f"/models/{pth.name}", [f"/images/{p.name}" for p in images[:3]])
                if not out["loaded"].get("ok"):
                    raise Failure(f"{pth.name} did not load: {out['loaded'].get('error')}")
                worst = 0.0
                for path, answer in zip(images[:3], out["answers"]):
                    if not answer.get("ok"):
                        raise Failure(f"{path.name}: {answer.get('error')}")
                    worst = max(worst, compare_top(path.name, answer["top"], native_pth[path.name]["top_k"], 5))
                return f"{pth.name}: 3 images as native, max |Δp| {worst:.2e}"

            check("PyTorch checkpoint", check_pth)

            def check_bad_model():
                out = browser.run("""
                    const [url] = args;
                    const loaded = await densenetPage.loadModelUrl(url);
                    return { loaded, shown: document.querySelector('#model-status').textContent };
                """, "/models/not-a-model.safetensors")
                if out["loaded"].get("ok"):
                    raise Failure("100 random bytes loaded as a model")
                return expect_message("bad model", out["loaded"].get("error"), out["shown"])

            check("bad model file gives an error in the page", check_bad_model)

            def check_file_inputs():
                # The page's own file inputs, as a user's file dialog fills them: the model, then
                # two images.
                browser.pick_files("#model-file", [tmp / model.name])
                browser.run("""
                    for (let i = 0; i < 400; i++) {
                      const status = document.getElementById('model-status');
                      if (status.className === 'ok' && status.textContent.startsWith(args[0])) return;
                      // (An error of the bad model before may still show: only this file's counts.)
                      if (status.className === 'error' && status.textContent.includes(args[0])) throw new Error(status.textContent);
                      await new Promise(r => setTimeout(r, 25));
                    }
                    throw new Error('the model chosen did not load');
                """, model.name)
                before = browser.run("return document.querySelectorAll('#results .result').length;")
                browser.pick_files("#image-files", images[:2])
                out = browser.run("""
                    const [before] = args;
                    for (let i = 0; i < 400; i++) {
                      const cards = [...document.querySelectorAll('#results .result')].slice(0, -before || undefined);
                      if (cards.length >= 2 && !cards.some(c => c.classList.contains('busy')))
                        return cards.map(c => ({ name: c.querySelector('.name').textContent, error: c.querySelector('.message').textContent,
                                                 top: c.querySelector('.top li .label')?.title }));
                      await new Promise(r => setTimeout(r, 25));
                    }
                    throw new Error('the images chosen were not classified');
                """, before)
                for card in out:
                    if card["error"]:
                        raise Failure(f"{card['name']}: {card['error']}")
                    want = native[card["name"]]["top_k"][0]["index"]
                    if card["top"] != f"class {want}":
                        raise Failure(f"{card['name']}: the card's first class is {card['top']}, natively class {want}")
                return "a model and 2 images chosen in the page's file inputs, top-1 as native"

            check("file inputs", check_file_inputs)
            if args.screenshot:
                browser.screenshot(args.screenshot)
                log(f"screenshot: {args.screenshot}")

    log("")
    log(f"web-test: {len(results) - len(failures)} passed, {len(failures)} failed; chromium {browser.version}")
    log(load_line)
    if worst_cam or worst_prob:
        log(f"max probability difference {worst_prob:.2e}; CAM max pixel difference {worst_cam}")
    if failures:
        for f in failures:
            log(f)
        raise SystemExit(1)


def expect_message(what: str, error: str | None, shown: str) -> str:
    """An error worth showing: a sentence, not 'undefined' or '[object Object]', and on the page."""
    error = (error or "").strip()
    if len(error) < 10 or error in ("undefined", "null") or "[object" in error:
        raise Failure(f"{what}: unclear error message {error!r}")
    if error not in shown:
        raise Failure(f"{what}: the error {error!r} is not shown in the page (it shows {shown!r})")
    return repr(error if len(error) < 140 else error[:137] + "...")


# --- bench --------------------------------------------------------------------------------------

CASES = {  # name → (engine_bench preset, input side)
    "cifar": ("densenet121", 32),
    "imagenet": ("densenet121-imagenet", 224),
}


def build_onnx(python: Path, weights: Path) -> Path:
    """The ONNX graph of `weights`, built by tools/bench_compare.py's `build_onnx`, cached beside it
    under the weights' hash."""
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    out = weights.with_name(f"{weights.stem}.{digest}.onnx")
    if out.is_file():
        return out
    for old in weights.parent.glob(f"{weights.stem}.*.onnx"):
        old.unlink()
    # The onnx package stamps its newest IR version (14 with the venv's onnx 1.23), which onnxruntime-web 1.31
    # refuses (it reads up to 13); the graph (opset 17) needs only IR 8, so it is stamped 10.
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "import onnx; from bench_compare import build_onnx, load;"
        "w, c = load(Path(sys.argv[2])); out = Path(sys.argv[4]);"
        "build_onnx(w, c, int(sys.argv[3]), out);"
        "m = onnx.load(str(out)); m.ir_version = min(m.ir_version, 10); onnx.save(m, str(out))"
    )
    size = 224 if "imagenet" in weights.stem else 32
    tmp = out.with_suffix(".tmp")
    subprocess.run([str(python), "-c", code, str(ROOT / "tools"), str(weights), str(size), str(tmp)], check=True)
    tmp.rename(out)
    return out


def ensure_ort() -> None:
    if (ORT_DIST / "ort.wasm.min.mjs").is_file():
        return
    npm = shutil.which("npm")
    if not npm:
        raise Failure("onnxruntime-web is not installed and npm is missing: install Node.js, then "
                      "`npm ci` in web/")
    log("installing onnxruntime-web (npm ci in web/)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=ROOT / "web", check=True)
    need_file(ORT_DIST / "ort.wasm.min.mjs", "npm ci in web/ did not install onnxruntime-web")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return "?"


def cmd_bench(args) -> None:
    check_module_built()
    need_file(WWW / "bench.html", "the benchmark page is part of the repository")
    engine_bench = need_file(args.engine_bench, "build it: cargo build --release --example engine_bench")
    python = need_file(args.python, "create it: make bench-web (or python3 -m venv tools/.bench-venv; "
                                    "tools/.bench-venv/bin/pip install onnx numpy safetensors)")
    ensure_ort()
    if args.smoke:
        args.cases, args.batches, args.rounds, args.iters, args.iters_large = ["cifar"], [1], 1, 1, 1
    models = {}
    for name in args.cases:
        preset, size = CASES[name]
        weights = write_model(engine_bench, preset, WORKDIR / f"{preset}.safetensors")
        models[name] = (weights, build_onnx(python, weights), size)

    routes = {"/": WWW, "/models/": WORKDIR, "/ort/": ORT_DIST}
    engines = {}  # runtime → the module it runs (relaxed-simd or simd128)
    with StaticServer(routes) as server, Browser(find_chromium(args.chromium), args.chromedriver,
                                                 args.script_timeout, args.headed) as browser:
        log(f"serving {server.origin}; chromium {browser.version}; CPU {cpu_model()}")
        browser.open_page(f"{server.origin}/bench.html", "bench", "bench.js")
        for name, (weights, onnx, size) in models.items():
            info = browser.run("return await bench.prepare(args[0]);", {
                "name": name, "engineUrl": f"/models/{weights.name}", "onnxUrl": f"/models/{onnx.name}",
                "size": size, "simd": args.simd})
            engines.update(info["engines"])
            log(f"{name}: {info['architecture']}, {size}×{size}, {info['classes']} classes; engine isa "
                f"{info['isa']}, modules {', '.join(info['engines'].values())}, precision {info['precision']}; "
                f"onnxruntime-web {info['ortVersion']} ({info['ortBackend']})")
            check = browser.run("return await bench.check(args[0], args[1]);", name, 2)
            rel = check["maxDiff"] / max(check["maxLogit"], 1e-30)
            log(f"{name}: logits of a seeded batch of 2: max |Δ| {check['maxDiff']:.2e}, {rel:.2e} of the largest "
                f"|logit| {check['maxLogit']:.3g} (tolerance {args.tolerance:g})")
            if not rel <= args.tolerance:
                raise Failure(f"{name}: the engine's and onnxruntime-web's logits differ by {rel:.2e} "
                              f"of the largest logit")

        # Every case and runtime once per round, the runtimes alternating, so that a slower or
        # busier stretch of the machine falls on both.
        cases = [(name, b) for name in models for b in args.batches]
        runtimes = [*engines, "ort"]
        rounds = {(name, b, rt): [] for name, b in cases for rt in runtimes}
        for r in range(args.rounds):
            for name, b in cases:
                order = runtimes if r % 2 == 0 else runtimes[::-1]
                iters = args.iters_large if models[name][2] >= 224 and b > 1 else args.iters
                for rt in order:
                    times = browser.run("return await bench.time(args[0], args[1], args[2], args[3], args[4]);",
                                        name, rt, b, iters, r == 0)
                    rounds[(name, b, rt)].append(statistics.median(times))
            log(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{n} b{b} " + " / ".join(f"{rt} {rounds[(n, b, rt)][-1]:.1f}" for rt in runtimes) + " ms"
                for n, b in cases))

    log("")
    log(f"browser benchmark: chromium {browser.version}, one thread, {args.rounds} round(s) of "
        f"{args.iters} iteration(s) ({args.iters_large} for 224×224 batches); CPU {cpu_model()}")
    log(f"{'model':<10}{'batch':>6}  {'runtime':<30}{'ms/batch':>10}{'images/s':>10}")
    ratios = []
    labels = {rt: f"densenet wasm ({simd})" for rt, simd in engines.items()}
    labels["ort"] = "onnxruntime-web (wasm, SIMD)"
    for name, b in cases:
        ms = {}
        for rt in runtimes:
            ms[rt] = statistics.median(rounds[(name, b, rt)])
            log(f"{name:<10}{b:>6}  {labels[rt]:<30}{ms[rt]:>10.2f}{b * 1000 / ms[rt]:>10.1f}")
        for rt, module in engines.items():
            # A module other than the one the page gets by default (--simd) is named.
            named = f" module={module}" if args.simd else ""
            ratios.append(f"ratio_vs_onnxruntime_web{named} model={name} batch={b} {ms['ort'] / ms[rt]:.2f}")
    log("")
    for line in ratios:
        log(line)


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--chromium", help="the browser binary (default: /usr/lib/chromium/chromium, else chromium on PATH)")
    common.add_argument("--chromedriver", default="chromedriver")
    common.add_argument("--engine-bench", type=Path, default=default_binary("engine_bench", example=True),
                        help="the engine_bench example, which writes the models (default: target/release, else target/debug)")
    common.add_argument("--headed", action="store_true", help="show the browser window (needs a display)")

    test = sub.add_parser("test", parents=[common], help="the page against the native classify")
    test.add_argument("--classify", type=Path, default=default_binary("classify"),
                      help="the native classify binary (default: target/release, else target/debug)")
    test.add_argument("--script-timeout", type=float, default=120, help="seconds per step in the page")
    test.add_argument("--screenshot", type=Path, help="save a PNG of the page at the end here")

    bench = sub.add_parser("bench", parents=[common], help="the engine's wasm beside onnxruntime-web")
    bench.add_argument("--smoke", action="store_true", help="one small case, one round, one iteration (CI)")
    bench.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    bench.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    bench.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    bench.add_argument("--iters", type=int, default=5, help="iterations per round and case (default 5)")
    bench.add_argument("--iters-large", type=int, default=2,
                       help="iterations per round for 224×224 batches over 1 (default 2: ~10 s each in wasm)")
    # One engine module per page session: with two modules' memories in one page, Chromium 156
    # once ran the first of them at half its speed for the rest of the session.
    bench.add_argument("--simd", choices=["relaxed-simd", "simd128"],
                       help="the engine's module (default: the one the page picks, relaxed SIMD where the browser has it)")
    bench.add_argument("--tolerance", type=float, default=1e-3,
                       help="largest logit difference, relative to the largest logit (default 1e-3)")
    bench.add_argument("--python", type=Path, default=BENCH_VENV_PYTHON,
                       help="a Python with onnx, numpy and safetensors (default: tools/.bench-venv)")
    bench.add_argument("--script-timeout", type=float, default=300, help="seconds per step in the page")
    args = parser.parse_args()
    # A CI timeout's SIGTERM unwinds like Ctrl-C, so that chromedriver and Chromium are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        {"test": cmd_test, "bench": cmd_bench}[args.command](args)
    except Failure as e:
        print(f"web_harness {args.command}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except subprocess.CalledProcessError as e:
        print(f"web_harness {args.command}: {' '.join(map(str, e.cmd))[:200]} failed "
              f"(status {e.returncode}){': ' + e.stderr.strip()[-400:] if e.stderr else ''}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
