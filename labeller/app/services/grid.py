"""The Grid page: pages of thumbnails and every image matching a filter."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from db.engine import reading
from db.queries import app_views
from db.queries import models as model_queries
from labeller.app.services.common import active_model_version_id
from labeller.app.services.renditions import served_thumbnail
from labeller.project import Project
from labeller.thumbnails import Veil


@dataclass(frozen=True)
class Tile:
    row: app_views.GridRow
    file: Path
    # The prediction's percentage, e.g. " 87%", only from a version whose calibration rests on enough labels.
    confidence: str = ""


def grid_page(
    engine: Engine,
    project: Project,
    *,
    mode: str,
    strategy: str = "entropy",
    main_class_id: int | None = None,
    search: str = "",
    image_ids: Sequence[int] = (),
    page: int = 0,
    page_size: int = 24,
    veil: Veil | None = None,
    unveiled: Collection[int] = (),
) -> tuple[list[Tile], int]:
    """One page of the Grid under a filter (see ``app_views.grid_images``) and the filter's total count; the
    tiles' files are veiled renditions under ``veil``, except the ``unveiled`` images (revealed by a hold)."""
    with reading(engine) as session:
        rows, total = app_views.grid_images(
            session,
            mode=mode,
            model_version_id=active_model_version_id(session),
            strategy=strategy,
            main_class_id=main_class_id,
            search=search,
            image_ids=image_ids,
            offset=page * page_size,
            limit=page_size,
        )
        images = {image.id: image for image in app_views.images_by_ids(session, [row.image_id for row in rows])}
        version_id = active_model_version_id(session)
        calibration = model_queries.version_calibration(session, version_id) if version_id is not None else None
        shown = calibration is not None and calibration.trusted
        tiles = [
            Tile(
                row,
                served_thumbnail(project, images[row.image_id], None if row.image_id in unveiled else veil),
                f" {row.confidence:.0%}" if shown and row.confidence is not None else "",
            )
            for row in rows
        ]
        return tiles, total


def confidence_note(engine: Engine) -> str | None:
    """Why the Grid shows no percentages (the active version's calibration rests on too few labels), or None."""
    with reading(engine) as session:
        version_id = active_model_version_id(session)
        calibration = model_queries.version_calibration(session, version_id) if version_id is not None else None
        return calibration.note() if calibration is not None else None


MATCHING_LIMIT = 20_000  # "Select all that match" takes at most this many images at once


def grid_matching_ids(
    engine: Engine,
    *,
    mode: str,
    strategy: str = "entropy",
    main_class_id: int | None = None,
    search: str = "",
    image_ids: Sequence[int] = (),
    limit: int = MATCHING_LIMIT,
) -> list[int]:
    """Every image under a Grid filter, on every page, in page order (at most ``limit``)."""
    with reading(engine) as session:
        rows, _ = app_views.grid_images(
            session,
            mode=mode,
            model_version_id=active_model_version_id(session),
            strategy=strategy,
            main_class_id=main_class_id,
            search=search,
            image_ids=image_ids,
            offset=0,
            limit=limit,
        )
    return [row.image_id for row in rows]
