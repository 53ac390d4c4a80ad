"""Image files as the annotator and the models see them: one decoder (EXIF orientation, first frame,
transparency on white, 16-bit and float grey scaled to 8 bits) and the square uint8 arrays the pixel models
take. PIL and numpy only: the command line, thumbnails and the app read images without importing torch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

TRANSPARENT_BACKGROUND = (255, 255, 255)  # transparent pixels are shown, thumbnailed and learned on white
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def _grey_to_8_bits(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float grey -> 8-bit grey, scaled rather than clipped at 255.

    16-bit modes use their full range (65535 -> 255). 32-bit integers in [0, 65535] are 16-bit data too
    (PNG decoders of some Pillow versions give that); other integers are scaled from their own range.
    Floats in [0, 1] are the usual convention (1.0 -> 255); any other float range is scaled from its own
    minimum and maximum. NaN and infinities become 0."""
    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        values = array.astype(np.float64) / 257.0
    else:
        values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if image.mode == "F" and low >= 0.0 and high <= 1.0:
            values = values * 255.0
        elif image.mode == "I" and low >= 0.0 and high <= 65535.0:
            values = values / 257.0 if high > 255.0 else values
        elif high > low:
            values = (values - low) * (255.0 / (high - low))
        else:
            values = np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def normalise_image(image: Image.Image) -> Image.Image:
    """A decoded image as the annotator and the model both see it: mode "RGB" (colour) or "L" (grey).

    EXIF orientation applied; the first frame of an animation; transparency (an alpha channel, or a
    palette or single colour marked transparent) composited on ``TRANSPARENT_BACKGROUND``, never on
    black; 16-bit and float grey scaled to 8 bits (``_grey_to_8_bits``), never clipped; palette, CMYK,
    YCbCr and other colour modes converted to RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGB", "L") and "transparency" not in image.info:
        return image
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _grey_to_8_bits(image)
    transparent = "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info
    if transparent:
        grey = image.mode in _GREY_MODES
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, TRANSPARENT_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background.convert("L") if grey else background
    return image.convert("L" if image.mode in _GREY_MODES else "RGB")


def decode_image(path: Path | str) -> Image.Image:
    """The one image decoder: thumbnails, the Label page and the model all read files through it.
    Returns a loaded PIL image in mode "RGB" or "L" (see ``normalise_image``); the file is closed."""
    with Image.open(path) as image:
        image.load()
        decoded = normalise_image(image)
        if decoded is image:
            decoded = image.copy()
        return decoded


def load_image(path: Path | str, size: int, channels: int = 3) -> np.ndarray:
    """One image as uint8 (C, size, size): decoded by ``decode_image``, centre square crop, resized."""
    with decode_image(path) as decoded:
        image = decoded.convert("RGB" if channels == 3 else "L")
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def load_images(paths: Sequence[Path | str], size: int, channels: int = 3) -> np.ndarray:
    """Images as uint8 (N, C, size, size); a file that cannot be read raises with its path."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            out[i] = load_image(path, size, channels)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from error
    return out
