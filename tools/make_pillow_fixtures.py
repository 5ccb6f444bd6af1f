"""Writes tests/fixtures/pillow/: what torchvision 0.29.2 + Pillow 13.0.0 make of image files.

    tools/.venv/bin/python tools/make_pillow_fixtures.py [--foolbox-only-committed]

The Rust tests (tests/pillow.rs) check that the engine decodes and resizes to the same 8-bit
pixels, hence the same normalised tensors. Cases, all listed in `cases.json`:

- `decode`: JPEG files decoded as torchvision's `ImageFolder` loader does
  (`Image.open(path).convert("RGB")`): six the script writes with Pillow from a crop of a foolbox
  photo (4:2:0, 4:2:2, 4:4:4, progressive, grayscale, Adobe CMYK; odd sizes, so that the edge
  blocks and the chroma upsampling at the edges count) and the 20 ImageNet JPEGs of foolbox 3.3.4.
- `resize`: the 8-bit image after torchvision's `Resize` and `CenterCrop` on a PIL image (before
  `ToTensor`), for the 20 foolbox JPEGs (ImageNet: `Resize(256)`, `CenterCrop(224)`, bilinear)
  and for synthetic PNGs of assorted sizes (`pattern` below; the Rust test draws the same
  pixels), both interpolations, CIFAR stretch `Resize((32, 32))` and shorter side then centre
  crop, up- and downscaling, odd sizes, a crop offset where Python's round-half-to-even counts,
  and a crop larger than the resized image (torchvision pads it with black).
- `normalised.safetensors`: the whole transform (`ToTensor`, `Normalize`) for two cases, f32.
- `digits/`: end to end with the trained reference model (tests/fixtures/reference/): 20 test
  digits enlarged to 96×96 and saved as PNG and JPEG, and the probabilities that the PyTorch model
  gives after torchvision's pipeline (`Resize((32, 32))`, `ToTensor`, `Normalize`).

Expected pixels are stored as PNG where small; larger ones as a 64-bit FNV-1a hash of each row
of RGB bytes (the test reports which rows differ).

Six of the foolbox JPEGs are copied into `foolbox/` (MIT licence, see foolbox/LICENSE); the test
checks the other 14 too where this venv's foolbox is installed.
"""

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, features
from safetensors.torch import save_file
from torchvision import transforms
from torchvision.transforms import InterpolationMode

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "pillow"
# Found without importing foolbox (it needs eagerpy, which the fixtures do not).
FOOLBOX_PACKAGE = Path(importlib.util.find_spec("foolbox").origin).parent
FOOLBOX = FOOLBOX_PACKAGE / "data"
COMMITTED_FOOLBOX = [
    "imagenet_02_438.jpg",
    "imagenet_10_541.jpg",
    "imagenet_11_630.jpg",
    "imagenet_14_129.jpg",
    "imagenet_17_22.jpg",
    "imagenet_19_305.jpg",
]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# src/config.rs's CIFAR-100 statistics.
CIFAR100_MEAN = (0.50707516, 0.48654887, 0.44091784)
CIFAR100_STD = (0.26733429, 0.25643843, 0.27615047)
# At most this many pixels are stored as a PNG; larger results are stored as row hashes.
PNG_PIXELS = 64 * 64

MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def pattern(w: int, h: int) -> np.ndarray:
    """Synthetic RGB pixels with edges, gradients and fine texture: channel c of pixel (x, y) is
    ((x·(3 + c) + y·(5 − c)) XOR (x·y >> 4)) mod 256 (tests/pillow.rs draws the same)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.uint64)
    planes = [((x * (3 + c) + y * (5 - c)) ^ ((x * y) >> 4)) & 255 for c in range(3)]
    return np.stack(planes, axis=-1).astype(np.uint8)


def expected(name: str, image: Image.Image) -> dict:
    """The record of an expected RGB result: a PNG beside cases.json, or row hashes."""
    pixels = np.asarray(image.convert("RGB"))
    h, w, _ = pixels.shape
    record = {"width": w, "height": h}
    if w * h <= PNG_PIXELS:
        file = f"expected/{name}.png"
        Image.fromarray(pixels).save(OUT / file, optimize=True)
        record["png"] = file
    else:
        record["row_fnv1a64"] = [fnv1a64(row.tobytes()) for row in pixels]
    return record


def spatial(resize: dict, interpolation: str) -> transforms.Compose:
    mode = MODES[interpolation]
    if resize["kind"] == "stretch":
        steps = [transforms.Resize((resize["height"], resize["width"]), interpolation=mode)]
    else:
        steps = [
            transforms.Resize(resize["shorter"], interpolation=mode),
            transforms.CenterCrop((resize["height"], resize["width"])),
        ]
    return transforms.Compose(steps)


def imagenet() -> dict:
    return {"kind": "shorter_then_crop", "shorter": 256, "width": 224, "height": 224}


def stretch(w: int, h: int) -> dict:
    return {"kind": "stretch", "width": w, "height": h}


def crop(shorter: int, w: int, h: int) -> dict:
    return {"kind": "shorter_then_crop", "shorter": shorter, "width": w, "height": h}


def loader(path: Path) -> Image.Image:
    """torchvision's ImageFolder loader."""
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def made_jpegs() -> list[tuple[str, dict]]:
    """JPEGs in each layout, written by Pillow from an odd-sized crop of a photo."""
    photo = loader(FOOLBOX / "imagenet_14_129.jpg").crop((101, 77, 162, 124))  # 61×47
    cases = [
        ("q90_420.jpg", photo, {"quality": 90, "subsampling": 2}),
        ("q90_422.jpg", photo, {"quality": 90, "subsampling": 1}),
        ("q95_444.jpg", photo, {"quality": 95, "subsampling": 0}),
        ("q75_420_progressive.jpg", photo, {"quality": 75, "progressive": True}),
        ("q85_gray.jpg", photo.convert("L"), {"quality": 85}),
        ("q90_cmyk.jpg", photo.convert("CMYK"), {"quality": 90}),
        ("q80_420_restarts.jpg", photo, {"quality": 80, "restart_marker_blocks": 2}),
    ]
    out = []
    for name, image, options in cases:
        path = OUT / "jpeg" / name
        image.save(path, **options)
        out.append((f"jpeg/{name}", options))
    # Corrupt data libjpeg-turbo recovers from with a warning ("extraneous bytes before marker"),
    # which Pillow decodes.
    data = (OUT / "jpeg" / "q90_420.jpg").read_bytes()
    assert data.endswith(b"\xff\xd9")
    (OUT / "jpeg" / "q90_420_extraneous.jpg").write_bytes(data[:-2] + b"\x12\x34\xff\xd9")
    out.append(("jpeg/q90_420_extraneous.jpg", {"extraneous_bytes_before_eoi": 2}))
    return out


def check_cmyk_formula() -> None:
    """src/preprocess/jpeg.rs's CMYK to RGB equals Pillow's convert("RGB") for all C and K."""
    c, k = (a.astype(np.int64) for a in np.meshgrid(np.arange(256), np.arange(256)))
    cmyk = np.stack([c, c, c, k], axis=-1).astype(np.uint8)
    rgb = np.asarray(Image.fromarray(cmyk, "CMYK").convert("RGB")).astype(np.int64)
    not_k = 255 - k
    t = c * not_k + 128
    assert (rgb == (not_k - (((t >> 8) + t) >> 8))[..., None]).all()


REFERENCE = ROOT / "tests" / "fixtures" / "reference"
DIGITS = 20


def digits() -> None:
    """End to end with the trained reference model: test digits enlarged to 96×96 (Pillow's
    bicubic), saved as PNG and as JPEG, classified by the PyTorch model after torchvision's
    pipeline as the model's metadata describes it (stretch to its input size, its interpolation,
    mean and std)."""
    import sys

    from safetensors import safe_open
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "tools"))
    from densenet_ref import CifarDenseNet

    weights = REFERENCE / "digits_densenet.safetensors"
    with safe_open(weights, "pt") as f:
        metadata = f.metadata()
    prep = json.loads(metadata["densenet.preprocessing"])
    assert prep["resize"] == "stretch", prep
    model = CifarDenseNet(12, (6, 6, 6), 0.5, 10, 24, 4)
    model.load_state_dict(load_file(weights), strict=True)
    model.eval()
    h, w = prep["input_size"]
    pipeline = transforms.Compose(
        [
            transforms.Resize((h, w), interpolation=MODES[prep["interpolation"]]),
            transforms.ToTensor(),
            transforms.Normalize(prep["mean"], prep["std"]),
        ]
    )

    records = np.frombuffer((REFERENCE / "digits_test.bin").read_bytes(), np.uint8).reshape(-1, 2 + 3072)
    out = OUT / "digits"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    probs, logits = {"png": [], "jpeg": []}, {"png": [], "jpeg": []}
    labels = []
    for i, record in enumerate(records[:DIGITS]):
        label = int(record[1])
        labels.append(label)
        image = Image.fromarray(record[2:].reshape(3, 32, 32).transpose(1, 2, 0)).resize((96, 96), Image.BICUBIC)
        for kind, ext, options in [("png", "png", {}), ("jpeg", "jpg", {"quality": 90})]:
            path = out / f"{i:02}_{label}.{ext}"
            image.save(path, **options)
            with torch.no_grad():
                scores = model(pipeline(loader(path)).unsqueeze(0))[0]
            logits[kind].append(scores)
            probs[kind].append(torch.softmax(scores, dim=0))
    save_file(
        {
            "png_probs": torch.stack(probs["png"]).contiguous(),
            "jpeg_probs": torch.stack(probs["jpeg"]).contiguous(),
            "png_logits": torch.stack(logits["png"]).contiguous(),
            "jpeg_logits": torch.stack(logits["jpeg"]).contiguous(),
            "labels": torch.tensor(labels, dtype=torch.int64),
        },
        out / "expected.safetensors",
    )
    top1 = {k: [int(p.argmax()) for p in v] for k, v in probs.items()}
    print("digits top-1 correct:", {k: sum(a == b for a, b in zip(v, labels)) for k, v in top1.items()}, "of", DIGITS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    for sub in ["expected", "jpeg", "foolbox"]:
        shutil.rmtree(OUT / sub, ignore_errors=True)
        (OUT / sub).mkdir(parents=True)
    torch.set_num_threads(1)
    check_cmyk_formula()

    decode, resize_cases = [], []
    for file, options in made_jpegs():
        name = Path(file).stem
        decode.append({"file": file, "options": options, **expected(f"decode_{name}", loader(OUT / file))})

    shutil.copy(FOOLBOX_PACKAGE.parent / "foolbox-3.3.4.dist-info" / "LICENSE", OUT / "foolbox" / "LICENSE")
    for path in sorted(FOOLBOX.glob("imagenet_*.jpg")):
        committed = path.name in COMMITTED_FOOLBOX
        if committed:
            shutil.copy(path, OUT / "foolbox" / path.name)
        file = f"foolbox/{path.name}"
        image = loader(path)
        decode.append({"file": file, "committed": committed, **expected(f"decode_{path.stem}", image)})
        out = spatial(imagenet(), "bilinear")(image)
        resize_cases.append(
            {
                "file": file,
                "committed": committed,
                "resize": imagenet(),
                "interpolation": "bilinear",
                **expected(f"imagenet_{path.stem}", out),
            }
        )

    synthetic = [
        # CIFAR stretch to 32×32: down ×3, down with odd factors, up, one axis only, one pixel.
        ((96, 96), stretch(32, 32)),
        ((97, 61), stretch(32, 32)),
        ((17, 29), stretch(32, 32)),
        ((32, 20), stretch(32, 32)),
        ((1, 1), stretch(32, 32)),
        ((640, 427), stretch(32, 32)),
        # ImageNet: down, down, up, odd offsets; 257×256 needs no resize and a crop offset of
        # round(16.5) = 16 (half to even); 302×300 resizes to 257×256, the same offset.
        ((512, 512), imagenet()),
        ((640, 427), imagenet()),
        ((300, 500), imagenet()),
        ((17, 29), imagenet()),
        ((257, 256), imagenet()),
        ((302, 300), imagenet()),
        # Small odd sizes, stored as PNGs: shorter side 40, crop 33×35; a crop beyond the resized
        # image (padded with black).
        ((61, 97), crop(40, 33, 35)),
        ((97, 61), crop(40, 35, 33)),
        ((50, 40), crop(28, 32, 32)),
        ((13, 7), crop(40, 35, 33)),
    ]
    for (w, h), resize in synthetic:
        image = Image.fromarray(pattern(w, h))
        for interpolation in MODES:
            name = f"pattern_{w}x{h}_{resize['kind']}_{resize['width']}x{resize['height']}_{interpolation}"
            if resize["kind"] != "stretch":
                name += f"_s{resize['shorter']}"
            resize_cases.append(
                {
                    "pattern": [w, h],
                    "resize": resize,
                    "interpolation": interpolation,
                    **expected(name, spatial(resize, interpolation)(image)),
                }
            )

    # The whole transform, normalised, for two cases (ImageNet and CIFAR-100 statistics).
    def normalised(w, h, resize, interpolation, mean, std):
        image = spatial(resize, interpolation)(Image.fromarray(pattern(w, h)))
        return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])(image)

    tensors = {
        "pattern_97x61_crop_35x33_bicubic_s40": normalised(97, 61, crop(40, 35, 33), "bicubic", IMAGENET_MEAN, IMAGENET_STD),
        "pattern_96x96_stretch_32x32_bilinear": normalised(96, 96, stretch(32, 32), "bilinear", CIFAR100_MEAN, CIFAR100_STD),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "normalised.safetensors")

    digits()

    manifest = {
        "made_by": "tools/make_pillow_fixtures.py",
        "versions": {
            "torch": torch.__version__,
            "torchvision": __import__("torchvision").__version__,
            "pillow": Image.__version__,
            "libjpeg_turbo": features.version("libjpeg_turbo"),
        },
        "decode": decode,
        "resize": resize_cases,
    }
    (OUT / "cases.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(decode)} decode cases, {len(resize_cases)} resize cases")


if __name__ == "__main__":
    main()
