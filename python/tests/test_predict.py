"""`Model.predict` gives PyTorch's logits on the committed fixtures (1e-4), from every checkpoint
family and format, and takes what numpy can read without copying."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fixture, io

import densenet

# (weights, its PyTorch fixture): torchvision's ImageNet DenseNet, DenseNet-BC with and without
# the stem's norm, timm's CIFAR DenseNet (each from .pth and .safetensors), torchvision's legacy
# and wrapped .pth layouts, and a raw state_dict with int64 counters.
CASES = [
    (f"interop/{name}_small.{ext}", f"interop/{name}_small_io.safetensors")
    for name in ["tv_imagenet", "bc_norm0", "bc", "timm_cifar"]
    for ext in ["pth", "safetensors"]
] + [
    (f"interop/tv_imagenet_small_{variant}.pth", "interop/tv_imagenet_small_io.safetensors")
    for variant in ["module", "nested_model", "nested_net", "nested_state_dict", "old_keys"]
] + [("seed_small.safetensors", "seed_small_io.safetensors")]


@pytest.mark.parametrize(("weights", "io_name"), CASES)
def test_logits_equal_pytorchs(weights: str, io_name: str) -> None:
    model = densenet.Model.load(fixture(weights))
    tensors = io(io_name)
    logits = model.predict(tensors["input"])
    assert logits.dtype == np.float32 and logits.shape == tensors["logits"].shape
    assert np.abs(logits - tensors["logits"]).max() <= 1e-4
    # The fixture's logits depend on the input: a model ignoring it could not pass.
    assert np.abs(tensors["logits"][0] - tensors["logits"][1]).max() > 1e-3


def cifar_records(path: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100 binary records (coarse label, fine label, 3072 pixels in RGB planes)."""
    raw = np.fromfile(fixture(path), dtype=np.uint8).reshape(-1, 2 + 3 * 32 * 32)
    return raw[:, 2:].reshape(-1, 3, 32, 32), raw[:, 1].astype(np.int64)


def test_the_trained_model_scores_the_held_out_digits_as_pytorch_does(digits: densenet.Model) -> None:
    pixels, labels = cifar_records("reference/digits_test.bin")
    p = digits.preprocessing
    assert p["input_size"] == [32, 32]
    mean = np.array(p["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(p["std"], dtype=np.float32).reshape(1, 3, 1, 1)
    batch = (pixels.astype(np.float32) / 255.0 - mean) / std
    logits = digits.predict(batch)
    expected = io("reference/digits_test_io.safetensors")
    assert np.abs(logits - expected["logits"]).max() <= 1e-4
    assert logits.max() - logits.min() > 10.0, "real activations: a wide range of logits"
    assert int((logits.argmax(1) == labels).sum()) == 358  # PyTorch's count (the fixture's metadata)


def test_probabilities_are_the_softmax_of_the_logits(small: densenet.Model) -> None:
    x = io("seed_small_io.safetensors")["input"]
    logits = small.predict(x).astype(np.float64)
    probabilities = small.predict(x, output="probabilities")
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    assert np.abs(probabilities - softmax).max() < 1e-6
    assert np.allclose(probabilities.sum(1), 1.0, atol=1e-6)


class ArrayOnly:
    """An object numpy reads through `__array__` only (as it reads a CPU torch.Tensor)."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def __array__(self, dtype=None, copy=None):  # noqa: ANN001, ANN204 - numpy's protocol
        return self.a


class DlpackOnly:
    """An object that offers DLPack only."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def __dlpack__(self, **kwargs):  # noqa: ANN003, ANN204 - the DLPack protocol
        return self.a.__dlpack__(**kwargs)

    def __dlpack_device__(self):  # noqa: ANN204
        return self.a.__dlpack_device__()


def test_what_numpy_reads_gives_the_same_logits(small: densenet.Model) -> None:
    x = io("seed_small_io.safetensors")["input"]
    expected = small.predict(x)
    for batch in [ArrayOnly(x), DlpackOnly(x), memoryview(x), x.tolist()]:
        assert np.array_equal(small.predict(batch), expected), type(batch).__name__
    # One image [3, H, W]; a strided view; float64 and float16 (converted, as the engine does).
    assert np.array_equal(small.predict(x[1]), expected[1:2])
    assert np.array_equal(small.predict(np.asfortranarray(x)), expected)
    assert np.array_equal(small.predict(x.astype(np.float64)), expected)
    half = x.astype(np.float16)
    assert np.array_equal(small.predict(half), small.predict(half.astype(np.float32)))


def test_the_input_is_not_modified_and_the_output_is_the_callers(small: densenet.Model) -> None:
    x = io("seed_small_io.safetensors")["input"]
    before = x.copy()
    out = small.predict(x)
    assert np.array_equal(x, before)
    assert out.flags.writeable and out.flags.c_contiguous
