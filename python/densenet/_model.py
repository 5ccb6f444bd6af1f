"""The :class:`Model` of ``densenet``: argument checks and conversions in Python, the work in the
engine (``densenet._densenet``) with the GIL released."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from typing import Any, Literal, TypedDict, Union

import numpy as np

from . import _densenet
from ._errors import ConfigError, InputError

__all__ = ["Classification", "Model", "TopK"]

PathLike = Union[str, "os.PathLike[str]"]

# The dtypes a batch may come in: float32 as it is, the other floats converted to it (as the
# engine converts float64 tensors itself).
_FLOATS = (np.float16, np.float32, np.float64)


class TopK(TypedDict):
    """One of an image's most probable classes."""

    index: int
    label: str
    probability: float


class Classification(TypedDict):
    """One image's answer, with the keys of ``classify --json``'s lines."""

    file: str
    top_k: list[TopK]
    coarse: str | None


class Model:
    """A DenseNet classifier on the CPU, loaded once and shared freely.

    Load one with :meth:`Model.load`. Every method releases the GIL while the engine computes,
    so Python threads calling one model overlap; the model is immutable and safe to share
    between threads. Errors raise :class:`densenet.Error` subclasses with the engine's messages.
    """

    __slots__ = ("_engine", "_labels")

    def __init__(self, engine: _densenet.Engine) -> None:
        """Not for direct use: see :meth:`Model.load`."""
        self._engine = engine
        self._labels = tuple(engine.labels)

    @classmethod
    def load(cls, weights: PathLike, precision: str = "f32") -> Model:
        """Loads a model from what ``classify --weights`` takes.

        ``weights`` is a ``.safetensors`` file or a PyTorch checkpoint (``.pth``, ``.pt``,
        ``.bin``) of any family the engine reads (this crate's CIFAR DenseNets, torchvision's
        ImageNet DenseNets, DenseNet-BC, timm), or ``"hf:OWNER/REPO[@REVISION][:FILE]"`` for
        weights from the Hugging Face Hub (downloaded into its cache, as ``huggingface_hub``
        does; ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``, ``HF_ENDPOINT`` and ``HF_TOKEN`` apply).

        ``precision`` is ``"f32"`` (exact), ``"bf16"`` or ``"int8"``; a CPU without the
        instructions for the one asked computes in a more exact one, with a
        :class:`RuntimeWarning` that says so (see :attr:`Model.precision`). The environment
        variable ``DENSENET_CPU_ISA`` caps the instruction set, as for the CLI.

        Raises :class:`NotFoundError` for a missing file, :class:`WeightsError` for a file
        that is not a usable checkpoint, :class:`HubError` for weights the Hub cannot give and
        :class:`ConfigError` for an unknown precision.
        """
        if not isinstance(weights, (str, os.PathLike)):
            raise ConfigError(f"weights: expected a path or an hf: reference, got {type(weights).__name__}")
        if not isinstance(precision, str):
            raise ConfigError(f"precision: expected a string, got {type(precision).__name__}")
        model = cls(_densenet.Engine.load(os.fspath(weights), precision))
        for fallback in model.fallbacks:
            warnings.warn(fallback, RuntimeWarning, stacklevel=2)
        return model

    def predict(
        self, batch: Any, output: Literal["logits", "probabilities"] = "logits"
    ) -> np.ndarray:
        """Runs a normalised batch through the network.

        ``batch`` is a float32 array ``[N, 3, H, W]`` (or one image ``[3, H, W]``): a numpy
        array, or anything numpy reads without copying (the array protocol, the buffer protocol,
        DLPack), such as a CPU ``torch.Tensor``. float16 and float64 are converted to float32;
        other dtypes raise. Returns a new float32 array ``[N, classes]``: the logits, or with
        ``output="probabilities"`` their softmax.

        Raises :class:`InputError` for a batch of the wrong dtype or shape, an image smaller
        than the network takes, and NaN, infinite or out-of-range values (naming the image).
        """
        if output not in ("logits", "probabilities"):
            raise ConfigError(f"output: expected 'logits' or 'probabilities', got {output!r}")
        array = _as_batch(batch)
        return self._engine.predict(array, output == "probabilities")

    def classify(self, paths: PathLike | Iterable[PathLike], top_k: int = 5) -> list[Classification]:
        """Classifies image files as ``classify --json`` does, one answer per file, in order.

        Images are decoded (PNG, JPEG as Pillow decodes it, BMP, GIF, WebP, TIFF), resized and
        normalised as torchvision's transforms do on PIL images, with the model's preprocessing
        (:attr:`Model.preprocessing`), and run in batches of 64 while the next are decoded on
        every core. Each answer has the file (as given), its ``top_k`` most probable classes
        and, for CIFAR-100 labels, the coarse class of the first.

        Raises :class:`NotFoundError` for a missing file and :class:`ImageError` for one that
        cannot be decoded (the first such file in input order; nothing is returned then).
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        files = [os.fspath(p) for p in paths]
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ConfigError(f"top_k: expected a whole number of at least 1, got {top_k!r}")
        answers = self._engine.classify(files, top_k)
        return [
            {
                "file": file,
                "top_k": [{"index": i, "label": label, "probability": p} for i, label, p in ranked],
                "coarse": coarse,
            }
            for file, (ranked, coarse) in zip(files, answers)
        ]

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names, in the order of the network's outputs."""
        return self._labels

    @property
    def config(self) -> dict[str, Any]:
        """The architecture: ``growth_rate``, ``block_config``, ``init_features``, ``bn_size``,
        ``reduction``, ``num_classes``, ``stem`` and ``transition_relu``."""
        return json.loads(self._engine.config_json)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """How image files are prepared: ``input_size`` [H, W], ``mean`` and ``std`` (RGB, of
        pixels scaled to [0, 1]), ``resize`` and ``interpolation``. Apply the same to arrays
        given to :meth:`predict`."""
        return json.loads(self._engine.preprocessing_json)

    @property
    def precision(self) -> str:
        """What the network computes in: ``"f32"``, ``"bf16"`` or ``"int8"``."""
        return self._engine.precision

    @property
    def isa(self) -> str:
        """The instruction set the CPU's kernels use (``"avx512"``, ``"avx2"``...)."""
        isa = self._engine.isa
        assert isa is not None, "a CPU model has an instruction set"
        return isa

    @property
    def fallbacks(self) -> tuple[str, ...]:
        """What runs other than as asked (the precision, the instruction set), and why; empty
        when everything runs as asked."""
        return tuple(self._engine.fallbacks)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"<densenet.Model blocks={c['block_config']} k={c['growth_rate']} "
            f"classes={c['num_classes']} precision={self.precision} isa={self.isa}>"
        )


def _as_batch(batch: Any) -> np.ndarray:
    """``batch`` as a C-contiguous float32 array [N, 3, H, W], copied only where it must be."""
    try:
        if isinstance(batch, np.ndarray):
            array = batch
        elif not hasattr(batch, "__array__") and hasattr(batch, "__dlpack__"):
            array = np.from_dlpack(batch)
        else:
            array = np.asarray(batch)
    except Exception as e:  # whatever the object's own conversion raises
        raise InputError(f"input tensor: cannot be read as an array: {e}") from e
    if array.dtype.type not in _FLOATS:
        raise InputError(f"input tensor: expected float32 values, got {array.dtype}")
    if array.ndim == 3:
        array = array[np.newaxis]
    if array.ndim != 4:
        raise InputError(
            f"input tensor: expected [N, 3, H, W] or [3, H, W], got rank {array.ndim} with shape {list(array.shape)}"
        )
    return np.ascontiguousarray(array, dtype=np.float32)
