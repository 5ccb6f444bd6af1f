"""Regenerate the test fixtures in tests/fixtures/ from the PyTorch reference.

    tools/.venv/bin/python tools/make_fixtures.py

Deterministic (fixed torch seeds, one explicit generator per fixture) and
idempotent. Needs examples/images/ (run tools/fetch_examples.py first).

Outputs (tests/fixtures/):
    seed_small.safetensors        random CifarDenseNet(k=6, [2,3,2], 10 classes), full state_dict
                                  (kaiming-normal convs, default linear, randomised BN)
    seed_small_io.safetensors     input [4,3,32,32], logits [4,10]
    densenet121_io.safetensors    input [2,3,32,32], logits [2,100], logits_f64 [2,100]
                                  (densenet121 preset, deterministic_state_dict weights)
    state_dict_names.json         {"densenet121": [[name, shape], ...], "seed_small": [...]}
    param_counts.json             parameters() counts of the four presets, 100 classes
    preprocess_ref.safetensors    normalised CHW f32 tensors of two example PNGs
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from densenet_ref import (  # noqa: E402
    DENSENET121_CIFAR100_PARAMS,
    PRESETS,
    CifarDenseNet,
    build_preset,
    count_params,
    deterministic_state_dict,
    deterministic_values,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
IMAGES = ROOT / "examples" / "images"

CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
PREPROCESS_IMAGES = ("cifar100_00_49.png", "cifar100_05_92.png")


def contiguous(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in d.items()}


def names_and_shapes(model: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def logit_stats(tag: str, logits: torch.Tensor) -> None:
    x = logits.double()
    per_row_spread = (x.max(dim=1).values - x.min(dim=1).values)
    print(
        f"{tag}: max|logit| = {x.abs().max().item():.6g}, "
        f"std = {x.std().item():.6g}, "
        f"row max-min = {[round(v, 4) for v in per_row_spread.tolist()]}, "
        f"argmax = {x.argmax(dim=1).tolist()}"
    )


def make_seed_small() -> CifarDenseNet:
    torch.manual_seed(0)
    model = CifarDenseNet(growth_rate=6, block_config=[2, 3, 2], num_classes=10)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            # torch's default conv init (kaiming_uniform, a=sqrt(5)) has variance
            # 1/(3*fan_in); through ~10 BN-ReLU-conv stages and a global average
            # pool the logits become almost input-independent (rows differed by
            # ~4e-4, a BN-eps bug moved them by ~2e-4), too weak for a 1e-4
            # tolerance. He/kaiming-normal conv weights (as torchvision's
            # DenseNet uses) keep the signal: such bugs then move logits >5e-3.
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=g)
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def preprocess(path: Path) -> torch.Tensor:
    from PIL import Image

    img = Image.open(path).convert("RGB")
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255)  # HWC
    mean = np.asarray(CIFAR100_MEAN, dtype=np.float64).astype(np.float32)
    std = np.asarray(CIFAR100_STD, dtype=np.float64).astype(np.float32)
    y = (x - mean) / std
    assert y.dtype == np.float32 and y.shape == (32, 32, 3), (y.dtype, y.shape)
    return torch.from_numpy(np.ascontiguousarray(y.transpose(2, 0, 1)))


def main() -> None:
    torch.use_deterministic_algorithms(True)
    # Single-threaded so f32 reduction order (and thus the stored logits' last
    # bits) does not depend on the machine's core count. Bits may still differ
    # across CPU instruction sets; only tolerance-level agreement is meaningful.
    torch.set_num_threads(1)
    FIXTURES.mkdir(parents=True, exist_ok=True)

    # a. seed_small weights --------------------------------------------------
    small = make_seed_small()
    small_sd = contiguous(small.state_dict())
    save_file(small_sd, str(FIXTURES / "seed_small.safetensors"))
    print(f"seed_small: {count_params(small):,} parameters, {len(small_sd)} tensors")

    # b. seed_small io --------------------------------------------------------
    g = torch.Generator().manual_seed(2)
    x_small = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float32)
    with torch.no_grad():
        y_small = small(x_small)
    assert y_small.shape == (4, 10) and y_small.dtype == torch.float32
    save_file(contiguous({"input": x_small, "logits": y_small}), str(FIXTURES / "seed_small_io.safetensors"))
    logit_stats("seed_small logits", y_small)

    # c. densenet121 deterministic io -----------------------------------------
    d121 = build_preset("densenet121", 100)
    n121 = count_params(d121)
    assert n121 == DENSENET121_CIFAR100_PARAMS, n121
    deterministic_state_dict(d121)
    d121.eval()
    # sanity: the filled tensor equals the generator output
    w = d121.state_dict()["conv1.weight"].numpy()
    assert np.array_equal(w, deterministic_values("conv1.weight", w.shape))
    g = torch.Generator().manual_seed(3)
    x121 = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float32)
    with torch.no_grad():
        y121 = d121(x121)
        d121_64 = copy.deepcopy(d121).double()
        y121_64 = d121_64(x121.double())
    assert y121.shape == (2, 100)
    save_file(
        contiguous({"input": x121, "logits": y121, "logits_f64": y121_64}),
        str(FIXTURES / "densenet121_io.safetensors"),
    )
    logit_stats("densenet121 logits (f32)", y121)
    logit_stats("densenet121 logits (f64)", y121_64)
    print(f"densenet121 max |f32 - f64| = {(y121.double() - y121_64).abs().max().item():.3g}")

    # d. state dict names -----------------------------------------------------
    names = {"densenet121": names_and_shapes(d121), "seed_small": names_and_shapes(small)}
    (FIXTURES / "state_dict_names.json").write_text(json.dumps(names, indent=1) + "\n", encoding="utf-8")

    # e. parameter counts -----------------------------------------------------
    counts = {p: count_params(build_preset(p, 100)) for p in PRESETS}
    (FIXTURES / "param_counts.json").write_text(json.dumps(counts, indent=1) + "\n", encoding="utf-8")
    print(f"param counts: {counts}")

    # f. preprocessing reference ----------------------------------------------
    pre = {Path(n).stem: preprocess(IMAGES / n) for n in PREPROCESS_IMAGES}
    save_file(contiguous(pre), str(FIXTURES / "preprocess_ref.safetensors"))
    for k, v in pre.items():
        print(f"preprocess {k}: shape {list(v.shape)}, min {v.min().item():.6g}, max {v.max().item():.6g}")

    total = 0
    for p in sorted(FIXTURES.iterdir()):
        total += p.stat().st_size
        print(f"  {p.relative_to(ROOT)}: {p.stat().st_size:,} bytes")
    print(f"  total: {total:,} bytes")


if __name__ == "__main__":
    main()
