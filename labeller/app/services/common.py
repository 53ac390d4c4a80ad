"""What several pages need: the taxonomy as the app shows it, image files it may serve, label counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db.engine import reading, unit_of_work
from db.queries import app_views
from db.queries.annotations import (
    LabelCounts,
    label_counts,
)
from db.queries.images import image_count
from db.queries.models import active_model_version
from db.schema import MAX_ID, Image
from labeller.app.keys import KeyMap, build_key_map
from labeller.project import Project

LARGE_VIEW_SIZE = 768  # longest side of the Label page's image, pixels
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


class UnsafePathError(ValueError):
    """A file the app was asked to show lies outside the project's image roots."""


@dataclass(frozen=True)
class SubClassView:
    id: int
    name: str
    main_class_id: int


@dataclass(frozen=True)
class MainClassView:
    id: int
    name: str
    colour: str | None
    sub_classes: tuple[SubClassView, ...]


@dataclass(frozen=True)
class TaxonomyView:
    main_classes: tuple[MainClassView, ...]
    keys: KeyMap

    def main_name(self, main_id: int | None) -> str:
        return next((m.name for m in self.main_classes if m.id == main_id), "-")

    def sub_name(self, sub_id: int | None) -> str:
        return next((s.name for m in self.main_classes for s in m.sub_classes if s.id == sub_id), "-")

    def sub_class(self, sub_id: int) -> SubClassView | None:
        return next((s for m in self.main_classes for s in m.sub_classes if s.id == sub_id), None)

    def main_class(self, main_id: int) -> MainClassView | None:
        return next((m for m in self.main_classes if m.id == main_id), None)


def load_taxonomy(session: Session) -> TaxonomyView:
    rows = app_views.taxonomy_rows(session)
    keys = build_key_map(
        [(m.id, m.name, m.shortcut) for m in rows],
        {m.id: [(s.id, s.name, s.shortcut) for s in m.sub_classes] for m in rows},
    )
    mains = tuple(
        MainClassView(m.id, m.name, m.colour, tuple(SubClassView(s.id, s.name, m.id) for s in m.sub_classes))
        for m in rows
    )
    return TaxonomyView(mains, keys)


def active_model_version_id(session: Session) -> int | None:
    version = active_model_version(session)
    return None if version is None else version.id


def check_servable(path: Path, roots: Sequence[Path]) -> Path:
    """``path`` with symlinks resolved, if it is an image file inside one of ``roots``."""
    resolved = path.resolve()
    if resolved.suffix.lower() not in IMAGE_SUFFIXES:
        raise UnsafePathError(f"{path} is not an image file")
    if not any(resolved.is_relative_to(root) for root in roots):
        raise UnsafePathError(f"{path} lies outside the project's image roots")
    if not resolved.is_file():
        raise FileNotFoundError(f"image file {path} is missing")
    return resolved


def display_file(project: Project, image: Image) -> Path:
    """The cached, resized file to show for ``image`` (made once), checked to lie inside the project."""
    from labeller.thumbnails import thumbnail_path

    thumb = thumbnail_path(project, image)
    return check_servable(thumb, [project.thumbs_dir.resolve()])


def display_files(engine: Engine, project: Project, image_ids: Sequence[int]) -> dict[int, Path]:
    """Thumbnail files of several images, by image id."""
    with unit_of_work(engine) as session:
        return {image.id: display_file(project, image) for image in app_views.images_by_ids(session, image_ids)}


def large_view_file(project: Project, image: Image) -> Path:
    """A larger cached copy for the Label page (made once, like the thumbnails), checked the same way."""
    from PIL import Image as PILImage

    from labeller.thumbnails import thumbnail_file, write_thumbnail

    target = thumbnail_file(project.thumbs_dir / "large", image.sha256)
    if not target.exists():
        with PILImage.open(project.resolve_image_path(image.path)) as source:
            write_thumbnail(source, target, size=LARGE_VIEW_SIZE)
    return check_servable(target, [project.thumbs_dir.resolve()])


def parse_image_id(value: object) -> int | None:
    """An image id from a URL parameter: a positive integer that fits an id column, or nothing (never a path).
    ASCII digits only: ``str.isdigit`` accepts "²", which ``int`` then refuses."""
    text = str(value).strip() if value is not None else ""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_ID)):
        return None
    number = int(text)
    return number if 0 < number <= MAX_ID else None


def counts(engine: Engine) -> LabelCounts:
    with reading(engine) as session:
        return label_counts(session)


def image_total(engine: Engine) -> int:
    with reading(engine) as session:
        return image_count(session)
