"""Writes the image fixtures of tests/hostile.rs that the Rust `image` crate cannot encode itself.

    tools/.venv/bin/python tools/make_hostile_fixtures.py

cmyk.jpg: a 16×8 CMYK JPEG (Pillow writes Adobe CMYK, as Photoshop does), left half pure cyan
(C=255), right half pure magenta (M=255), no black; decoded to RGB these are about (0, 255, 255)
and (255, 0, 255).
"""

from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hostile"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    image = Image.new("CMYK", (16, 8), (0, 255, 0, 0))
    image.paste((255, 0, 0, 0), (0, 0, 8, 8))
    image.save(OUT / "cmyk.jpg", quality=95)


if __name__ == "__main__":
    main()
