"""Images with known labels, as the simulated oracle sees them, and the test split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.taxonomy import Taxonomy


@dataclass
class EvaluationData:
    """Images with known labels, as the oracle sees them.

    images: what the models see: uint8 pixels (N, C, H, W) or a backbone's feature vectors (N, D);
    admissible: bool (N, K), each image's true label as a set of leaves (one leaf for an exact label,
    several for a partial one); features: float (N, F) for the scikit-learn baselines and the cold start
    (default: pixels scaled to [0, 1], or the feature vectors scaled to unit length); extra_unlabelled:
    rows like ``images`` with no label that the semi-supervised learners may use as unlabelled data (never
    queried, never tested).
    """

    name: str
    images: np.ndarray
    admissible: np.ndarray
    taxonomy: Taxonomy
    features: np.ndarray | None = None
    extra_unlabelled: np.ndarray | None = None

    def __post_init__(self) -> None:
        pixels = self.images.ndim == 4 and self.images.dtype == np.uint8
        vectors = self.images.ndim == 2 and np.issubdtype(self.images.dtype, np.floating)
        if not (pixels or vectors):
            raise ValueError(
                "images must be uint8 (N, C, H, W) or feature vectors (N, D), "
                f"got {self.images.dtype} {self.images.shape}"
            )
        expected = (len(self.images), self.taxonomy.num_leaves)
        if self.admissible.shape != expected or self.admissible.dtype != bool:
            raise ValueError(f"admissible must be bool {expected}, got {self.admissible.dtype} {self.admissible.shape}")
        if not self.admissible.any(axis=1).all():
            raise ValueError("every image needs a label: found an image that admits no leaf")
        main_sets = self.admissible.astype(np.int64) @ self.taxonomy.leaf_to_main_matrix().astype(np.int64)
        if ((main_sets > 0).sum(axis=1) != 1).any():
            raise ValueError("a label admits leaves of more than one main class")
        if self.features is None:
            if vectors:
                from core.data import unit_rows

                self.features = unit_rows(self.images)
            else:
                self.features = self.images.reshape(len(self.images), -1).astype(np.float32) / 255.0
        if self.extra_unlabelled is not None and self.extra_unlabelled.shape[1:] != self.images.shape[1:]:
            raise ValueError("extra unlabelled images must have the labelled images' shape")

    @property
    def main_labels(self) -> np.ndarray:
        """Main-class index of every image (a label never spans two main classes)."""
        return self.taxonomy.main_of_leaf()[self.admissible.argmax(axis=1)]

    @property
    def leaf_labels(self) -> np.ndarray:
        """Leaf index of every exactly labelled image, -1 for a partial label."""
        exact = self.admissible.sum(axis=1) == 1
        return np.where(exact, self.admissible.argmax(axis=1), -1)


def from_class_labels(
    name: str, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], **kwargs: Any
) -> EvaluationData:
    """Flat classes (no sub-classes): ``labels[i]`` indexes ``class_names``."""
    taxonomy = Taxonomy.from_dict({str(c): [] for c in class_names})
    admissible = np.zeros((len(labels), len(class_names)), dtype=bool)
    admissible[np.arange(len(labels)), labels] = True
    return EvaluationData(name, images, admissible, taxonomy, **kwargs)


def digits_data() -> EvaluationData:
    """scikit-learn's 1,797 8x8 digits: uint8 images for the models, ``pixels / 16`` for the baselines
    exactly as the anchors use them."""
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    return from_class_labels("digits", images, labels, [str(d) for d in range(10)], features=pixels / 16.0)


def folder_data(
    root: Path, *, image_size: int, channels: int = 3, classes: Sequence[str] | None = None
) -> EvaluationData:
    """Images in ``root/<class>/*``: the folder names are the labels."""
    from core.images import load_images

    root = Path(root)
    classes = list(classes) if classes is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.is_file() and not p.name.startswith("."))
        paths += files
        labels += [index] * len(files)
    if not paths:
        raise ValueError(f"no images under {root}/<class>/")
    images = load_images(paths, image_size, channels)
    return from_class_labels(root.name, images, np.array(labels), classes)


def stratified_test_split(data: EvaluationData, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) indices, stratified by main class, in the order scikit-learn returns them."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must lie in (0, 1), got {test_fraction}")
    indices = np.arange(len(data.images))
    pool, test = train_test_split(indices, test_size=test_fraction, random_state=seed, stratify=data.main_labels)
    return np.asarray(pool), np.asarray(test)


def evaluation_split(
    data: EvaluationData, test_fraction: float, seed: int, *, on_validation: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(pool, measured) indices. By default the stratified test split. ``on_validation`` splits the pool
    again, with the same fraction and the next seed, and measures on that validation part: settings are
    chosen there, so the test images never influence the settings that are then reported on them."""
    pool, test = stratified_test_split(data, test_fraction, seed)
    if not on_validation:
        return pool, test
    from sklearn.model_selection import train_test_split

    tune, validation = train_test_split(
        pool, test_size=test_fraction, random_state=seed + 1, stratify=data.main_labels[pool]
    )
    return np.asarray(tune), np.asarray(validation)
