"""Hostile PyTorch checkpoints for tests/hostile.rs (issue 6).

Writes into tests/fixtures/hostile/:
  unknown_opcode.pth  a torch.save zip whose data.pkl holds an opcode no pickle protocol defines
  zip_bomb.pth        a torch.save zip re-packed with deflate: a 256 MB all-zero storage that
                      compresses to a few hundred KB, declared honestly in the zip directory

Run from the repository root: tools/.venv/bin/python tools/make_pickle_fixtures.py
"""

import io
import zipfile
from pathlib import Path

import torch

OUT = Path("tests/fixtures/hostile")


def repack(src: bytes, replace=None, compression=zipfile.ZIP_STORED) -> bytes:
    """Copies a zip, optionally replacing entries (by name suffix) and recompressing all."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(out, "w", compression) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in (replace or {}).items():
                if info.filename.endswith(suffix):
                    data = new
            zout.writestr(info.filename, data, compress_type=compression, compresslevel=9)
    return out.getvalue()


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    small = saved({"conv1.weight": torch.zeros(4, 3, 3, 3)})
    # Protocol 2 header, then 0xff: defined by no pickle protocol.
    (OUT / "unknown_opcode.pth").write_bytes(repack(small, {"data.pkl": b"\x80\x02\xff."}))
    bomb = saved({"conv1.weight": torch.zeros(64 * 1024 * 1024)})
    (OUT / "zip_bomb.pth").write_bytes(repack(bomb, compression=zipfile.ZIP_DEFLATED))
    for name in ("unknown_opcode.pth", "zip_bomb.pth"):
        print(name, (OUT / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
