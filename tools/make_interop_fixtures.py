"""Regenerate the checkpoint-interoperability fixtures in tests/fixtures/interop/.

    tools/.venv/bin/python tools/make_interop_fixtures.py

Every model is built with the real classes people train with: torchvision's
`DenseNet` (ImageNet stem; the DenseNet-BC CIFAR variant made by replacing its
stem modules) and timm's `DenseNet` (the stem edited as in the
`edadaltocg/densenet121_cifar100` recipe). Deterministic and idempotent.

Outputs (tests/fixtures/interop/):
    <family>_small.pth / .safetensors  small random model (k=6, blocks [2,3,2], 10 classes)
    <family>_small_io.safetensors      input, logits (eval mode, f32)
    tv_imagenet_small_*.pth            checkpoint variants of tv_imagenet_small: nested under
                                       state_dict / model / net, `module.` prefix, legacy
                                       (non-zip) serialisation, pre-0.3 torchvision `norm.1` keys
    <family>_full_io.safetensors       full-size model with deterministic_state_dict weights
                                       (named by the family's own names): input, logits_f64
    malicious.pth                      a zip checkpoint whose pickle calls os.system on load
and src/labels/imagenet.txt (torchvision's ImageNet class names, one per line).

Families:
    tv_imagenet  torchvision DenseNet, 7x7/2 conv0, norm0, ReLU, max pool
    bc_norm0     torchvision DenseNet with a 3x3/1 conv0 and norm0 + ReLU, no max pool
    bc           torchvision DenseNet with a 3x3/1 conv0 only (norm0, ReLU, pool removed)
    timm_cifar   timm DenseNet with a 3x3/1 conv0, norm0 and pool removed
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import timm.models.densenet as timm_densenet
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from densenet_ref import deterministic_state_dict  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "interop"
LABELS = ROOT / "src" / "labels" / "imagenet.txt"
# Where the malicious pickle would write if anything ever executed it.
MALICIOUS_MARKER = "/tmp/densenet-malicious-pickle-ran"


def cifar_stem(model: nn.Module, init: int, norm0: bool) -> nn.Module:
    """Replaces the ImageNet stem by a 3x3 stride-1 convolution (with or without norm0)."""
    model.features.conv0 = nn.Conv2d(3, init, kernel_size=3, stride=1, padding=1, bias=False)
    del model.features.pool0
    if not norm0:
        del model.features.norm0
        if hasattr(model.features, "relu0"):  # torchvision; timm's norm0 holds its ReLU
            del model.features.relu0
    return model


def torchvision_densenet(growth, blocks, init, classes, stem):
    model = torchvision.models.DenseNet(
        growth_rate=growth, block_config=tuple(blocks), num_init_features=init,
        bn_size=4, drop_rate=0.0, num_classes=classes)
    if stem == "imagenet":
        return model
    return cifar_stem(model, init, norm0=(stem == "cifar_norm"))


def timm_cifar_densenet(growth, blocks, classes):
    # timm's DenseNet starts with 2·growth features.
    model = timm_densenet.DenseNet(growth_rate=growth, block_config=tuple(blocks), num_classes=classes)
    return cifar_stem(model, 2 * growth, norm0=False)


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """He-normal convs and BatchNorm statistics far from identity, so that bugs show in logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=g)
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.1)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def state_dict(model: nn.Module) -> "collections.OrderedDict[str, torch.Tensor]":
    return collections.OrderedDict(
        (k, v.detach().clone().contiguous()) for k, v in model.state_dict().items())


SMALL = dict(growth=6, blocks=[2, 3, 2], init=12, classes=10)
SMALL_FAMILIES = {
    # name: (builder, input side)
    "tv_imagenet": (lambda: torchvision_densenet(**SMALL, stem="imagenet"), 48),
    "bc_norm0": (lambda: torchvision_densenet(**SMALL, stem="cifar_norm"), 32),
    "bc": (lambda: torchvision_densenet(**SMALL, stem="cifar"), 32),
    "timm_cifar": (lambda: timm_cifar_densenet(SMALL["growth"], SMALL["blocks"], SMALL["classes"]), 32),
}
FULL_FAMILIES = {
    # torchvision densenet121, 1000 ImageNet classes (a smaller input than 224 keeps the test fast)
    "tv_imagenet": (lambda: torchvision_densenet(32, [6, 12, 24, 16], 64, 1000, "imagenet"), 96),
    # DenseNet-BC, depth 100, k = 12, compression 0.5, 100 classes
    "bc_norm0": (lambda: torchvision_densenet(12, [16, 16, 16], 24, 100, "cifar_norm"), 32),
    # edadaltocg/densenet121_cifar100: timm densenet, k = 12, blocks 6-12-24-16, no norm0
    "timm_cifar": (lambda: timm_cifar_densenet(12, [6, 12, 24, 16], 100), 32),
}


class RunsShellOnLoad:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {MALICIOUS_MARKER}",))


def old_torchvision_keys(sd):
    """Keys as torchvision < 0.3 wrote them (`denselayer1.norm.1.weight`)."""
    out = collections.OrderedDict()
    for k, v in sd.items():
        for new, old in (("norm1", "norm.1"), ("norm2", "norm.2"), ("conv1", "conv.1"), ("conv2", "conv.2")):
            if ".denselayer" in k and f".{new}." in k:
                k = k.replace(f".{new}.", f".{old}.")
        out[k] = v
    return out


@torch.no_grad()
def main() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)

    for i, (name, (build, side)) in enumerate(SMALL_FAMILIES.items()):
        torch.manual_seed(100 + i)
        model = randomise(build(), seed=200 + i)
        sd = state_dict(model)
        torch.save(sd, OUT / f"{name}_small.pth")
        save_file(dict(sd), str(OUT / f"{name}_small.safetensors"))
        x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(300 + i))
        logits = model(x)
        save_file({"input": x, "logits": logits.contiguous()}, str(OUT / f"{name}_small_io.safetensors"))
        print(f"{name}_small: {len(sd)} tensors, logits max|.| {logits.abs().max():.4g}, "
              f"row spread {(logits.max(1).values - logits.min(1).values).tolist()}")
        if name == "tv_imagenet":
            for key in ("state_dict", "model", "net"):
                torch.save({key: sd, "epoch": 7, "best_acc": 0.5}, OUT / f"{name}_small_nested_{key}.pth")
            module = collections.OrderedDict(("module." + k, v) for k, v in sd.items())
            torch.save(module, OUT / f"{name}_small_module.pth")
            torch.save(sd, OUT / f"{name}_small_legacy.pth", _use_new_zipfile_serialization=False)
            torch.save(old_torchvision_keys(sd), OUT / f"{name}_small_old_keys.pth")

    for i, (name, (build, side)) in enumerate(FULL_FAMILIES.items()):
        model = build().eval()
        deterministic_state_dict(model)
        x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(400 + i))
        logits = model.double()(x.double())
        save_file({"input": x, "logits_f64": logits.contiguous()}, str(OUT / f"{name}_full_io.safetensors"))
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}_full: {params:,} parameters, logits max|.| {logits.abs().max():.4g}, "
              f"std {logits.std():.4g}")

    torch.save({"conv1.weight": torch.zeros(1), "payload": RunsShellOnLoad()}, OUT / "malicious.pth")

    from torchvision.models._meta import _IMAGENET_CATEGORIES
    assert len(_IMAGENET_CATEGORIES) == 1000
    LABELS.parent.mkdir(parents=True, exist_ok=True)
    LABELS.write_text("".join(f"{c}\n" for c in _IMAGENET_CATEGORIES))


if __name__ == "__main__":
    main()
