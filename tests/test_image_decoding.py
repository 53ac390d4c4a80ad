"""One image decoder for thumbnails and the model (issue 12 item 14): 16-bit grey, palette transparency and
float TIFFs look the same to the annotator (thumbnail) and to the model (load_image, open_rgb)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.features import open_rgb
from core.images import decode_image, load_image
from labeller.thumbnails import write_thumbnail


def _grey16(path: Path) -> Path:
    values = np.tile(np.linspace(0, 65535, 32), (32, 1)).astype(np.uint16)  # mean 32767.5 -> 127.5
    Image.fromarray(values).save(path)
    return path


def _palette_transparent(path: Path) -> Path:
    image = Image.new("P", (32, 32), 0)
    image.putpalette([0, 0, 0, 200, 30, 30])
    image.paste(1, (8, 8, 24, 24))  # a red square on a fully transparent (index 0, black) background
    image.save(path, transparency=0)
    return path


def _float_tiff(path: Path, low: float, high: float) -> Path:
    values = np.tile(np.linspace(low, high, 32, dtype=np.float32), (32, 1))
    Image.fromarray(values, mode="F").save(path)
    return path


def _thumbnail_mean(source: Path, tmp_path: Path) -> float:
    target = tmp_path / "thumbs" / f"{source.stem}.jpg"
    with Image.open(source) as image:
        write_thumbnail(image, target, size=32)
    with Image.open(target) as thumb:
        return float(np.asarray(thumb.convert("L"), dtype=np.float64).mean())


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path, channels: int) -> None:
    path = _grey16(tmp_path / "grey16.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # really a 16-bit file
    model = load_image(path, 32, channels).astype(np.float64)
    assert abs(model.mean() - 127.5) < 2, model.mean()  # the old decoder gave ~254 (clipped at 255)
    assert model.min() < 5 and model.max() > 250  # the whole range survives
    assert abs(_thumbnail_mean(path, tmp_path) - model.mean()) < 3
    with decode_image(path) as decoded:
        assert decoded.mode == "L"


def test_palette_transparency_is_on_white_everywhere(tmp_path: Path) -> None:
    path = _palette_transparent(tmp_path / "palette.png")
    model = load_image(path, 32, 3)
    corner = model[:, 0, 0]
    assert (corner == 255).all(), corner  # transparent background: white, not the palette's black
    centre = model[:, 16, 16]
    assert centre[0] > 150 and centre[1] < 80  # the opaque red square is kept
    features_input = np.asarray(open_rgb(path))
    assert (features_input[0, 0] == 255).all() and features_input[16, 16, 0] > 150
    assert _thumbnail_mean(path, tmp_path) > 150  # mostly white: the old model input was mostly black


@pytest.mark.parametrize(("low", "high", "expected"), [(0.0, 1.0, 127.5), (-3.0, 5000.0, 127.5)])
def test_float_tiff_is_scaled_from_its_range(tmp_path: Path, low: float, high: float, expected: float) -> None:
    path = _float_tiff(tmp_path / "float.tif", low, high)
    model = load_image(path, 32, 1).astype(np.float64)
    assert abs(model.mean() - expected) < 2, model.mean()  # the old decoder gave 0 (black) or 255
    assert model[0, 0, 0] < 5 and model[0, 0, -1] > 250
    assert abs(_thumbnail_mean(path, tmp_path) - model.mean()) < 3
    assert abs(np.asarray(open_rgb(path), dtype=np.float64).mean() - expected) < 2


def test_ordinary_images_are_unchanged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.png", 16, 3), pixels.transpose(2, 0, 1))
    grey = pixels[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(load_image(tmp_path / "grey.png", 16, 1)[0], grey)
    with decode_image(tmp_path / "grey.png") as decoded:
        assert decoded.mode == "L"
