"""Re-checking the images marked unreadable (issue 23 item 5).

The Label page marks an image unreadable when its file is missing or no image (``db.queries.unreadable``),
and the mark used to stay for ever: after an images folder was moved away and back, 56 images stayed passed
over for everyone. ``recheck_unreadable`` opens each marked image's file again and clears the mark of those
that are back: a regular file with the content imported (same SHA-256) that decodes in full. It runs from
``labeller import --recheck-unreadable``, the Data page, and on every import for the marked images it meets.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

from PIL import Image as PILImage
from sqlalchemy import select

from db.engine import reading, unit_of_work
from db.queries import unreadable
from db.schema import Image
from labeller.files import FileRefused, printable, read_regular
from labeller.project import Project


@dataclass(frozen=True)
class StillUnreadable:
    path: str
    reason: str


@dataclass
class RecheckReport:
    checked: int = 0
    cleared: int = 0
    still: list[StillUnreadable] = field(default_factory=list)


def file_problem(project: Project, image: Image) -> str | None:
    """Why the stored file of ``image`` still cannot be shown, or None when it is back as imported."""
    try:
        data = read_regular(project.resolve_image_path(image.path))
    except FileRefused as refused:
        return refused.reason
    if hashlib.sha256(data).hexdigest() != image.sha256:
        return "the file there now is not the one imported (its content changed): import it as a new image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as opened:
                opened.load()
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        return "too large to decode safely (decompression bomb)"
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return f"not a readable image: {error}"
    return None


def recheck_unreadable(project: Project, image_ids: Iterable[int] | None = None) -> RecheckReport:
    """Re-open every image marked unreadable (or those of ``image_ids`` that are) and clear the marks of
    those whose file is back; the report lists the others with the reason."""
    report = RecheckReport()
    with reading(project.engine) as session:
        marked = (
            unreadable.marked_image_ids(session)
            if image_ids is None
            else sorted(unreadable.unreadable_ids(session, set(image_ids)))
        )
        images = list(session.scalars(select(Image).where(Image.id.in_(marked)).order_by(Image.id))) if marked else []
        session.expunge_all()
    readable = []
    for image in images:
        report.checked += 1
        problem = file_problem(project, image)
        if problem is None:
            readable.append(image.id)
        else:
            report.still.append(StillUnreadable(printable(image.path), problem))
    if readable:
        with unit_of_work(project.engine) as session:
            report.cleared = sum(unreadable.clear_unreadable(session, image_id) for image_id in readable)
    return report
