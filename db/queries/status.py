"""One read-only summary of a project: images, labels per class, annotators, model versions, jobs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.queries.annotations import label_counts
from db.queries.audit import MIN_AUDIT_LABELS, labelled_audit_images
from db.queries.images import audit_count, image_count
from db.schema import Annotation, AnnotationKind, Annotator, Job, ModelVersion


def annotator_activity(session: Session) -> list[dict[str, Any]]:
    """Per annotator: current decisions by kind, every history row, and the last one's time."""
    current = dict(
        session.execute(
            select(Annotation.annotator_id, func.count())
            .where(Annotation.superseded.is_(False), Annotation.kind == AnnotationKind.LABEL)
            .group_by(Annotation.annotator_id)
        ).all()
    )
    rows = session.execute(
        select(Annotator.id, Annotator.name, func.count(Annotation.id), func.max(Annotation.created_at))
        .outerjoin(Annotation, Annotation.annotator_id == Annotator.id)
        .group_by(Annotator.id, Annotator.name)
        .order_by(Annotator.name)
    ).all()
    return [
        {
            "name": name,
            "current_labels": current.get(annotator_id, 0),
            "history_rows": history,
            "last_activity": last.isoformat(timespec="seconds") if last else None,
        }
        for annotator_id, name, history, last in rows
    ]


def images_by_current_decision(session: Session) -> dict[str, int]:
    """Images with at least one current decision of each kind (label, unsure, skip), across annotators."""
    rows = session.execute(
        select(Annotation.kind, func.count(func.distinct(Annotation.image_id)))
        .where(Annotation.superseded.is_(False))
        .group_by(Annotation.kind)
    ).all()
    counts = {str(kind): 0 for kind in (AnnotationKind.LABEL, AnnotationKind.UNSURE, AnnotationKind.SKIP)}
    counts.update({str(kind): count for kind, count in rows if kind != AnnotationKind.UNDO})
    return counts


def project_status(session: Session) -> dict[str, Any]:
    """Everything ``labeller status`` prints, as plain JSON-ready data."""
    images = image_count(session)
    audit_images = audit_count(session)
    counts = label_counts(session)
    classes = [
        {
            "main_class": main,
            "labelled": labelled,
            "main_class_only": counts.main_class_only.get(main, 0),
            "sub_classes": counts.by_sub_class.get(main, {}),
        }
        for main, labelled in counts.by_main_class.items()
    ]
    versions = session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())).all()
    jobs_by_status = {
        str(status): count for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status))
    }
    return {
        "images": images,
        "audit_images": audit_images,
        # The slice's labels are what model versions are compared on: below the minimum, too few to go by.
        "audit": {
            "images": audit_images,
            "labelled": labelled_audit_images(session),
            "minimum_labels": MIN_AUDIT_LABELS,
        },
        "labelled": counts.labelled_images,
        "unlabelled": images - counts.labelled_images,
        "images_by_current_decision": images_by_current_decision(session),
        "classes": classes,
        "annotators": annotator_activity(session),
        "model_versions": [
            {
                "id": version.id,
                "name": version.name,
                "model_kind": version.model_kind,
                "active": version.active,
                "label_count": version.label_count,
                "created_at": version.created_at.isoformat(timespec="seconds"),
                "metrics": {k: v for k, v in (version.metrics or {}).items() if isinstance(v, int | float | str)},
                # Why model = "auto" chose this kind (core.training.selection); None for a kind asked for.
                "chosen_by_auto": ((version.metrics or {}).get("model_selection") or {}).get("reason"),
            }
            for version in versions
        ],
        "jobs": jobs_by_status,
    }
