"""Writes the starting corpus of the fuzz targets into fuzz/seeds/ (committed; `make fuzz` copies
it into the git-ignored fuzz/corpus/).

    tools/.venv/bin/python tools/make_fuzz_seeds.py

image_decode/: one small 12×10 gradient in each supported format (PNG RGB, PNG 16-bit gray,
JPEG, progressive JPEG, BMP, GIF, WebP lossy and lossless, TIFF).
safetensors_load/: two tiny valid files (one F32 tensor with metadata; F16 and I64 tensors).
tests/fixtures/seed_small.safetensors, a whole model, is added by `make fuzz`.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

SEEDS = Path(__file__).resolve().parent.parent / "fuzz" / "seeds"


def main() -> None:
    images = SEEDS / "image_decode"
    images.mkdir(parents=True, exist_ok=True)
    x, y = np.meshgrid(np.arange(12), np.arange(10))
    rgb = np.stack([x * 20, y * 25, (x + y) * 10], axis=-1).astype(np.uint8)
    image = Image.fromarray(rgb)
    image.save(images / "rgb.png")
    Image.fromarray((x * 5000 + y).astype(np.uint16)).save(images / "gray16.png")
    image.save(images / "baseline.jpg", quality=80)
    image.save(images / "progressive.jpg", quality=80, progressive=True)
    image.save(images / "rgb.bmp")
    image.save(images / "rgb.gif")
    image.save(images / "lossy.webp", quality=80)
    image.save(images / "lossless.webp", lossless=True)
    image.save(images / "rgb.tiff")

    weights = SEEDS / "safetensors_load"
    weights.mkdir(parents=True, exist_ok=True)
    save_file({"a": np.arange(4, dtype=np.float32)}, weights / "one.safetensors", {"k": "v"})
    save_file(
        {"h": np.ones((2, 3), dtype=np.float16), "n": np.zeros((), dtype=np.int64)},
        weights / "two.safetensors",
    )


if __name__ == "__main__":
    main()
