"""Rows for storage tests, written through the real schema (no ORM shortcuts that the app would not take)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import Engine, insert

from db.engine import unit_of_work
from db.schema import Image, MainClass, ModelVersion, Prediction, SubClass


@dataclass(frozen=True)
class TinyTaxonomy:
    """Two main classes: "loops" (sub-classes "0", "8") and "lines" (sub-classes "1", "7")."""

    loops: int
    lines: int
    zero: int
    eight: int
    one: int
    seven: int


def add_taxonomy(engine: Engine) -> TinyTaxonomy:
    with unit_of_work(engine) as session:
        loops = MainClass(name="loops", shortcut="l", position=0)
        lines = MainClass(name="lines", shortcut="i", position=1)
        loops.sub_classes = [SubClass(name="0", position=0), SubClass(name="8", position=1)]
        lines.sub_classes = [SubClass(name="1", position=0), SubClass(name="7", position=1)]
        session.add_all([loops, lines])
        session.flush()
        return TinyTaxonomy(
            loops=loops.id,
            lines=lines.id,
            zero=loops.sub_classes[0].id,
            eight=loops.sub_classes[1].id,
            one=lines.sub_classes[0].id,
            seven=lines.sub_classes[1].id,
        )


def image_rows(count: int, *, start: int = 0, audit_every: int = 0) -> list[dict]:
    """Image rows with the random key derived from the content hash, as the importer does."""
    rows = []
    for number in range(start, start + count):
        digest = hashlib.sha256(f"image-{number}".encode()).hexdigest()
        rows.append(
            {
                "id": number + 1,
                "sha256": digest,
                "path": f"images/{number}.png",
                "width": 8,
                "height": 8,
                "format": "PNG",
                "file_size": 100,
                "random_key": int(digest[:13], 16) / 16**13,
                "audit": bool(audit_every) and number % audit_every == 0,
            }
        )
    return rows


def add_images(engine: Engine, count: int, *, audit_every: int = 0) -> list[int]:
    rows = image_rows(count, audit_every=audit_every)
    with unit_of_work(engine) as session:
        session.execute(insert(Image), rows)
    return [row["id"] for row in rows]


def add_model_version(engine: Engine, scores: dict[int, float], *, name: str = "v1") -> int:
    """A model version whose predictions rank images by ``scores`` under every strategy."""
    with unit_of_work(engine) as session:
        version = ModelVersion(name=name, model_kind="m2", checkpoint_path="models/v1.pt")
        session.add(version)
        session.flush()
        rows = [
            {
                "model_version_id": version.id,
                "image_id": image_id,
                "confidence": 1.0 - score,
                "entropy": score,
                "leaf_entropy": score,
                "margin": score,
                "least_confidence": score,
                "bald": score,
                "disagreement": score,
                "novelty": score,
            }
            for image_id, score in scores.items()
        ]
        session.execute(insert(Prediction), rows)
        return version.id


# --- workers for the multi-process tests (module level, so that spawned processes can import them) ---


def record_many(url: str, annotator_name: str, image_ids: list[int], main_class_ids: list[int], rounds: int) -> int:
    """One OS process recording ``rounds`` decisions (one transaction each) on the shared images, cycling
    through classes so that most are corrections; returns how many it recorded."""
    from db.engine import make_engine
    from db.queries.annotations import record_annotation
    from db.queries.annotators import get_or_create_annotator
    from db.schema import AnnotationKind

    engine = make_engine(url)
    try:
        with unit_of_work(engine) as session:
            annotator_id = get_or_create_annotator(session, annotator_name).id
        for number in range(rounds):
            with unit_of_work(engine) as session:
                record_annotation(
                    session,
                    image_id=image_ids[number % len(image_ids)],
                    annotator_id=annotator_id,
                    kind=AnnotationKind.LABEL,
                    main_class_id=main_class_ids[number % len(main_class_ids)],
                    source="test",
                )
        return rounds
    finally:
        engine.dispose()


def claim_and_label(url: str, annotator_name: str, main_class_id: int, rounds: int) -> list[int]:
    """One OS process taking the next image and labelling it, ``rounds`` times, as an annotator in the
    app does; returns the images it was handed, in order."""
    from db.engine import make_engine
    from db.queries.annotations import record_annotation
    from db.queries.annotators import get_or_create_annotator
    from db.queries.queue import next_image
    from db.schema import AnnotationKind

    engine = make_engine(url)
    served: list[int] = []
    try:
        with unit_of_work(engine) as session:
            annotator_id = get_or_create_annotator(session, annotator_name).id
        for _ in range(rounds):
            with unit_of_work(engine) as session:
                image_id = next_image(
                    session, annotator_id=annotator_id, strategy="entropy", model_version_id=1, audit_every=0
                )
            if image_id is None:
                break
            served.append(image_id)
            with unit_of_work(engine) as session:
                record_annotation(
                    session,
                    image_id=image_id,
                    annotator_id=annotator_id,
                    kind=AnnotationKind.LABEL,
                    main_class_id=main_class_id,
                )
        return served
    finally:
        engine.dispose()
