"""Per-annotator image-safety settings and exposure counts (``annotator_wellbeing``).

A missing row means the defaults: the project's blur and greyscale, nothing seen yet. Counts roll over at
UTC midnight: the first exposure of a new day starts ``exposures_today`` at one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy.orm import Session

from db.schema import AnnotatorWellbeing, utcnow

MIN_BLUR_PX = 2
MAX_BLUR_PX = 60
SETTING_FIELDS = ("blur", "greyscale", "blur_px", "reveal_on_hold")


class WellbeingError(ValueError):
    """A setting out of range; the message says which and why."""


@dataclass(frozen=True)
class WellbeingView:
    blur: bool | None  # None: the project's default
    greyscale: bool | None
    blur_px: int
    reveal_on_hold: bool
    exposures_today: int
    exposures_since_break: int
    break_started_at: datetime | None


def _today(now: datetime) -> date:
    return now.date()


def _view(row: AnnotatorWellbeing | None, now: datetime) -> WellbeingView:
    if row is None:
        return WellbeingView(None, None, 22, True, 0, 0, None)
    today = row.exposures_today if row.exposure_day == _today(now) else 0
    return WellbeingView(
        row.blur,
        row.greyscale,
        row.blur_px,
        row.reveal_on_hold,
        today,
        row.exposures_since_break,
        row.break_started_at,
    )


def _row(session: Session, annotator_id: int, now: datetime) -> AnnotatorWellbeing:
    row = session.get(AnnotatorWellbeing, annotator_id)
    if row is None:
        row = AnnotatorWellbeing(
            annotator_id=annotator_id,
            blur_px=22,
            reveal_on_hold=True,
            exposures_today=0,
            exposures_since_break=0,
            break_started_at=now,
        )
        session.add(row)
    return row


def get_wellbeing(session: Session, annotator_id: int, *, now: datetime | None = None) -> WellbeingView:
    return _view(session.get(AnnotatorWellbeing, annotator_id), now or utcnow())


def save_settings(session: Session, annotator_id: int, **settings: bool | int | None) -> WellbeingView:
    """Store some of ``SETTING_FIELDS``; others are refused."""
    unknown = set(settings) - set(SETTING_FIELDS)
    if unknown:
        raise WellbeingError(f"unknown wellbeing setting(s): {', '.join(sorted(unknown))}")
    blur_px = settings.get("blur_px")
    if blur_px is not None and not (isinstance(blur_px, int) and MIN_BLUR_PX <= blur_px <= MAX_BLUR_PX):
        raise WellbeingError(f"blur strength must be {MIN_BLUR_PX}-{MAX_BLUR_PX} px, got {blur_px!r}")
    now = utcnow()
    row = _row(session, annotator_id, now)
    for name, value in settings.items():
        setattr(row, name, value)
    session.flush()
    return _view(row, now)


def record_exposures(
    session: Session, annotator_id: int, count: int = 1, *, now: datetime | None = None
) -> WellbeingView:
    """Add ``count`` images shown; a new UTC day starts today's count again."""
    now = now or utcnow()
    row = _row(session, annotator_id, now)
    if row.exposure_day != _today(now):
        row.exposure_day = _today(now)
        row.exposures_today = 0
    row.exposures_today = (row.exposures_today or 0) + count
    row.exposures_since_break = (row.exposures_since_break or 0) + count
    if row.break_started_at is None:
        row.break_started_at = now
    session.flush()
    return _view(row, now)


def take_break(session: Session, annotator_id: int, *, now: datetime | None = None) -> WellbeingView:
    """The break reminder's "I took a break": the since-break count and clock start again (today's stays)."""
    now = now or utcnow()
    row = _row(session, annotator_id, now)
    row.exposures_since_break = 0
    row.break_started_at = now
    session.flush()
    return _view(row, now)
