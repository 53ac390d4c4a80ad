"""Import throughput: the hymenoptera photos (397 JPEGs, ants and bees) into a fresh SQLite project.

Each run imports the whole folder into a new temporary project (hash, full decode, EXIF-aware thumbnail,
row insert, ImageFolder pre-labels), then imports it again (every file a duplicate: hash and lookup only).
The median of 3 runs is reported.

    python -m benchmarks.run_all --only import_speed [--quick]
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from labeller.ingest import ImportOptions, ImportReport, import_images
from labeller.project import Project, init_project

DATA = Path(os.environ.get("LABELLER_HYMENOPTERA", Path(__file__).resolve().parents[2] / "shared/data/hymenoptera"))
RUNS = 3
QUICK_IMAGES = 60


def _subset(source: Path, limit: int, target: Path) -> Path:
    """The first ``limit`` photos, linked into a smaller ImageFolder (quick mode)."""
    for count, path in enumerate(sorted(source.rglob("*.jpg"))):
        if count >= limit:
            break
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path, destination)
    return target


VARIANTS = (
    ("fresh project, no labels (hash, decode, thumbnail, insert)", False, False),
    ("fresh project, --labels-from-folders (also one pre-label per image)", True, False),
    ("same files again (all duplicates: hash and lookup only)", False, True),
)


def _timed(project: Project, roots: list[Path], options: ImportOptions) -> tuple[ImportReport, float]:
    """The report and the CPU seconds it took: on a shared machine, CPU time is the steadier number."""
    started = time.process_time()
    report = import_images(project, roots, options=options)
    return report, time.process_time() - started


def _one_run(data_roots: list[Path], workdir: Path) -> list[tuple[ImportReport, float]]:
    """One report per variant; the re-import runs on the unlabelled variant's project."""
    plain = init_project(workdir / "plain")
    labelled = init_project(workdir / "labelled")
    quiet = ImportOptions(progress=False)
    with_labels = ImportOptions(labels_from_folders=True, create_classes=True, progress=False)
    reports = [
        _timed(plain, data_roots, quiet),
        _timed(labelled, data_roots, with_labels),
        _timed(plain, data_roots, quiet),
    ]
    plain.engine.dispose()
    labelled.engine.dispose()
    return reports


def main(out_dir: Path, quick: bool) -> dict[str, Any]:
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found: the import benchmark needs the hymenoptera photos")
    load_average = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="import_speed_") as tmp:
        tmp_path = Path(tmp)
        roots = [DATA / "train", DATA / "val"]
        if quick:
            roots = [_subset(DATA / "train", QUICK_IMAGES, tmp_path / "subset")]
        runs = [_one_run(roots, tmp_path / f"run{i}") for i in range(RUNS)]

    rows = []
    seconds: dict[str, list[float]] = {}
    for index, (name, _, _) in enumerate(VARIANTS):
        reports = [run[index][0] for run in runs]
        median = statistics.median(report.seconds for report in reports)
        cpu = statistics.median(run[index][1] for run in runs)
        images = reports[0].added + reports[0].duplicates
        seconds[name] = [report.seconds for report in reports]
        rows.append(
            {
                "import": name,
                "images": images,
                "added": reports[0].added,
                "pre_labelled": reports[0].labelled,
                "skipped": len(reports[0].skipped),
                "median_s": median,
                "images_per_s": images / median,
                "cpu_s": cpu,
                "images_per_cpu_s": images / cpu,
            }
        )
    result = {
        "name": "import_speed",
        "quick": quick,
        "note": (
            "`labeller import` of the hymenoptera photos (train + val) into a fresh SQLite project, "
            f"median of {RUNS} runs; JPEG thumbnails, 256 px. Wall time depends on what else runs on the machine; "
            "CPU seconds (this process) do much less."
        ),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
        "load_average_at_start": load_average,
        "runs_seconds": seconds,
        "rows": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "import_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
