"""The package as installed: its attributes, documentation, type information, and weights from
the Hugging Face Hub's cache."""

from __future__ import annotations

import pydoc
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture, io

import densenet


def test_what_a_model_tells(digits: densenet.Model) -> None:
    assert len(digits.labels) == 10 and all(isinstance(label, str) for label in digits.labels)
    config = digits.config
    assert config["num_classes"] == len(digits.labels) == 10
    assert set(config) >= {"growth_rate", "block_config", "init_features", "bn_size", "reduction", "stem"}
    assert digits.preprocessing["input_size"] == [32, 32]
    assert digits.precision == "f32"
    assert digits.isa in {"avx512", "avx2", "neon", "portable"}
    assert digits.fallbacks == ()
    assert "densenet.Model" in repr(digits) and "f32" in repr(digits)
    assert isinstance(densenet.__version__, str) and densenet.__version__.count(".") == 2


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_other_precisions_say_what_runs(precision: str) -> None:
    with _maybe_warns() as caught:
        model = densenet.Model.load(fixture("reference/digits_densenet.safetensors"), precision=precision)
    # Where the CPU has the instructions it runs as asked; else a more exact precision, with a
    # warning that says why.
    assert (model.precision == precision and not model.fallbacks) or (
        model.fallbacks and any(f in str(w.message) for w in caught for f in model.fallbacks)
    )
    x = io("seed_small_io.safetensors")["input"]
    f32 = densenet.Model.load(fixture("reference/digits_densenet.safetensors")).predict(x)
    assert np.abs(model.predict(x) - f32).max() < 0.05 * np.abs(f32).max()


class _maybe_warns:
    """Records warnings without requiring one."""

    def __enter__(self):  # noqa: ANN204
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        return caught

    def __exit__(self, *exc):  # noqa: ANN002, ANN204
        return self._ctx.__exit__(*exc)


def test_help_shows_the_documentation() -> None:
    text = pydoc.render_doc(densenet.Model, renderer=pydoc.plaintext)
    for part in ["Loads a model from what", "releases the GIL", "Classifies image files", "InputError"]:
        assert part in text, part
    assert "ValueError" in pydoc.render_doc(densenet.InputError, renderer=pydoc.plaintext)


def test_the_package_is_typed() -> None:
    package = Path(densenet.__file__).parent
    assert (package / "py.typed").is_file()
    assert (package / "_densenet.pyi").is_file()


def test_weights_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A cache laid out as huggingface_hub lays it, holding a PyTorch file, read offline.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--owner--tiny"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / ".no_exist" / commit).mkdir(parents=True)
    (repo / ".no_exist" / commit / "config.json").write_text("")
    shutil.copy(fixture("interop/timm_cifar_small.pth"), repo / "snapshots" / commit / "pytorch_model.bin")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = densenet.Model.load("hf:owner/tiny")
    tensors = io("interop/timm_cifar_small_io.safetensors")
    assert np.abs(model.predict(tensors["input"]) - tensors["logits"]).max() <= 1e-4
