"""A small real project for acquisition/evaluation tests: PNG files on disk, imported with labels from
their folder names (two visually distinct classes, so a few epochs separate them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from labeller.ingest import ImportOptions, import_images
from labeller.project import Project, init_project


def write_class_images(folder: Path, *, per_class: int = 20, size: int = 16, seed: int = 0) -> dict[str, list[Path]]:
    """``folder/dark/*.png`` (dim noise with a bright vertical bar) and ``folder/bright/*.png`` (bright
    noise with a dark horizontal bar)."""
    generator = np.random.default_rng(seed)
    written: dict[str, list[Path]] = {}
    for name, base, bar_value, vertical in (("dark", 40, 230, True), ("bright", 210, 20, False)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        written[name] = []
        for index in range(per_class):
            pixels = np.clip(generator.normal(base, 25, size=(size, size, 3)), 0, 255).astype(np.uint8)
            offset = int(generator.integers(2, size - 4))
            if vertical:
                pixels[:, offset : offset + 3] = bar_value
            else:
                pixels[offset : offset + 3, :] = bar_value
            path = folder / name / f"{name}-{index:03d}.png"
            Image.fromarray(pixels).save(path)
            written[name].append(path)
    return written


def labelled_project(root: Path, *, per_class: int = 20, size: int = 16) -> Project:
    """A project whose images all carry their folder's class as a label (imported pre-labels)."""
    project = init_project(root / "project")
    write_class_images(root / "photos", per_class=per_class, size=size)
    import_images(
        project,
        [root / "photos"],
        options=ImportOptions(labels_from_folders=True, create_classes=True, progress=False),
    )
    return project
