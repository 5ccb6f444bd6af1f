"""`Model.classify` answers as `classify --json` does on the example images: the same classes in
the same order, probabilities within 1e-6, the same coarse class."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import IMAGES, fixture, io

import densenet

# A trained CIFAR-style model with metadata; torchvision's ImageNet family from a .pth (its
# preprocessing resizes the 32×32 images to 256 and crops 224); a raw state_dict with CIFAR-100
# labels inferred (10 classes: its default labels).
WEIGHTS = ["reference/digits_densenet.safetensors", "interop/tv_imagenet_small.pth", "seed_small.safetensors"]


def cli(classify_bin: Path, weights: Path, images: list[Path], k: int) -> list[dict]:
    out = subprocess.run(
        [classify_bin, "--json", "-k", str(k), "--weights", weights, *images],
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.mark.parametrize("weights", WEIGHTS)
def test_answers_equal_the_clis(classify_bin: Path, weights: str) -> None:
    assert len(IMAGES) == 20
    expected = cli(classify_bin, fixture(weights), IMAGES, 5)
    model = densenet.Model.load(fixture(weights))
    answers = model.classify([str(p) for p in IMAGES], top_k=5)
    assert len(answers) == len(expected) == len(IMAGES)
    for ours, theirs in zip(answers, expected):
        assert ours["file"] == theirs["file"]
        assert ours["coarse"] == theirs["coarse"]
        assert [t["index"] for t in ours["top_k"]] == [t["index"] for t in theirs["top_k"]]
        assert [t["label"] for t in ours["top_k"]] == [t["label"] for t in theirs["top_k"]]
        for a, b in zip(ours["top_k"], theirs["top_k"]):
            assert abs(a["probability"] - b["probability"]) <= 1e-6


def test_cifar100_labels_get_their_coarse_class(classify_bin: Path, tmp_path: Path) -> None:
    # The hub fixture: 100 classes, so CIFAR-100's labels and their coarse classes.
    weights = fixture("hub/pytorch_model.bin")
    expected = cli(classify_bin, weights, IMAGES[:4], 3)
    answers = densenet.Model.load(weights).classify(IMAGES[:4], top_k=3)
    assert [a["coarse"] for a in answers] == [e["coarse"] for e in expected]
    assert all(a["coarse"] for a in answers)


def test_one_path_and_path_objects(digits: densenet.Model) -> None:
    one = digits.classify(IMAGES[0], top_k=2)
    assert len(one) == 1 and len(one[0]["top_k"]) == 2 and one[0]["file"] == str(IMAGES[0])
    assert digits.classify([IMAGES[0]], top_k=2) == one
    # top_k beyond the classes gives them all.
    assert len(digits.classify(IMAGES[0], top_k=50)[0]["top_k"]) == 10
    assert digits.classify([], top_k=1) == []


@pytest.mark.parametrize(("kind", "ext"), [("png", "png"), ("jpeg", "jpg")])
def test_files_give_torchvisions_probabilities(digits: densenet.Model, kind: str, ext: str) -> None:
    # What torchvision's transforms on Pillow's pixels and PyTorch made of the same files
    # (tools/make_pillow_fixtures.py); JPEGs equal only when decoded as Pillow decodes them.
    expected = io("pillow/digits/expected.safetensors")
    files = sorted(fixture("pillow/digits").glob(f"*.{ext}"))
    assert len(files) == len(expected["labels"]) > 0
    answers = digits.classify(files, top_k=10)
    probabilities = np.zeros((len(files), 10), np.float32)
    for row, answer in zip(probabilities, answers):
        for t in answer["top_k"]:
            row[t["index"]] = t["probability"]
    assert np.abs(probabilities - expected[f"{kind}_probs"].reshape(len(files), 10)).max() <= 1e-4
    assert (probabilities.argmax(1) == expected["labels"]).mean() > 0.5
