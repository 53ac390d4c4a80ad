"""Thumbnails: made once per image (orientation from EXIF applied), cached under ``project/thumbs``.

The cache is keyed by content hash, ``thumbs/<sha[:2]>/<sha>.jpg``, so a moved or re-imported file
reuses its thumbnail and a folder never holds more than a few thousand files. JPEG, not WebP: measured
here on the hymenoptera photos, WebP encoding took 12 ms per thumbnail against 0.5 ms for JPEG at about the
same size on disk (11 kB against 13 kB), and was most of the import time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

from PIL import Image as PILImage

from core.data import decode_image, normalise_image
from labeller.project import Project

THUMBNAIL_SIZE = 256  # longest side, pixels: sharp in a 4-column grid, small on disk
THUMBNAIL_SUFFIX = ".jpg"
THUMBNAIL_QUALITY = 85


class StoredImage(Protocol):
    """What a thumbnail needs from an image row (``db.schema.Image`` fits)."""

    sha256: str
    path: str


def thumbnail_file(thumbs_dir: Path, sha256: str) -> Path:
    return thumbs_dir / sha256[:2] / f"{sha256}{THUMBNAIL_SUFFIX}"


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """Upright RGB pixels, exactly as the model sees them: ``core.data.normalise_image`` (EXIF orientation,
    transparency on white, 16-bit and float grey scaled, not clipped), then RGB."""
    return normalise_image(image).convert("RGB")


def write_thumbnail(image: PILImage.Image, target: Path, *, size: int = THUMBNAIL_SIZE) -> Path:
    """Save a thumbnail of a decoded image atomically (temporary file, then rename)."""
    thumb = to_rgb(image)
    # Bicubic after a box reduction: measured 40% faster than Lanczos here, visibly as sharp at 256 px.
    thumb.thumbnail((size, size), PILImage.Resampling.BICUBIC, reducing_gap=2.0)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as tmp:
            thumb.save(tmp, format="JPEG", quality=THUMBNAIL_QUALITY)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def thumbnail_path(project: Project, image: StoredImage) -> Path:
    """The cached thumbnail of ``image``, made from the original file on first use."""
    target = thumbnail_file(project.thumbs_dir, image.sha256)
    if not target.exists():
        with decode_image(project.resolve_image_path(image.path)) as source:
            write_thumbnail(source, target)
    return target


UNREADABLE_PLACEHOLDER = "unreadable.png"


def placeholder_file(thumbs_dir: Path, *, size: int = THUMBNAIL_SIZE) -> Path:
    """The picture shown instead of an image whose file is missing or not an image (made once)."""
    from PIL import ImageDraw

    target = thumbs_dir / UNREADABLE_PLACEHOLDER
    if target.exists():
        return target
    image = PILImage.new("RGB", (size, size), (236, 236, 236))
    draw = ImageDraw.Draw(image)
    draw.rectangle((4, 4, size - 5, size - 5), outline=(170, 170, 170), width=3)
    draw.line((4, 4, size - 5, size - 5), fill=(200, 200, 200), width=3)
    draw.line((4, size - 5, size - 5, 4), fill=(200, 200, 200), width=3)
    text = "File missing or unreadable\npress Skip"
    draw.multiline_text((size // 2, size // 2), text, fill=(60, 60, 60), anchor="mm", align="center")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as tmp:
            image.save(tmp, format="PNG")
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
