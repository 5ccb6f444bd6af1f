"""Trains the reference model: a small CIFAR-style DenseNet on a real labelled image set.

Reduced precisions (bf16, int8) and the image pipeline are judged on this model's real activations
rather than on random weights. The images are scikit-learn's `load_digits` (1,797 handwritten
digits, 8×8 with 17 grey levels; scikit-learn is BSD-3-Clause licensed, the data is the UCI "Optical
Recognition of Handwritten Digits" set that the package ships). Each digit is scaled to 8 bits,
enlarged to 32×32 with Pillow's bilinear filter and repeated into three channels, the form of a
CIFAR image.

Writes, under tests/fixtures/reference/:

* `digits_densenet.safetensors`: the trained weights in the seed CIFAR naming of
  `densenet_ref.CifarDenseNet` (growth 12, blocks 6-6-6, 24 initial features, bn_size 4,
  reduction 0.5, 10 classes), with the engine's metadata (config, preprocessing with the training
  set's mean and std, labels "0".."9").
* `digits_test.bin`: the held-out 20% (stratified, 360 images) as CIFAR-100 binary records
  (coarse label 0, fine label = the digit, then the red, green and blue 32×32 planes), so that
  `densenet eval` reads it as it is.
* `digits_test_io.safetensors`: `logits` F32 [360, 10], PyTorch's eval-mode output for those
  images in that order; `labels` I64 [360]; metadata `top1` (PyTorch's accuracy, e.g. "0.9861")
  and `correct` (the number of images it gets right).

Run from the repository root with tools/.venv (torch, numpy, pillow, safetensors, scikit-learn):

    tools/.venv/bin/python tools/train_reference.py

It takes a few minutes on two cores. Seeds are fixed and torch runs on one thread per op order, so a
rerun on the same machine reproduces the files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from densenet_ref import CifarDenseNet

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "reference"

GROWTH, BLOCKS, INIT, CLASSES = 12, (6, 6, 6), 24, 10
EPOCHS, BATCH, LR = 15, 64, 0.05


def to_rgb32(digit: np.ndarray) -> np.ndarray:
    """One 8×8 digit (0..16) as a 32×32×3 uint8 image."""
    grey = np.round(digit * (255.0 / 16.0)).astype(np.uint8)
    big = Image.fromarray(grey, mode="L").resize((32, 32), Image.BILINEAR)
    return np.asarray(big.convert("RGB"), dtype=np.uint8)


def shift(batch: torch.Tensor, background: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to 3 pixels, filled with the (normalised) black background: the
    training set's only augmentation."""
    n = batch.shape[0]
    padded = nn.functional.pad(batch - background, (3, 3, 3, 3)) + background
    dy = torch.randint(0, 7, (n,), generator=gen)
    dx = torch.randint(0, 7, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(n)])


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    digits = load_digits()
    images = np.stack([to_rgb32(d) for d in digits.images])  # N, 32, 32, 3
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels
    )

    pixels = images[train_idx].astype(np.float64) / 255.0
    mean = [float(np.float32(pixels[..., c].mean())) for c in range(3)]
    std = [float(np.float32(pixels[..., c].std())) for c in range(3)]

    def tensor(idx: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255.0
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        return (x - m) / s

    x_train, y_train = tensor(train_idx), torch.from_numpy(labels[train_idx])
    background = (-torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1)
    x_test, y_test = tensor(test_idx), torch.from_numpy(labels[test_idx])

    model = CifarDenseNet(GROWTH, BLOCKS, 0.5, CLASSES, INIT, 4)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = EPOCHS * math.ceil(len(train_idx) / BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    gen = torch.Generator().manual_seed(1)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(train_idx), generator=gen)
        total = 0.0
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            loss = loss_fn(model(shift(x_train[idx], background, gen)), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch % 3 == 2 or epoch == EPOCHS - 1:
            model.eval()
            with torch.no_grad():
                acc = (model(x_test).argmax(1) == y_test).float().mean().item()
            print(f"epoch {epoch + 1:2d} loss {total / len(order):.4f} test top-1 {acc:.4f}", flush=True)

    model.eval()
    with torch.no_grad():
        logits = model(x_test)
    correct = int((logits.argmax(1) == y_test).sum())
    top1 = correct / len(test_idx)

    OUT.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    config = {
        "growth_rate": GROWTH,
        "block_config": list(BLOCKS),
        "init_features": INIT,
        "bn_size": 4,
        "reduction": 0.5,
        "num_classes": CLASSES,
        "stem": "cifar",
        "transition_relu": False,
    }
    prep = {
        "input_size": [32, 32],
        "mean": mean,
        "std": std,
        "resize": "stretch",
        "interpolation": "bilinear",
    }
    metadata = {
        "format": "pt",
        "densenet.config": json.dumps(config),
        "densenet.preprocessing": json.dumps(prep),
        "densenet.labels": json.dumps([str(i) for i in range(CLASSES)]),
        "source": "tools/train_reference.py; scikit-learn load_digits (BSD-3-Clause)",
    }
    save_file(state, str(OUT / "digits_densenet.safetensors"), metadata=metadata)

    with open(OUT / "digits_test.bin", "wb") as f:
        for i in test_idx:
            f.write(bytes([0, int(labels[i])]))
            f.write(np.ascontiguousarray(images[i].transpose(2, 0, 1)).tobytes())

    save_file(
        {"logits": logits.contiguous(), "labels": y_test.contiguous()},
        str(OUT / "digits_test_io.safetensors"),
        metadata={"top1": f"{top1:.6f}", "correct": str(correct), "images": str(len(test_idx))},
    )
    print(f"parameters {params}, test images {len(test_idx)}, PyTorch top-1 {top1:.4f} ({correct})")
    print(f"mean {mean} std {std}")


if __name__ == "__main__":
    main()
