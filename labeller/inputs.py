"""What the model sees of a project's images, decided from the images when the settings say ``auto``.

Pixels suit small greyscale images (the pixel VAEs measured best on digits); a pretrained backbone's
features suit colour photos (on hymenoptera they beat learning from pixels by 16-20 points). The decision
and its reason are shown by ``labeller status`` and the Train page, and recorded with every model version.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps
from sqlalchemy import select

from core.registry import PIXELS, SMALL_IMAGE_SIDE, choose_backbone
from db.engine import unit_of_work
from db.schema import Image as ImageRow
from labeller.project import Project

if TYPE_CHECKING:
    from core.features import FeatureSpec

# Images opened to tell greyscale from colour; the sizes come from the database for a larger sample.
COLOUR_SAMPLE = 48
SIZE_SAMPLE = 2_000
# Pixel models on photos: 64 px measured best on hymenoptera (ANALYSIS.md, session 3).
PHOTO_PIXEL_SIZE = 64
# An image counts as greyscale when its channels differ by less than this (of 255) on average.
GREY_TOLERANCE = 2.0


@dataclass(frozen=True)
class ImageProfile:
    images: int
    median_side: int | None  # the shorter side
    greyscale: bool


@dataclass(frozen=True)
class InputChoice:
    """backbone: ``pixels`` or a backbone name (core.registry.INPUT_KINDS); image_size and channels: the
    pixel models' input (unused for features); reason: one line for people."""

    backbone: str
    image_size: int
    channels: int
    view: str
    weights: str | None
    reason: str

    @property
    def uses_features(self) -> bool:
        return self.backbone != PIXELS

    def feature_spec(self) -> FeatureSpec:
        from core.features import FeatureSpec

        return FeatureSpec(self.backbone, self.view, self.weights)

    def as_dict(self) -> dict[str, object]:
        return {
            "backbone": self.backbone,
            "image_size": self.image_size,
            "channels": self.channels,
            "feature_view": self.view,
            "backbone_weights": self.weights,
            "reason": self.reason,
        }


def _is_grey(path: str) -> bool | None:
    try:
        with Image.open(path) as image:
            if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
                return True
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((32, 32))
            pixels = np.asarray(image, dtype=np.float32)
    except (OSError, ValueError):
        return None
    spread = np.abs(pixels - pixels.mean(axis=2, keepdims=True)).mean()
    return bool(spread < GREY_TOLERANCE)


def profile_images(project: Project) -> ImageProfile:
    """Sizes from the database and colour from a few decoded images, in random-key order (a fixed sample)."""
    with unit_of_work(project.engine) as session:
        sizes = session.execute(
            select(ImageRow.width, ImageRow.height).order_by(ImageRow.random_key).limit(SIZE_SAMPLE)
        ).all()
        paths = session.execute(select(ImageRow.path).order_by(ImageRow.random_key).limit(COLOUR_SAMPLE)).scalars()
        paths = [str(project.resolve_image_path(path)) for path in paths]
    if not sizes:
        return ImageProfile(0, None, greyscale=False)
    votes = [grey for grey in map(_is_grey, paths) if grey is not None]
    greyscale = bool(votes) and sum(votes) >= 0.9 * len(votes)
    return ImageProfile(len(sizes), int(median(min(w, h) for w, h in sizes)), greyscale)


def choose_input(project: Project, profile: ImageProfile | None = None, *, backbone: str | None = None) -> InputChoice:
    """The project's input: ``backbone`` (one job's or command's choice) or its settings where set, otherwise
    decided from ``profile`` (read if not given)."""
    settings = project.settings.training
    requested = backbone if backbone is not None else settings.backbone
    needs_profile = requested == "auto" or not settings.image_size or not settings.channels
    profile = profile or (profile_images(project) if needs_profile else None)
    channels = settings.channels or (1 if profile is not None and profile.greyscale else 3)
    side = profile.median_side if profile is not None else None
    chosen, reason = choose_backbone(requested, channels=channels, image_side=side)
    if backbone is not None and backbone != "auto":
        reason = "chosen for this run"
    if settings.image_size:
        image_size = settings.image_size
    elif side is not None and side < SMALL_IMAGE_SIDE:
        image_size = max(8, side)
    else:
        image_size = PHOTO_PIXEL_SIZE
    return InputChoice(
        backbone=chosen,
        image_size=image_size,
        channels=channels,
        view=settings.feature_view,
        weights=settings.backbone_weights or None,
        reason=reason,
    )
