"""A small, real project for the app's tests: digit images written as PNG files, a two-level taxonomy,
and optionally an active model version whose predictions carry UMAP coordinates.

The digits come from scikit-learn's bundled copy (no download, nothing read from /work/shared); each is
upscaled and tinted so the files are ordinary colour images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sklearn.datasets import load_digits

from db.engine import unit_of_work
from db.queries.images import NewImage, add_images
from db.queries.models import promote_model_version, register_model_version, set_embedding_coords, write_predictions
from db.queries.taxonomy import MainClassEntry, SubClassEntry, TaxonomySpec, apply_taxonomy_spec
from labeller.project import Project, init_project

# Main class -> digits it holds (its sub-classes).
DIGIT_TAXONOMY: dict[str, tuple[str, ...]] = {
    "loops": ("0", "6", "8", "9"),
    "strokes": ("1", "4", "7"),
    "curves": ("2", "3", "5"),
}
MAIN_KEYS = {"loops": "1", "strokes": "2", "curves": "3"}


def main_of_digit(digit: int) -> str:
    return next(main for main, subs in DIGIT_TAXONOMY.items() if str(digit) in subs)


def write_digit_images(folder: Path, count: int, *, size: int = 64) -> list[tuple[Path, int]]:
    """``count`` PNG files of handwritten digits; returns (path, digit) pairs."""
    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(count):
        pixels = (digits.images[index] / 16.0 * 255).astype(np.uint8)
        tint = np.array([(index * 37) % 120 + 100, (index * 53) % 120 + 100, 235], dtype=np.float32) / 255
        rgb = (255 - pixels[..., None] * tint).astype(np.uint8)
        image = PILImage.fromarray(rgb, "RGB").resize((size, size), PILImage.Resampling.NEAREST)
        path = folder / f"digit_{index:04d}_{digits.target[index]}.png"
        image.save(path)
        written.append((path, int(digits.target[index])))
    return written


def make_app_project(root: Path, *, images: int = 40, blur: bool = False, database_url: str | None = None) -> Project:
    project = init_project(root, name="Digits test project", database_url=database_url)
    project.settings.labelling.blur_images = blur
    project.settings.labelling.audit_fraction = 0.0
    project.save_settings()
    files = write_digit_images(root / "images", images)
    spec = TaxonomySpec(
        tuple(
            MainClassEntry(name=main, key=MAIN_KEYS[main], sub_classes=tuple(SubClassEntry(sub) for sub in subs))
            for main, subs in DIGIT_TAXONOMY.items()
        )
    )
    with unit_of_work(project.engine) as session:
        apply_taxonomy_spec(session, spec)
        rows = []
        for path, _digit in files:
            data = path.read_bytes()
            rows.append(
                NewImage(
                    sha256=hashlib.sha256(data).hexdigest(),
                    path=project.stored_image_path(path),
                    width=64,
                    height=64,
                    format="PNG",
                    file_size=len(data),
                )
            )
        add_images(session, rows, audit_fraction=0.0)
    return project


def add_active_model(
    project: Project, *, seed: int = 0, checkpoint: Path | None = None, metrics: dict[str, Any] | None = None
) -> int:
    """An active model version with predictions (scores, probabilities, UMAP coordinates) for every image.

    The "model" is a deterministic function of each image's digit, right 80% of the time, so that some
    predictions confidently contradict the truth (the Review page's likely mistakes).
    """
    from sqlalchemy import select

    from db.schema import Image, MainClass, SubClass

    rng = np.random.default_rng(seed)
    with unit_of_work(project.engine) as session:
        mains = {m.name: m.id for m in session.scalars(select(MainClass))}
        subs = {(s.main_class.name, s.name): s.id for s in session.scalars(select(SubClass))}
        version = register_model_version(
            session,
            name="test model",
            model_kind="m2",
            checkpoint_path=project.stored_image_path(checkpoint or project.models_dir / "missing.pt"),
            config={"model": "m2", "epochs": 1},
            data_snapshot={"labels": 0},
            metrics=metrics if metrics is not None else {"val_accuracy": 0.8},
            label_count=0,
        )
        images = list(session.scalars(select(Image).order_by(Image.id)))
        predictions, coords = [], []
        for image in images:
            digit = int(Path(image.path).stem.rsplit("_", 1)[1])
            truth = main_of_digit(digit)
            guess = truth if rng.random() < 0.8 else rng.choice([m for m in mains if m != truth])
            confidence = float(rng.uniform(0.55, 0.99))
            rest = (1 - confidence) / (len(mains) - 1)
            main_probs = {name: (confidence if name == guess else rest) for name in mains}
            sub_name = DIGIT_TAXONOMY[guess][0] if guess != truth else str(digit)
            entropy = float(-sum(p * np.log(p) for p in main_probs.values()))
            predictions.append(
                {
                    "image_id": image.id,
                    "main_class_id": mains[guess],
                    "sub_class_id": subs[(guess, sub_name)],
                    "confidence": confidence,
                    "probabilities": {"main": main_probs, "leaf": {f"{guess}/{sub_name}": confidence}},
                    "entropy": entropy,
                    "leaf_entropy": entropy,
                    "margin": 1 - (confidence - rest),
                    "least_confidence": 1 - confidence,
                    "bald": float(rng.uniform(0, 0.3)),
                    "disagreement": float(rng.uniform(0, 1)),
                    "novelty": float(rng.uniform(0, 1)),
                }
            )
            centre = {"loops": (0, 0), "strokes": (6, 1), "curves": (3, 6)}[truth]
            coords.append([centre[0] + rng.normal(0, 1), centre[1] + rng.normal(0, 1)])
        write_predictions(session, version.id, predictions)
        set_embedding_coords(session, version.id, [image.id for image in images], np.array(coords))
        promote_model_version(session, version.id)
        return version.id


def label_truthfully(project: Project, count: int, *, annotator: str = "seed") -> None:
    """Label the first ``count`` images with their true main class and digit tag."""
    from sqlalchemy import select

    from db.queries.annotations import record_annotation
    from db.queries.annotators import get_or_create_annotator
    from db.schema import AnnotationKind, Image, MainClass

    with unit_of_work(project.engine) as session:
        who = get_or_create_annotator(session, annotator)
        mains = {m.name: m for m in session.scalars(select(MainClass))}
        for image in session.scalars(select(Image).order_by(Image.id).limit(count)):
            digit = Path(image.path).stem.rsplit("_", 1)[1]
            main = mains[main_of_digit(int(digit))]
            tag = next(s.id for s in main.sub_classes if s.name == digit)
            record_annotation(
                session,
                image_id=image.id,
                annotator_id=who.id,
                kind=AnnotationKind.LABEL,
                main_class_id=main.id,
                sub_class_ids=[tag],
                source="test",
            )
