"""A small project for export and import tests: every kind of label (leaf, main class only, partial over
two tags, a main class without sub-classes), three annotators with distinct times, an unlabelled image,
and an active model version with predictions for every image."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import select, update

from db.engine import unit_of_work
from db.queries.annotations import record_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.models import promote_model_version, register_model_version, write_predictions
from db.queries.taxonomy import apply_taxonomy_spec, main_class_by_name, sub_class_by_name
from db.schema import Annotation, AnnotationKind, Image
from labeller.ingest import ImportOptions, import_images
from labeller.project import Project, init_project
from labeller.taxonomy_file import parse_taxonomy_toml
from tests.images import ANTS_AND_BEES, write_image

QUIET = ImportOptions(progress=False)
START = datetime(2026, 3, 1, 9, 30, 15, 123456)
MAIN_NAMES = ["ants", "bees"]
LEAF_NAMES = ["ants/red", "ants/black", "bees"]

# file name -> (main, tags, annotator, source) of its label; None: unlabelled
LABELS: dict[str, tuple[str, tuple[str, ...], str, str] | None] = {
    "a1.png": ("ants", ("red",), "import", "import"),
    "a2.jpg": ("ants", (), "import", "import"),
    "b1.png": ("bees", (), "carol", "app"),
    "h1.png": ("ants", ("red", "black"), "alice", "grid"),
    "h2.png": ("bees", (), "bob", "app"),
    "u1.png": None,
}
# Leaf probabilities per image (ants/red, ants/black, bees): h2 is confidently ants though labelled bees.
LEAF_PROBABILITIES = {
    "a1.png": (0.8, 0.1, 0.1),
    "a2.jpg": (0.5, 0.3, 0.2),
    "b1.png": (0.05, 0.05, 0.9),
    "h1.png": (0.45, 0.45, 0.1),
    "h2.png": (0.7, 0.25, 0.05),
    "u1.png": (0.2, 0.2, 0.6),
}


def new_project(root: Path, database_url: str | None = None) -> Project:
    project = init_project(root, database_url=database_url)
    with unit_of_work(project.engine) as session:
        apply_taxonomy_spec(session, parse_taxonomy_toml(ANTS_AND_BEES))
    return project


def interchange_project(tmp_path: Path, database_url: str | None = None) -> Project:
    project = new_project(tmp_path / "project", database_url)
    # No audit slice: the in-sample flags below are about training labels (audit images are never in sample,
    # tests/test_export_predictions_honesty.py), and a 6-image project would put half its images in the slice.
    project.settings.labelling.audit_fraction = 0.0
    data = tmp_path / "data"
    write_image(data / "labelled" / "ants" / "red" / "a1.png", 1)
    write_image(data / "labelled" / "ants" / "a2.jpg", 2)
    for seed, name in enumerate(["b1.png", "h1.png", "h2.png", "u1.png"], start=3):
        write_image(data / "loose" / name, seed)
    import_images(project, [data / "labelled"], options=ImportOptions(labels_from_folders=True, progress=False))
    import_images(project, [data / "loose"], options=QUIET)
    with unit_of_work(project.engine) as session:
        ids = {Path(path).name: image_id for path, image_id in session.execute(select(Image.path, Image.id))}
        version = register_model_version(
            session,
            name="m2-v1",
            model_kind="m2",
            checkpoint_path="models/v1.pt",
            config={},
            data_snapshot={},
            metrics={},
            label_count=4,
        )
        for offset, name in enumerate(["b1.png", "h1.png", "h2.png"]):
            main, tags, annotator, source = LABELS[name]  # type: ignore[misc]
            annotation = record_annotation(
                session,
                image_id=ids[name],
                annotator_id=get_or_create_annotator(session, annotator).id,
                kind=AnnotationKind.LABEL,
                main_class_id=main_class_by_name(session, main).id,
                sub_class_ids=[sub_class_by_name(session, main, tag).id for tag in tags],
                model_version_id=version.id if name == "h1.png" else None,
                strategy="entropy" if name == "h1.png" else None,
                source=source,
            )
            annotation.created_at = START + timedelta(hours=offset)
            if name == "h1.png":
                # Trained on every label up to h1's: h2, labelled later, is out of sample.
                version.data_snapshot = {"newest_annotation_id": annotation.id}
        session.execute(update(Annotation).where(Annotation.source == "import").values(created_at=START))
        write_predictions(session, version.id, [_prediction(session, ids[name], name) for name in LEAF_PROBABILITIES])
        promote_model_version(session, version.id)
    return project


def _prediction(session, image_id: int, name: str) -> dict:  # type: ignore[no-untyped-def]
    leaf = np.asarray(LEAF_PROBABILITIES[name])
    main = np.asarray([leaf[0] + leaf[1], leaf[2]])
    top = int(main.argmax())
    main_name = MAIN_NAMES[top]
    sub_id = None
    if main_name == "ants":
        sub_id = sub_class_by_name(session, "ants", "red" if leaf[0] >= leaf[1] else "black").id
    ordered = np.sort(main)[::-1]
    return {
        "image_id": image_id,
        "main_class_id": main_class_by_name(session, main_name).id,
        "sub_class_id": sub_id,
        "confidence": float(main[top]),
        "probabilities": {
            "main": dict(zip(MAIN_NAMES, map(float, main), strict=True)),
            "leaf": dict(zip(LEAF_NAMES, map(float, leaf), strict=True)),
        },
        "entropy": float(-(main * np.log(main)).sum()),
        "leaf_entropy": float(-(leaf * np.log(leaf)).sum()),
        "margin": float(1 - (ordered[0] - ordered[1])),
        "least_confidence": float(1 - ordered[0]),
    }
