"""Ray Data with the `densenet` package against the same pipeline with a torch predictor.

Run by `make bench-ray` (the venv tools/.ray-venv, with torch and Pillow added). Both runs are
examples/ray_batch.py's `classify_folder` on one local Ray cluster: the same files (the 20
example images copied --copies times), the same actors (one CPU, one thread each), batch size and
JSON Lines output; only the callable class differs. The torch one loads the same safetensors file
into tools/densenet_ref.py's module (`eval()`, `torch.inference_mode()`, one thread) and prepares
each image as torchvision's `ToTensor` and `Normalize` do (Pillow decodes it; the images have the
model's input size, so no resize). The runs alternate for --rounds rounds; it prints each run's
images/s, `ray_data_vs_torch images_per_s=X` (the median images/s over torch's) and how many
top-1 answers are identical.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
sys.path.insert(0, str(REPO / "tools"))

import densenet_ref  # noqa: E402
import ray_batch  # noqa: E402

WEIGHTS = REPO / "tests" / "fixtures" / "reference" / "digits_densenet.safetensors"


class TorchClassifier:
    """The torch predictor: the same answers' columns as ray_batch.Classifier."""

    def __init__(self, weights: str, top_k: int = 5) -> None:
        import torch
        from safetensors import safe_open
        from safetensors.torch import load_file

        torch.set_num_threads(1)
        with safe_open(weights, "np") as f:
            meta = f.metadata()
        c = json.loads(meta["densenet.config"])
        p = json.loads(meta["densenet.preprocessing"])
        self.labels = json.loads(meta["densenet.labels"])
        self.net = densenet_ref.CifarDenseNet(
            c["growth_rate"], c["block_config"], c["reduction"], c["num_classes"], c["init_features"], c["bn_size"]
        )
        self.net.load_state_dict(load_file(weights), strict=False)
        self.net.eval()
        self.size = tuple(p["input_size"])
        self.mean = np.array(p["mean"], np.float32).reshape(3, 1, 1)
        self.std = np.array(p["std"], np.float32).reshape(3, 1, 1)
        self.top_k = top_k

    def image(self, path: str) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as im:
            rgb = im.convert("RGB")
        assert rgb.size[::-1] == self.size, f"{path}: {rgb.size}, not the input size"
        x = np.asarray(rgb, np.float32).transpose(2, 0, 1) / 255.0  # ToTensor
        return (x - self.mean) / self.std  # Normalize

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        paths = [str(p) for p in batch["path"]]
        x = torch.from_numpy(np.stack([self.image(p) for p in paths]))
        with torch.inference_mode():
            probabilities = torch.softmax(self.net(x), dim=1)
        top = torch.topk(probabilities, min(self.top_k, probabilities.shape[1]), dim=1)
        index = top.indices.numpy()
        return {
            "file": np.array(paths),
            "index": index.astype(np.int64),
            "label": np.array([[self.labels[i] for i in row] for row in index]),
            "probability": top.values.numpy().astype(np.float64),
            "coarse": np.array([""] * len(paths)),
        }


def top1(out: Path) -> dict[str, int]:
    rows = [json.loads(line) for part in out.glob("*.json") for line in part.read_text().splitlines()]
    return {row["file"]: row["index"][0] for row in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=100, help="copies of the 20 example images")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    # The workers get these modules by value: they are not importable there.
    ray.cloudpickle.register_pickle_by_value(ray_batch)
    ray.cloudpickle.register_pickle_by_value(densenet_ref)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for copy in range(args.copies):
            for image in sorted((REPO / "examples" / "images").glob("*.png")):
                shutil.copy(image, folder / f"{copy:03d}_{image.name}")
        files = ray_batch.image_files(folder)
        ray.init(num_cpus=args.actors, include_dashboard=False, _node_ip_address="127.0.0.1")
        rates: dict[str, list[float]] = {"densenet": [], "torch": []}
        answers: dict[str, dict[str, int]] = {}
        for r in range(args.rounds):
            for name, classifier in [("densenet", ray_batch.Classifier), ("torch", TorchClassifier)]:
                out = Path(tmp) / f"{name}_{r}"
                start = time.perf_counter()
                ray_batch.classify_folder(files, out, WEIGHTS, args.actors, args.batch_size, classifier=classifier)
                rates[name].append(len(files) / (time.perf_counter() - start))
                answers[name] = top1(out)
                assert len(answers[name]) == len(files), f"{name}: {len(answers[name])} answers"
        ray.shutdown()
    same = sum(answers["densenet"][f] == answers["torch"][f] for f in answers["densenet"])
    for name, values in rates.items():
        print(f"{name}: {' '.join(f'{v:.0f}' for v in values)} images/s (median {statistics.median(values):.0f})")
    ratio = statistics.median(rates["densenet"]) / statistics.median(rates["torch"])
    print(f"ray_data_vs_torch images_per_s={ratio:.2f} ({len(files)} images, {args.actors} actors)")
    print(f"top1_identical {same}/{len(files)}")


if __name__ == "__main__":
    main()
