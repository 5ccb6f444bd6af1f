"""PyTorch reference DenseNet for CIFAR-style 32x32 inputs ("seed CIFAR naming").

The state_dict names produced by `CifarDenseNet` are the contract the Rust
engine loads against:

    conv1.weight                                   3x3 stem conv, no pooling
    features.dense_block_layer_{i}.bottle_neck_layer_{j}.bottle_neck.{0..5}.*
    features.transition_layer_{i}.down_sample.{0,1}.*
    features.dense_block{n-1}.bottle_neck_layer_{j}.bottle_neck.{0..5}.*
    features.bn.*
    linear.weight, linear.bias

It also provides `deterministic_state_dict(model)`, a hash-based weight
generator that the Rust side re-implements bit-exactly (see tools/README.md).

Run this file directly to print parameter counts and cross-check values.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

BN_EPS = 1e-5

# name -> (block_config, growth_rate); all use reduction 0.5.
PRESETS: dict[str, tuple[tuple[int, ...], int]] = {
    "densenet121": ((6, 12, 24, 16), 32),
    "densenet169": ((6, 12, 32, 32), 32),
    "densenet201": ((6, 12, 48, 32), 32),
    "densenet161": ((6, 12, 36, 24), 48),
}

DENSENET121_CIFAR100_PARAMS = 7_048_548


class BottleNeckLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3, output concatenated onto the input."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        inner = bn_size * growth_rate
        self.bottle_neck = nn.Sequential(
            nn.BatchNorm2d(in_channels, eps=BN_EPS),
            nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, inner, kernel_size=1, bias=False),
            nn.BatchNorm2d(inner, eps=BN_EPS),
            nn.ReLU(inplace=False),
            nn.Conv2d(inner, growth_rate, kernel_size=3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.bottle_neck(x)], 1)


class TransitionLayer(nn.Module):
    """BN-Conv1x1-AvgPool2x2 (no ReLU)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.down_sample = nn.Sequential(
            nn.BatchNorm2d(in_channels, eps=BN_EPS),
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.AvgPool2d(2, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_sample(x)


class CifarDenseNet(nn.Module):
    def __init__(
        self,
        growth_rate: int,
        block_config: Sequence[int],
        reduction: float = 0.5,
        num_classes: int = 100,
        init_features: int | None = None,
        bn_size: int = 4,
    ) -> None:
        super().__init__()
        if len(block_config) < 1:
            raise ValueError("block_config must have at least one block")
        if init_features is None:
            init_features = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, init_features, kernel_size=3, stride=1, padding=1, bias=False)

        self.features = nn.Sequential()
        c = init_features
        n = len(block_config)
        for i, num_layers in enumerate(block_config):
            block = nn.Sequential()
            for j in range(num_layers):
                block.add_module(f"bottle_neck_layer_{j}", BottleNeckLayer(c, growth_rate, bn_size))
                c += growth_rate
            if i < n - 1:
                self.features.add_module(f"dense_block_layer_{i}", block)
                out_c = int(math.floor(reduction * c))
                self.features.add_module(f"transition_layer_{i}", TransitionLayer(c, out_c))
                c = out_c
            else:
                self.features.add_module(f"dense_block{i}", block)
        self.features.add_module("bn", nn.BatchNorm2d(c, eps=BN_EPS))
        self.features.add_module("relu", nn.ReLU(inplace=False))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(c, num_classes, bias=True)
        self.num_features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.linear(x)


def build_preset(name: str, num_classes: int = 100) -> CifarDenseNet:
    blocks, k = PRESETS[name]
    return CifarDenseNet(growth_rate=k, block_config=blocks, reduction=0.5, num_classes=num_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------
# Deterministic, hash-based weights (re-implemented bit-exactly in Rust).
# --------------------------------------------------------------------------

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_F32_ONE = np.float32(1.0)
_F32_TWO = np.float32(2.0)
_F32_HALF = np.float32(0.5)
_F32_TENTH = np.float32(0.1)
_F32_2POW24 = np.float32(2.0**24)


def fnv1a64(name: str) -> int:
    h = FNV_OFFSET
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * FNV_PRIME) & MASK64
    return h


def hash_uniform(name: str, n: int) -> np.ndarray:
    """u[i] in [0,1) as float32, i = 0..n-1 (SplitMix64 finalizer on seed + (i+1)*golden)."""
    seed = np.uint64(fnv1a64(name))
    idx = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = seed + idx * _GOLDEN  # uint64 array arithmetic wraps mod 2^64
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    top24 = (z >> np.uint64(40)).astype(np.float32)  # < 2^24, exact in f32
    u = top24 / _F32_2POW24
    assert u.dtype == np.float32
    return u


def deterministic_values(name: str, shape: Sequence[int]) -> np.ndarray:
    """Float32 values for tensor `name` of `shape` (C order)."""
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    u = hash_uniform(name, n)
    if name.endswith(".weight") and len(shape) >= 2:
        fan_in = shape[1] * int(np.prod(shape[2:], dtype=np.int64))
        s = np.float32(math.sqrt(3.0 / fan_in))
        v = ((_F32_TWO * u) - _F32_ONE) * s
    elif name.endswith(".bias") or name.endswith("running_mean"):
        v = ((_F32_TWO * u) - _F32_ONE) * _F32_TENTH
    elif (name.endswith(".weight") and len(shape) == 1) or name.endswith("running_var"):
        v = u + _F32_HALF
    else:
        raise ValueError(f"no deterministic rule for {name} {shape}")
    assert v.dtype == np.float32
    return v.reshape(shape)


@torch.no_grad()
def deterministic_state_dict(model: nn.Module) -> None:
    """Fill every floating-point tensor in model.state_dict() in place."""
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        if not t.is_floating_point():
            raise ValueError(f"unexpected non-float tensor {name} ({t.dtype})")
        v = torch.from_numpy(deterministic_values(name, tuple(t.shape)))
        t.copy_(v.to(t.dtype))


def _cross_check_values() -> list[tuple[str, tuple[int, ...], list[float]]]:
    """(name, shape, first 4 values) for a few tensors of densenet121 (100 classes)."""
    m = build_preset("densenet121", 100)
    sd = m.state_dict()
    names = [
        "conv1.weight",
        "features.dense_block_layer_0.bottle_neck_layer_0.bottle_neck.0.weight",
        "features.dense_block_layer_0.bottle_neck_layer_0.bottle_neck.0.bias",
        "features.dense_block_layer_0.bottle_neck_layer_0.bottle_neck.0.running_mean",
        "features.dense_block_layer_0.bottle_neck_layer_0.bottle_neck.0.running_var",
        "linear.weight",
        "linear.bias",
    ]
    out = []
    for nm in names:
        shape = tuple(sd[nm].shape)
        v = deterministic_values(nm, shape).reshape(-1)[:4]
        out.append((nm, shape, [float(x) for x in v]))
    return out


def main() -> None:
    m = build_preset("densenet121", 100)
    n = count_params(m)
    assert n == DENSENET121_CIFAR100_PARAMS, n
    for p in PRESETS:
        print(f"{p}: {count_params(build_preset(p, 100)):,} parameters (100 classes)")
    print(f"fnv1a64('conv1.weight') = {fnv1a64('conv1.weight'):#018x}")
    for nm, shape, vals in _cross_check_values():
        print(f"{nm} {list(shape)}")
        for x in vals:
            print(f"    {x.hex():>24}  {x!r}")


if __name__ == "__main__":
    main()
