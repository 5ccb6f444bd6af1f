"""The Ray examples on a local Ray cluster that the tests start (a head and worker processes on
this machine): the batch job over 2,000 image files, one of its worker processes killed midway,
and the Serve deployment with two replicas; every answer equal to `classify --json`'s.
Run by `make test-ray` (not in CI: Ray is large and its cluster slow to start)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import ray
from ray import serve

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples"))

import ray_batch  # noqa: E402
import ray_serve  # noqa: E402

WEIGHTS = REPO / "tests" / "fixtures" / "reference" / "digits_densenet.safetensors"
IMAGES = sorted((REPO / "examples" / "images").glob("*.png"))
COPIES = 100


@pytest.fixture(scope="module")
def cluster():
    # Workers get the examples by value: they are not importable there.
    ray.cloudpickle.register_pickle_by_value(ray_batch)
    ray.cloudpickle.register_pickle_by_value(ray_serve)
    ray.init(num_cpus=3, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def expected() -> dict[str, dict]:
    """`classify --json`'s answer for each example image, by file name."""
    binary = os.environ.get("DENSENET_CLASSIFY", str(REPO / "target" / "release" / "classify"))
    out = subprocess.run(
        [binary, "--json", "-k", "5", "--weights", WEIGHTS, *IMAGES], capture_output=True, text=True, check=True
    )
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    return {Path(line["file"]).name: line for line in lines}


def assert_same(index: list[int], labels: list[str], probabilities: list[float], theirs: dict) -> None:
    assert index == [t["index"] for t in theirs["top_k"]]
    assert labels == [t["label"] for t in theirs["top_k"]]
    for p, t in zip(probabilities, theirs["top_k"]):
        assert abs(p - t["probability"]) <= 1e-6


def test_the_batch_job_survives_a_killed_worker(cluster, expected: dict, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for copy in range(COPIES):
        for image in IMAGES:
            shutil.copy(image, folder / f"{copy:03d}_{image.name}")
    files = ray_batch.image_files(folder)
    assert len(files) == COPIES * len(IMAGES) == 2000
    marker = tmp_path / "killed"

    class KilledOnce(ray_batch.Classifier):
        """Its process dies in the middle of its third batch, the first time any gets there."""

        calls = 0

        def __call__(self, batch):  # noqa: ANN001, ANN204
            self.calls += 1
            if self.calls == 3 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    out = tmp_path / "results"
    ray_batch.classify_folder(files, out, WEIGHTS, actors=2, batch_size=50, classifier=KilledOnce)
    assert marker.exists(), "no worker was killed"
    rows = [json.loads(line) for part in sorted(out.glob("*.json")) for line in part.read_text().splitlines()]
    assert len(rows) == len(files)
    assert sorted(row["file"] for row in rows) == [str(f) for f in files]
    for row in rows:
        theirs = expected[Path(row["file"]).name.split("_", 1)[1]]
        assert_same(row["index"], row["label"], row["probability"], theirs)


def test_serve_batches_requests_across_replicas(cluster, expected: dict) -> None:
    port = 18000 + os.getpid() % 1000
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(ray_serve.app(str(WEIGHTS), replicas=2, wait_ms=50), route_prefix="/classify")
    replicas = serve.status().applications["default"].deployments["DenseNetDeployment"].replica_states
    assert replicas.get("RUNNING") == 2, replicas

    def ask(image: Path) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/classify", data=json.dumps({"path": str(image)}).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, IMAGES * 3))
    for image, answer in zip(IMAGES * 3, answers):
        assert answer["file"] == str(image)
        top = answer["top_k"]
        assert_same([t["index"] for t in top], [t["label"] for t in top], [t["probability"] for t in top], expected[image.name])
    assert max(a["batch"] for a in answers) > 1, "no request was batched with another"
