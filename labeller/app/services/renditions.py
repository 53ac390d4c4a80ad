"""What the browser receives for an image: its display file (thumbnail or large view), or, with blur on, a
veiled rendition of it made here (``labeller.thumbnails.veiled_path``), so that the full picture leaves
the server only when the annotator reveals it. A CSS blur alone would still send every full picture.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import Engine

from db.engine import unit_of_work
from db.queries import app_views
from db.schema import Image
from labeller.app.services.common import check_servable, display_file, large_view_file
from labeller.project import Project
from labeller.thumbnails import Veil, veil_pixels, veil_radius, veiled_path

# About how long each picture is shown, in CSS pixels: the blur strength is a radius on screen (as CSS
# blur(Npx) was), so the same strength hides a Grid tile and the Label card alike.
THUMBNAIL_SHOWN_PX = 180  # a tile of the six-column Grid on a 1400-px-wide window
LARGE_VIEW_SHOWN_PX = 620  # the Label card's image, 62vh of a 1000-px-high window
DECODER_SHOWN_PX = 120  # the decoder's inputs and reconstructions, eight to a row


def _veiled(project: Project, image: Image, full: Path, *, kind: str, veil: Veil, shown_px: int) -> Path:
    target = veiled_path(project.thumbs_dir, image.sha256, full, kind=kind, veil=veil, shown_px=shown_px)
    return check_servable(target, [project.thumbs_dir.resolve()])


def served_thumbnail(project: Project, image: Image, veil: Veil | None) -> Path:
    """The thumbnail to send for ``image``: veiled when ``veil`` says so, else the thumbnail itself."""
    full = display_file(project, image)
    if veil is None:
        return full
    return _veiled(project, image, full, kind="thumb", veil=veil, shown_px=THUMBNAIL_SHOWN_PX)


def served_thumbnails(
    engine: Engine, project: Project, image_ids: Sequence[int], veil: Veil | None, unveiled: Collection[int] = ()
) -> dict[int, Path]:
    """Thumbnails to send for several images, by image id; those in ``unveiled`` (revealed) go out in full."""
    with unit_of_work(engine) as session:
        return {
            image.id: served_thumbnail(project, image, None if image.id in unveiled else veil)
            for image in app_views.images_by_ids(session, image_ids)
        }


def served_large_view(project: Project, image: Image, veil: Veil | None) -> Path:
    """The Label card's picture of ``image``: veiled when ``veil`` says so, else the large view itself."""
    full = large_view_file(project, image)
    if veil is None:
        return full
    return veiled_large_view(project, image, full, veil)


def veiled_large_view(project: Project, image: Image, full: Path, veil: Veil) -> Path:
    """The veiled rendition of the large view ``full`` of ``image`` (the caller has the large view already)."""
    return _veiled(project, image, full, kind="large", veil=veil, shown_px=LARGE_VIEW_SHOWN_PX)


def veil_array(pixels: np.ndarray, veil: Veil | None, *, shown_px: int = DECODER_SHOWN_PX) -> np.ndarray:
    """An HxWxC (or HxW) picture held in memory, such as a decoder's input or reconstruction, veiled like a
    file would be; returned as it came when ``veil`` is None. Floats are taken to lie in [0, 1]."""
    if veil is None:
        return pixels
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    image = PILImage.fromarray(array)
    radius = veil_radius(veil.blur_px, max(image.size), shown_px)
    veiled = veil_pixels(image, radius=radius, greyscale=veil.greyscale or image.mode == "L")
    return np.asarray(veiled)
