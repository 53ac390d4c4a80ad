"""What several pages need: the taxonomy as the app shows it, image files it may serve, label counts, who may
do what (roles) and messages fit for a browser (no server paths)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
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
from labeller.project import AccessSettings, Project

LARGE_VIEW_SIZE = 768  # longest side of the Label page's image, pixels
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


class UnsafePathError(ValueError):
    """A file the app was asked to show lies outside the project's image roots."""


# ----------------------------------------------------------------------------------------- access


class Role(StrEnum):
    ADMIN = "admin"  # taxonomy, import, export, train, promote, and everything an annotator does
    ANNOTATOR = "annotator"  # label, and review their own work


class NotAllowed(PermissionError):
    """An annotator asked for an admin's action. The pages hide those actions; this is the server's own check,
    so a crafted request (or a page that forgot) changes nothing."""


def role_of(access: AccessSettings, user: str | None, *, login: bool) -> Role | None:
    """The role of ``user`` (the logged-in e-mail); None: not allowed in at all.

    Without login the app listens only on this machine (``labeller serve``), so its user is the person at it:
    an admin. With login, ``access.admins`` are admins, and everyone else logged in is an annotator unless
    ``access.annotators`` lists who may label."""
    if not login:
        return Role.ADMIN
    who = (user or "").strip().casefold()
    if not who:
        return None
    if who in {name.strip().casefold() for name in access.admins}:
        return Role.ADMIN
    if not access.annotators or who in {name.strip().casefold() for name in access.annotators}:
        return Role.ANNOTATOR
    return None


def require_admin(role: Role | None, action: str) -> None:
    """Raise NotAllowed unless ``role`` is admin; ``action`` completes "Only admins may ..."."""
    if role is not Role.ADMIN:
        raise NotAllowed(f"Only the project's admins may {action} (admins in [access] of labeller.toml).")


# ----------------------------------------------------------------------------------------- messages

# An absolute POSIX path in a message: a "/" that does not follow a word character, a ":" or another "/"
# (so "50/100", "and/or" and "http://host" are left alone), up to whitespace or quoting.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~])/[^\s'\"`,;()\[\]]+")


def public_path(path: str | Path, bases: Sequence[Path] = ()) -> str:
    """A server path as a browser may see it: relative to the first of ``bases`` that holds it (the project,
    the folder being imported), else only its file name. Where files live on the server is not the web
    user's business, and it helps whoever probes the server."""
    candidate = Path(path)
    for base in bases:
        for form in (base, base.resolve()):
            if candidate.is_relative_to(form):
                return candidate.relative_to(form).as_posix() or "."
    return candidate.name or "."


def public_message(text: str, bases: Sequence[Path] = ()) -> str:
    """``text`` with every absolute path in it shortened by :func:`public_path`."""

    def shorten(match: re.Match[str]) -> str:
        found = match.group(0)
        path = found.rstrip(".:")  # the sentence's full stop or colon is not part of the path
        return public_path(path, bases) + found[len(path) :]

    return _ABSOLUTE_PATH.sub(shorten, text)


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
