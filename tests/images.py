"""Small real image files for tests, written with PIL: every format, and every kind of bad file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# A taxonomy file for import/export tests: one main class with sub-classes, one without.
ANTS_AND_BEES = """
[[main]]
name = "ants"
  [[main.sub]]
  name = "red"
  [[main.sub]]
  name = "black"
[[main]]
name = "bees"
"""
FORMATS = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tiff": "TIFF", ".gif": "GIF"}


def write_image(path: Path, seed: int, size: tuple[int, int] = (24, 16)) -> Path:
    """A noise image (distinct content per seed) in the format the suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    fmt = FORMATS[path.suffix.lower()]
    if fmt == "GIF":
        # Two frames: the import must take the first.
        second = Image.fromarray(255 - pixels)
        image.save(path, format="GIF", save_all=True, append_images=[second], duration=100)
    else:
        image.save(path, format=fmt)
    return path


def write_exif_rotated_jpeg(path: Path, size: tuple[int, int] = (40, 20), orientation: int = 6) -> Path:
    """Stored landscape, displayed portrait (orientation 6: rotate 90 degrees clockwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, format="JPEG", exif=exif.tobytes())
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_bomb(path: Path, side: int = 30_000) -> Path:
    """A tiny PNG whose header claims side x side pixels (900 M at the default): a decompression bomb."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )
    return path


def write_truncated_jpeg(path: Path) -> Path:
    source = path.with_name("full_" + path.name)
    write_image(source, seed=999, size=(64, 64))
    data = source.read_bytes()
    source.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_corrupt_png(path: Path) -> Path:
    """A PNG with a valid signature and header but garbage image data."""
    header = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"this is not zlib data")
        + _png_chunk(b"IEND", b"")
    )
    return path
