"""The demo project: scikit-learn's bundled 8x8 digits written out as real PNG files, a two-level taxonomy
("loops" vs "no loops", the digits as sub-classes), a few pre-labels and the rest unlabelled.

The data ships inside scikit-learn, so the demo needs no download and no file outside the project folder.
``demo_truth.csv`` holds every image's true label as an import manifest (for simulated annotators and
benchmarks; the app never reads it).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from db.engine import unit_of_work
from db.queries.annotations import record_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.images import image_count, image_ids_by_sha
from db.queries.taxonomy import (
    MainClassEntry,
    SubClassEntry,
    TaxonomySpec,
    apply_taxonomy_spec,
    main_class_by_name,
    sub_class_by_name,
)
from db.schema import AnnotationKind, AnnotationSource
from labeller.ingest import ImportOptions, import_images
from labeller.project import SETTINGS_FILE, Project, TrainingSettings, init_project, open_project

LOOPS = ("0", "6", "8", "9")
NO_LOOPS = ("1", "2", "3", "4", "5", "7")
# Sub-class keys are live only after a main class is chosen, so both main classes use the same pool;
# it avoids Streamlit's own "c" and "r" and the label page's s/u/z/v. The main classes are on letters, not
# digits: on images of digits, "1" for "loops" read like "this is a 1".
SUB_KEYS = "qwetyi"
DEMO_TAXONOMY = TaxonomySpec(
    (
        MainClassEntry(
            "loops",
            key="l",
            colour="#1f77b4",
            sub_classes=tuple(SubClassEntry(d, key=k) for d, k in zip(LOOPS, SUB_KEYS, strict=False)),
        ),
        MainClassEntry(
            "no loops",
            key="n",
            colour="#ff7f0e",
            sub_classes=tuple(SubClassEntry(d, key=k) for d, k in zip(NO_LOOPS, SUB_KEYS, strict=False)),
        ),
    )
)
DEMO_ANNOTATOR = "demo"
TRUTH_FILE = "demo_truth.csv"
# The digits are 8x8 at heart: 16 greyscale pixels keep all they hold and train M2 (MLP encoder and decoder,
# the tiny-image CNN as q(y|x)) in under a minute on two CPU cores; the 64-pixel RGB defaults would take
# over an hour there.
# The digits' leaves are balanced, so the prior-matching term is safe here (see TrainingSettings).
DEMO_TRAINING = TrainingSettings(model="m2", image_size=16, channels=1, epochs=20, consistency=20.0, balance=20.0)


@dataclass(frozen=True)
class DemoConfig:
    image_size: int = 32  # the 8x8 digits, upscaled so thumbnails and the model's 32/64-pixel input look sane
    full_labels_per_digit: int = 2
    extra_full_labels: int = 5  # 10 x 2 + 5 = 25 labels with a sub-class
    partial_labels: int = 5  # main class only
    seed: int = 0


def main_class_of(digit: str) -> str:
    return "loops" if digit in LOOPS else "no loops"


def write_digit_pngs(folder: Path, *, image_size: int) -> list[tuple[Path, str]]:
    """Each digit as an RGB PNG (dark ink on white); files already there are left as they are."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = folder / f"digit_{index:04d}.png"
        if not path.exists():
            grey = (255 - pixels * (255 / 16)).clip(0, 255).astype(np.uint8)
            image = PILImage.fromarray(grey, mode="L").resize((image_size, image_size), PILImage.Resampling.BICUBIC)
            image.convert("RGB").save(path, format="PNG")
        written.append((path, str(target)))
    return written


def write_truth_manifest(project: Project, files: list[tuple[Path, str]]) -> Path:
    target = project.root / TRUTH_FILE
    with target.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "class", "tags"])
        for path, digit in files:
            writer.writerow([path.relative_to(project.root), main_class_of(digit), digit])
    return target


def choose_prelabels(digits: list[str], config: DemoConfig) -> tuple[list[int], list[int]]:
    """Indices to label fully (a few of every digit, then some at random) and main-class-only (partial)."""
    order = np.random.default_rng(config.seed).permutation(len(digits))
    full: list[int] = []
    for digit in sorted(set(digits)):
        full += [int(i) for i in order if digits[i] == digit][: config.full_labels_per_digit]
    chosen = set(full)
    rest = [int(i) for i in order if int(i) not in chosen]
    full += rest[: config.extra_full_labels]
    partial = rest[config.extra_full_labels : config.extra_full_labels + config.partial_labels]
    return full, partial


def create_demo_project(root: Path, *, config: DemoConfig = DemoConfig(), progress: bool = False) -> Project:
    """Create the demo project in ``root``, or return it as it is when it already has images."""
    root = Path(root)
    if (root / SETTINGS_FILE).exists():
        project = open_project(root)
        with unit_of_work(project.engine) as session:
            if image_count(session) > 0:
                return project
    else:
        project = init_project(root, name="digits demo")
        project.settings.training = DEMO_TRAINING
        project.save_settings()
    with unit_of_work(project.engine) as session:
        apply_taxonomy_spec(session, DEMO_TAXONOMY)

    files = write_digit_pngs(project.root / "images", image_size=config.image_size)
    write_truth_manifest(project, files)
    import_images(project, [project.root / "images"], options=ImportOptions(progress=progress))
    _prelabel(project, files, config)
    return project


def _prelabel(project: Project, files: list[tuple[Path, str]], config: DemoConfig) -> None:
    full, partial = choose_prelabels([digit for _, digit in files], config)
    hashes = {i: hashlib.sha256(files[i][0].read_bytes()).hexdigest() for i in full + partial}
    with unit_of_work(project.engine) as session:
        ids = image_ids_by_sha(session, hashes.values())
        annotator = get_or_create_annotator(session, DEMO_ANNOTATOR)
        for index in full + partial:
            digit = files[index][1]
            main = main_class_of(digit)
            tags = [sub_class_by_name(session, main, digit).id] if index in full else []
            record_annotation(
                session,
                image_id=ids[hashes[index]],
                annotator_id=annotator.id,
                kind=AnnotationKind.LABEL,
                main_class_id=main_class_by_name(session, main).id,
                sub_class_ids=tags,
                source=AnnotationSource.DEMO,
            )
