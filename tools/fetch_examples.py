"""Copy the 20 CIFAR-100 example PNGs shipped with foolbox 3.3.4 into examples/images/.

Source: the installed `foolbox` package in the current interpreter (found without
importing it, since it is installed with --no-deps), or, if absent, a wheel
fetched with `pip download foolbox==3.3.4 --no-deps` into a temporary directory.

Writes examples/images/cifar100_NN_LABEL.png and examples/images/SOURCE.md.
Idempotent: rerunning produces byte-identical files.

    tools/.venv/bin/python tools/fetch_examples.py
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

FOOLBOX_VERSION = "3.3.4"
ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "examples" / "images"
PATTERN = re.compile(r"^cifar100_(\d\d)_(\d+)\.png$")

# CIFAR-100 fine label names, index order (as in the dataset's `meta` file).
CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle "
    "bowl boy bridge bus butterfly camel can castle caterpillar cattle "
    "chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard "
    "lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain "
    "mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket "
    "rose sea seal shark shrew skunk skyscraper snail snake spider "
    "squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor "
    "train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
assert len(CIFAR100_FINE) == 100


def from_installed() -> tuple[dict[str, bytes], str] | None:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(list(spec.submodule_search_locations)[0])
    site = pkg.parent
    dist = site / f"foolbox-{FOOLBOX_VERSION}.dist-info"
    if not dist.is_dir():
        print(f"installed foolbox is not {FOOLBOX_VERSION}; ignoring it", file=sys.stderr)
        return None
    images = {p.name: p.read_bytes() for p in sorted((pkg / "data").iterdir()) if PATTERN.match(p.name)}
    licence = (dist / "LICENSE").read_text(encoding="utf-8")
    print(f"using installed foolbox at {pkg}")
    return images, licence


def from_wheel() -> tuple[dict[str, bytes], str]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"foolbox=={FOOLBOX_VERSION}",
             "--no-deps", "--only-binary", ":all:", "-d", tmp],
            check=True,
        )
        wheels = list(Path(tmp).glob("foolbox-*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"expected one foolbox wheel, found {wheels}")
        print(f"using downloaded wheel {wheels[0].name}")
        with zipfile.ZipFile(wheels[0]) as zf:
            images = {}
            for info in zf.infolist():
                name = info.filename
                if name.startswith("foolbox/data/") and PATTERN.match(Path(name).name):
                    images[Path(name).name] = zf.read(info)
            licence = zf.read(f"foolbox-{FOOLBOX_VERSION}.dist-info/LICENSE").decode("utf-8")
    return dict(sorted(images.items())), licence


def write_source_md(images: dict[str, bytes], licence: str) -> None:
    rows = []
    for name, data in images.items():
        m = PATTERN.match(name)
        assert m is not None
        label = int(m.group(2))
        rows.append(
            f"| `{name}` | {int(m.group(1))} | {label} | {CIFAR100_FINE[label]} | "
            f"`{hashlib.sha256(data).hexdigest()}` |"
        )
    text = f"""# Example images: provenance

These are 20 images from the **CIFAR-100 test set**, exactly as shipped in the
PyPI package **foolbox {FOOLBOX_VERSION}** (`foolbox/data/cifar100_*.png`,
<https://github.com/bethgelab/foolbox>, MIT licence). They were copied
byte-for-byte by `tools/fetch_examples.py`.

File names follow `cifar100_NN_LABEL.png`: `NN` is the sample number (00-19)
and `LABEL` is the CIFAR-100 **fine** label index (0-99) of the image. The
label names below are the standard CIFAR-100 fine label list.

CIFAR-100: Alex Krizhevsky, *Learning Multiple Layers of Features from Tiny
Images*, technical report, University of Toronto, 2009.
<https://www.cs.toronto.edu/~kriz/cifar.html>

| file | sample | fine label | label name | sha256 |
|------|-------:|-----------:|------------|--------|
{chr(10).join(rows)}

## foolbox licence

The images are redistributed from foolbox under its licence, reproduced
verbatim from `foolbox-{FOOLBOX_VERSION}.dist-info/LICENSE`:

```
{licence.rstrip()}
```
"""
    (DEST / "SOURCE.md").write_text(text, encoding="utf-8")


def main() -> None:
    got = from_installed() or from_wheel()
    images, licence = got
    if len(images) != 20:
        raise SystemExit(f"expected 20 cifar100 images, found {len(images)}")
    DEST.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (DEST / name).write_bytes(data)
    write_source_md(images, licence)
    print(f"wrote {len(images)} images and SOURCE.md to {DEST.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
