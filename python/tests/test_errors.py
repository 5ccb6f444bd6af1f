"""Every bad input raises its `densenet.Error` subclass (also the built-in exception a caller
would catch) with the engine's message, which names what is wrong; none is a panic."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import IMAGES, fixture, io

import densenet

X = io("seed_small_io.safetensors")["input"]


def raises(kind: type[BaseException], *parts: str):
    """pytest.raises for `kind` whose message holds every one of `parts`."""

    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(kind)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self.ctx.__exit__(*exc)
            message = str(self.info.value)
            assert isinstance(self.info.value, densenet.Error), repr(self.info.value)
            for part in parts:
                assert part in message, message
            return suppressed

    return Check()


@pytest.mark.parametrize(
    ("batch", "parts"),
    [
        (X[0, 0], ["rank 2", "[32, 32]"]),
        (X[:, :2], ["3 (RGB) channels", "got 2"]),
        (X[:0], ["the batch is empty"]),
        (X.astype(np.int64), ["expected float32", "int64"]),
        (X > 0, ["expected float32", "bool"]),
        (X.astype(np.complex64), ["expected float32", "complex64"]),
        ("an image", ["expected float32", "<U8"]),
    ],
)
def test_a_batch_of_the_wrong_shape_or_dtype(small: densenet.Model, batch, parts: list[str]) -> None:  # noqa: ANN001
    with raises(densenet.InputError, "input tensor", *parts):
        small.predict(batch)
    assert issubclass(densenet.InputError, ValueError)


@pytest.mark.parametrize(("value", "part"), [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (1e30, "beyond")])
def test_values_no_normalised_image_has(small: densenet.Model, value: float, part: str) -> None:
    x = X.copy()
    x[2, 1, 5, 7] = value
    with raises(densenet.InputError, "image 2 of the batch", part):
        small.predict(x)


def test_an_image_too_small_for_the_network() -> None:
    model = densenet.Model.load(fixture("interop/tv_imagenet_small.pth"))
    with raises(densenet.InputError, "too small"):
        model.predict(np.zeros((1, 3, 8, 8), np.float32))


def test_an_object_numpy_cannot_read(small: densenet.Model) -> None:
    class Broken:
        def __array__(self, dtype=None, copy=None):  # noqa: ANN001, ANN204
            raise RuntimeError("no values here")

    with raises(densenet.InputError, "cannot be read as an array", "no values here"):
        small.predict(Broken())


def test_a_missing_weights_file(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.safetensors"
    with raises(densenet.NotFoundError, str(missing)) as info:
        densenet.Model.load(missing)
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize(
    ("name", "content", "part"),
    [
        ("garbage.safetensors", b"\x00\x01 not a checkpoint at all", "not a valid"),
        ("empty.pth", b"", "not a valid"),
        ("half.pth", "interop/bc_small.pth", "not a valid"),
        ("zip_bomb.pth", "hostile/zip_bomb.pth", ""),
        ("unknown_opcode.pth", "hostile/unknown_opcode.pth", ""),
        ("malicious.pth", "interop/malicious.pth", ""),
        ("legacy.pth", "interop/tv_imagenet_small_legacy.pth", "legacy"),
    ],
)
def test_a_corrupt_checkpoint(tmp_path: Path, name: str, content, part: str) -> None:  # noqa: ANN001
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif name.startswith("half"):
        whole = fixture(content).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    else:
        shutil.copy(fixture(content), path)
    with raises(densenet.WeightsError, str(path), part) as info:
        densenet.Model.load(path)
    assert isinstance(info.value, ValueError)


def test_a_checkpoint_of_another_network(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": np.zeros((4, 4), np.float32)}, str(path))
    with raises(densenet.WeightsError, str(path)):
        densenet.Model.load(path)


def test_bad_options(small: densenet.Model) -> None:
    with raises(densenet.ConfigError, "fp8"):
        densenet.Model.load(fixture("seed_small.safetensors"), precision="fp8")
    with raises(densenet.ConfigError, "f16", "CUDA"):
        densenet.Model.load(fixture("seed_small.safetensors"), precision="f16")
    with raises(densenet.ConfigError, "weights"):
        densenet.Model.load(None)  # type: ignore[arg-type]
    with raises(densenet.ConfigError, "output"):
        small.predict(X, output="scores")  # type: ignore[arg-type]
    for k in [0, -1, 2.5, True]:
        with raises(densenet.ConfigError, "top_k"):
            small.classify(IMAGES[0], top_k=k)  # type: ignore[arg-type]


def test_image_files_that_cannot_be_classified(small: densenet.Model, tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    with raises(densenet.NotFoundError, str(missing)):
        small.classify([IMAGES[0], missing, IMAGES[1]])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with raises(densenet.ImageError, str(broken)):
        small.classify([IMAGES[0], broken])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with raises(densenet.ImageError, str(text)):
        small.classify(text)
    with raises(densenet.ImageError, str(tmp_path), "directory"):
        small.classify(tmp_path)
    # The first failure in input order is the one raised.
    with raises(densenet.ImageError, str(broken)):
        small.classify([broken, missing])


def test_hub_references_that_give_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with raises(densenet.HubError, "owner/missing") as info:
        densenet.Model.load("hf:owner/missing")
    assert isinstance(info.value, OSError)
    with raises(densenet.HubError, "no-slash"):
        densenet.Model.load("hf:no-slash")
