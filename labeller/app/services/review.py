"""The Review page: agreement between annotators and the model's likely mistakes."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from db.engine import reading
from db.queries import app_views
from db.queries.annotations import (
    Disagreement,
    agreement,
    disagreements,
)
from db.queries.annotators import list_annotators
from labeller.app.services.common import active_model_version_id


@dataclass(frozen=True)
class AgreementRow:
    annotator_a: str
    annotator_b: str
    images: int
    observed_agreement: float
    cohen_kappa: float


@dataclass(frozen=True)
class ReviewSummary:
    counts: list[tuple[str, str, int]]  # (annotator, kind, current annotations)
    agreements: list[AgreementRow]
    disagreements: list[Disagreement]


def kappa_text(kappa: float, images: int) -> str:
    """Cohen's kappa for a table: a number, or why there is none (it is undefined when both annotators
    used one class throughout, as on a single shared image)."""
    if math.isnan(kappa):
        return f"undefined ({images} shared image{'s' if images != 1 else ''}, one class)"
    return f"{kappa:.2f}"


def labels_conflict(labels: Sequence[tuple[str, str, tuple[str, ...]]]) -> bool:
    """True when no sub-class fits every label: different main classes, or tag sets with nothing in common.
    A label without tags stands for all its main class's sub-classes (a partial label), so it fits any tag;
    "loops" and "loops / 6" agree."""
    if len({main for _, main, _ in labels}) > 1:
        return True
    tag_sets = [set(tags) for _, _, tags in labels if tags]
    return bool(tag_sets) and not set.intersection(*tag_sets)


def review_summary(engine: Engine) -> ReviewSummary:
    """Per-annotator counts, Cohen's kappa for every pair of annotators, and images they disagree on."""
    with reading(engine) as session:
        annotators = list_annotators(session)
        rows = []
        for a, b in itertools.combinations(annotators, 2):
            result = agreement(session, a.id, b.id)
            if result.images:
                rows.append(AgreementRow(a.name, b.name, result.images, result.observed_agreement, result.kappa))
        return ReviewSummary(
            counts=app_views.annotation_counts_by_annotator(session),
            agreements=rows,
            disagreements=[d for d in disagreements(session) if labels_conflict(d.labels)],
        )


def likely_mistakes(
    engine: Engine, *, min_confidence: float, limit: int = 24, annotator_id: int | None = None
) -> list[app_views.ModelDisagreement]:
    """Human labels the active model contradicts with at least ``min_confidence`` (only ``annotator_id``'s
    own when given: an annotator reviews their own work)."""
    with reading(engine) as session:
        version_id = active_model_version_id(session)
        if version_id is None:
            return []
        return app_views.confident_disagreements(
            session, version_id, min_confidence=min_confidence, limit=limit, annotator_id=annotator_id
        )
