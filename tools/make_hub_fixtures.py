"""Regenerate tests/fixtures/hub/: what the Hub stand-in of tests/hub.rs serves for the default model.

    tools/.venv/bin/python tools/make_hub_fixtures.py

The model is laid out as `edadaltocg/densenet121_cifar100` is: edadaltocg's `detectors` package
builds timm's DenseNet (growth rate 12, blocks 6-12-24-16) and replaces its stem, `conv0` by a 3x3
stride-1 convolution to 24 features, `norm0` and `pool0` by `nn.Identity` (so the state_dict has
neither); timm's transitions keep their BatchNorm+ReLU; 100 classes. The weights are random, rounded
to bfloat16 precision and stored as F32 like the real file's: the low half of every value is zero,
which git's compression takes away (4.5 MB file, about 2 MB in the repository). Deterministic and
idempotent.

Outputs (tests/fixtures/hub/):
    pytorch_model.bin        the state_dict, torch.save zip format, F32 (bfloat16-rounded values)
    config.json              timm's config.json for it (save_config_for_hf), with the
                             pretrained_cfg detectors declares for densenet121_cifar100
    io.safetensors           `input`: two example images normalised with that config's mean and
                             std, [2,3,32,32]; `logits` [2,100] (eval mode, f32)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import timm.models.densenet as timm_densenet
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.models._hub import save_config_for_hf
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_interop_fixtures import randomise, state_dict  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "hub"
IMAGES = ["cifar100_00_49.png", "cifar100_05_92.png"]

# detectors/data/constants.py: CIFAR100_DEFAULT_MEAN, CIFAR100_DEFAULT_STD.
MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)
# detectors/models/densenet.py, default_cfgs["densenet121_cifar100"] (its `_cfg`), as published
# with crop_pct 0.875: the Rust crate ignores crop_pct, so the fixture keeps it to show that.
PRETRAINED_CFG = dict(
    architecture="densenet121",
    num_classes=100,
    input_size=(3, 32, 32),
    pool_size=(4, 4),
    crop_pct=0.875,
    interpolation="bilinear",
    mean=MEAN,
    std=STD,
    first_conv="features.conv0",
    classifier="classifier",
)


def detectors_densenet121_cifar100() -> nn.Module:
    """As detectors' `_create_densenet_small("densenet121_cifar100", (6, 12, 24, 16))` builds it."""
    model = timm_densenet._create_densenet("densenet121", growth_rate=12, block_config=(6, 12, 24, 16), pretrained=False)
    model.pretrained_cfg = dict(PRETRAINED_CFG)
    model.features.conv0 = nn.Conv2d(3, 24, kernel_size=3, padding=1, bias=False)
    model.features.norm0 = nn.Identity()
    model.features.pool0 = nn.Identity()
    model.classifier = nn.Linear(model.classifier.in_features, 100)
    model.num_classes = 100
    return model


def normalised(name: str) -> torch.Tensor:
    rgb = np.asarray(Image.open(ROOT / "examples" / "images" / name).convert("RGB"), dtype=np.float32)
    x = rgb / np.float32(255)
    x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


@torch.no_grad()
def main() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(500)
    model = randomise(detectors_densenet121_cifar100(), seed=600)
    for v in model.state_dict().values():
        if v.is_floating_point():
            v.copy_(v.bfloat16().float())
    sd = state_dict(model)
    assert not any(k.startswith(("features.norm0", "features.pool0")) for k in sd)
    torch.save(sd, OUT / "pytorch_model.bin")
    save_config_for_hf(model, str(OUT / "config.json"))
    x = torch.stack([normalised(n) for n in IMAGES])
    logits = model(x)
    save_file({"input": x, "logits": logits.contiguous()}, str(OUT / "io.safetensors"))
    params = sum(p.numel() for p in model.parameters())
    print(f"{len(sd)} tensors, {params:,} parameters, logits max|.| {logits.abs().max():.4g}, "
          f"top-1 {logits.argmax(1).tolist()}")


if __name__ == "__main__":
    main()
