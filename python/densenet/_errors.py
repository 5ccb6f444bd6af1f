"""The exceptions of ``densenet``: every error the engine reports is a :class:`Error`, and each
kind is also the built-in exception a caller would catch for it (bad values are ``ValueError``,
missing files ``FileNotFoundError``...). Their messages are the engine's own: they name the file,
tensor or image concerned and what is wrong."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "Error",
    "FileError",
    "HubError",
    "ImageError",
    "InputError",
    "NotFoundError",
    "WeightsError",
]


class Error(Exception):
    """Any error of the engine."""


class InputError(Error, ValueError):
    """A batch the model cannot take: not an array of floats, the wrong shape, too small an
    image, NaN or infinite values, values no normalised image has."""


class ImageError(Error, ValueError):
    """An image file that cannot be decoded (corrupt, truncated, not an image, too large)."""


class WeightsError(Error, ValueError):
    """A weights file that is not a usable checkpoint: corrupt, of an unknown architecture, with a
    missing, misshapen or unexpected tensor."""


class ConfigError(Error, ValueError):
    """An option that names nothing valid: an unknown precision, a top-k below 1..."""


class FileError(Error, OSError):
    """A file that could not be read."""


class NotFoundError(FileError, FileNotFoundError):
    """A file that does not exist."""


class HubError(Error, OSError):
    """Weights that could not be had from the Hugging Face Hub (``hf:OWNER/REPO``)."""
