"""Classify a folder of images on a Ray cluster with Ray Data and the `densenet` Python package.

    python examples/ray_batch.py --weights WEIGHTS --images FOLDER --out RESULTS [--actors 2]

The image files under FOLDER (searched recursively) become a dataset of paths; `map_batches`
hands batches of them to a pool of actors of `Classifier`, each loading the model once and
classifying its batches with `Model.classify` (the CLI's decoding and preprocessing); the answers
are written as JSON Lines into RESULTS, one line per image with the keys of `classify --json`
(`file`, `top_k`, `coarse`) flattened into columns (`file`, `index`, `label`, `probability`,
`coarse`). With `--address` it joins a running cluster (`ray start --head`), else it starts one
on this machine. Ray Data restarts an actor whose process dies and runs its batch again, so every
image gets exactly one line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import ray

import densenet

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class Classifier:
    """One actor's model, loaded once, and what it makes of a batch of paths."""

    def __init__(self, weights: str, top_k: int = 5) -> None:
        self.model = densenet.Model.load(weights)
        self.top_k = top_k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        answers = self.model.classify([str(p) for p in batch["path"]], top_k=self.top_k)
        return {
            "file": np.array([a["file"] for a in answers]),
            "index": np.array([[t["index"] for t in a["top_k"]] for a in answers], dtype=np.int64),
            "label": np.array([[t["label"] for t in a["top_k"]] for a in answers]),
            "probability": np.array([[t["probability"] for t in a["top_k"]] for a in answers]),
            "coarse": np.array([a["coarse"] or "" for a in answers]),
        }


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def classify_folder(
    files: list[Path],
    out: Path,
    weights: Path,
    actors: int = 2,
    batch_size: int = 64,
    top_k: int = 5,
    classifier: type = Classifier,
) -> None:
    """Writes one JSON line per file of `files` into the folder `out`, from `actors` actors of
    `classifier`, each on one CPU with one engine thread (RAYON_NUM_THREADS)."""
    dataset = ray.data.from_items([{"path": str(f)} for f in files])
    dataset.map_batches(
        classifier,
        fn_constructor_kwargs={"weights": str(weights), "top_k": top_k},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
        runtime_env={"env_vars": {"RAYON_NUM_THREADS": "1"}},
    ).write_json(str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, required=True, help="a file the package loads (not hf:)")
    ap.add_argument("--images", type=Path, required=True, help="folder of image files")
    ap.add_argument("--out", type=Path, required=True, help="folder for the JSON Lines files")
    ap.add_argument("--actors", type=int, default=2, help="actors, each with its own model and CPU")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--address", help="a running cluster's address (default: start one here)")
    args = ap.parse_args()
    files = image_files(args.images)
    if not files:
        raise SystemExit(f"{args.images}: no image files")
    ray.init(address=args.address)
    start = time.perf_counter()
    classify_folder(files, args.out, args.weights, args.actors, args.batch_size, args.top_k)
    seconds = time.perf_counter() - start
    print(f"classified {len(files)} images in {seconds:.1f} s ({len(files) / seconds:.0f} images/s) into {args.out}")


if __name__ == "__main__":
    main()
