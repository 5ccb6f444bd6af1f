"""Shared fixtures: the repository's test fixtures and example images, and the `classify` binary
(built by `make test-python`, named by DENSENET_CLASSIFY) whose answers the package must equal."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import densenet

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
IMAGES = sorted((REPO / "examples" / "images").glob("*.png"))


def fixture(name: str) -> Path:
    return FIXTURES / name


def io(name: str) -> dict[str, np.ndarray]:
    """A PyTorch fixture's tensors (input, logits), as tools/make_*_fixtures.py wrote them."""
    return load_file(str(fixture(name)))


@pytest.fixture(scope="session")
def classify_bin() -> Path:
    path = Path(os.environ.get("DENSENET_CLASSIFY", REPO / "target" / "debug" / "classify"))
    assert path.is_file(), f"{path}: the classify binary is missing (make test-python builds it)"
    return path


@pytest.fixture(scope="session")
def digits() -> densenet.Model:
    """The trained reference model (tools/train_reference.py): real activations, 10 classes."""
    return densenet.Model.load(fixture("reference/digits_densenet.safetensors"))


@pytest.fixture(scope="session")
def small() -> densenet.Model:
    """A small raw PyTorch state_dict (no metadata), CIFAR preprocessing."""
    return densenet.Model.load(fixture("seed_small.safetensors"))
