"""DenseNet image classifiers, computed by the ``densenet`` Rust engine.

>>> import densenet
>>> model = densenet.Model.load("weights/model.safetensors")      # doctest: +SKIP
>>> model.classify(["cat.png"], top_k=3)[0]["top_k"][0]["label"]  # doctest: +SKIP
>>> logits = model.predict(batch)  # float32 [N, 3, H, W]          # doctest: +SKIP

See :class:`Model`, and :class:`Error` for what goes wrong.
"""

from . import _errors
from ._densenet import __version__
from ._errors import *  # noqa: F403 - the exceptions, named in _errors.__all__
from ._model import Classification, Model, TopK

__all__ = ["Classification", "Model", "TopK", "__version__", *_errors.__all__]
