"""Exports: CSV, JSON lines and ImageFolder contents, with tags and provenance."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from db.engine import unit_of_work
from db.queries.annotations import record_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.taxonomy import apply_taxonomy_spec, main_class_by_name, sub_class_by_name
from db.schema import AnnotationKind, AnnotationSource, Image, ModelVersion
from labeller.export import ExportError, export_labels, iter_export_rows
from labeller.ingest import ImportOptions, import_images
from labeller.project import Project, init_project
from labeller.taxonomy_file import parse_taxonomy_toml
from tests.images import ANTS_AND_BEES as TAXONOMY
from tests.images import write_image


@pytest.fixture
def project(tmp_path: Path, engine) -> Project:
    """Five images: three pre-labelled from folders, one labelled by a person through a model's queue,
    one unlabelled."""
    project = init_project(tmp_path / "project", database_url=engine.url.render_as_string(hide_password=False))
    with unit_of_work(project.engine) as session:
        apply_taxonomy_spec(session, parse_taxonomy_toml(TAXONOMY))
    data = tmp_path / "data"
    write_image(data / "labelled" / "ants" / "red" / "a1.png", 1)
    write_image(data / "labelled" / "ants" / "a2.jpg", 2)
    write_image(data / "labelled" / "bees" / "b1.png", 3)
    write_image(data / "loose" / "h1.png", 4)
    write_image(data / "loose" / "u1.png", 5)
    import_images(project, [data / "labelled"], options=ImportOptions(labels_from_folders=True, progress=False))
    import_images(project, [data / "loose"], options=ImportOptions(progress=False))
    with unit_of_work(project.engine) as session:
        version = ModelVersion(name="m2-v1", model_kind="m2", checkpoint_path="models/v1.pt")
        session.add(version)
        session.flush()
        alice = get_or_create_annotator(session, "alice")
        h1 = session.scalar(select(Image.id).where(Image.path.like("%h1.png")))
        record_annotation(
            session,
            image_id=h1,
            annotator_id=alice.id,
            kind=AnnotationKind.LABEL,
            main_class_id=main_class_by_name(session, "ants").id,
            sub_class_ids=[
                sub_class_by_name(session, "ants", "red").id,
                sub_class_by_name(session, "ants", "black").id,
            ],
            model_version_id=version.id,
            strategy="entropy",
            source=AnnotationSource.SCORE,  # served by entropy's score order
        )
    return project


EXPECTED = {
    "a1.png": ("ants", ("red",), "import", None, None),
    "a2.jpg": ("ants", (), "import", None, None),
    "b1.png": ("bees", (), "import", None, None),
    "h1.png": ("ants", ("red", "black"), "alice", "m2-v1", "entropy"),
}


def test_rows_carry_labels_and_provenance(project: Project) -> None:
    rows = list(iter_export_rows(project, chunk_size=2))
    got = {Path(r.path).name: (r.main_class, r.sub_classes, r.annotator, r.model_version, r.strategy) for r in rows}
    assert got == EXPECTED
    assert [r.image_id for r in rows] == sorted(r.image_id for r in rows)
    assert all(Path(r.path).is_file() and len(r.sha256) == 64 and r.labelled_at.endswith("Z") for r in rows)


def test_csv(project: Project, tmp_path: Path) -> None:
    out = tmp_path / "out" / "labels.csv"
    summary = export_labels(project, "csv", out)
    assert summary.rows == 4
    with out.open(newline="") as stream:
        records = list(csv.DictReader(stream))
    by_name = {Path(r["path"]).name: r for r in records}
    assert set(by_name) == set(EXPECTED)
    assert by_name["h1.png"]["sub_classes"] == "red;black"
    assert by_name["h1.png"]["model_version"] == "m2-v1"
    assert by_name["h1.png"]["strategy"] == "entropy"
    assert by_name["h1.png"]["source"] == "score"
    assert by_name["a1.png"]["annotator"] == "import"
    assert by_name["a1.png"]["source"] == "import"
    assert not list(out.parent.glob("*.tmp"))


def test_jsonl(project: Project, tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    export_labels(project, "jsonl", out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    by_name = {Path(r["path"]).name: r for r in records}
    assert by_name["h1.png"]["sub_classes"] == ["red", "black"]
    assert by_name["h1.png"]["model_version_id"] is not None
    assert by_name["b1.png"]["sub_classes"] == []
    assert by_name["b1.png"]["model_version_id"] is None


def test_imagefolder(project: Project, tmp_path: Path) -> None:
    out = tmp_path / "folder"
    summary = export_labels(project, "imagefolder", out)
    assert (summary.rows, summary.linked, summary.copied, summary.missing) == (4, 4, 0, [])
    files = sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())
    assert len(files) == 5  # four images and labels.csv
    assert "labels.csv" in files
    folders = sorted(str(Path(f).parent) for f in files if f != "labels.csv")
    # One tag: main/sub/. No tag or several tags (a partial label): main/.
    assert folders == ["ants", "ants", "ants/red", "bees"]
    with (out / "labels.csv").open(newline="") as stream:
        records = {Path(r["path"]).name: r for r in csv.DictReader(stream)}
    exported = out / records["a1.png"]["exported_file"]
    assert exported.parent == out / "ants" / "red"
    source = out / records["a1.png"]["path"]  # relative to the export folder by default
    assert os.stat(exported).st_ino == os.stat(source).st_ino  # hard link, no copy

    with pytest.raises(ExportError, match="not an empty folder"):
        export_labels(project, "imagefolder", out)


def test_imagefolder_copy_and_missing_files(project: Project, tmp_path: Path) -> None:
    rows = list(iter_export_rows(project))
    Path(rows[0].path).unlink()
    summary = export_labels(project, "imagefolder", tmp_path / "copied", link=False)
    # Rows count exported images: the missing file is listed, not exported.
    assert (summary.rows, summary.copied, summary.missing) == (3, 3, [rows[0].path])


def _bulk_labelled_project(root: Path, count: int, database_url: str | None = None) -> Project:
    """``count`` labelled image rows written in bulk (no files: the CSV export reads only the database)."""
    from sqlalchemy import insert

    from db.queries.images import random_key_from_sha
    from db.schema import Annotation

    project = init_project(root, database_url=database_url)
    with unit_of_work(project.engine) as session:
        apply_taxonomy_spec(session, parse_taxonomy_toml(TAXONOMY))
        ants = main_class_by_name(session, "ants").id
        annotator = get_or_create_annotator(session, "bulk").id
        shas = [f"{i:064x}" for i in range(count)]
        session.execute(
            insert(Image),
            [
                {
                    "sha256": sha,
                    "path": f"/data/{i}.png",
                    "width": 8,
                    "height": 8,
                    "format": "PNG",
                    "file_size": 1,
                    "random_key": random_key_from_sha(sha),
                    "audit": False,
                }
                for i, sha in enumerate(shas)
            ],
        )
        ids = dict(session.execute(select(Image.sha256, Image.id)).all())
        session.execute(
            insert(Annotation),
            [
                {
                    "image_id": ids[sha],
                    "annotator_id": annotator,
                    "kind": AnnotationKind.LABEL,
                    "main_class_id": ants,
                    "superseded": False,
                    "source": "bulk",
                }
                for sha in shas
            ],
        )
    return project


def test_export_memory_does_not_grow_with_the_number_of_rows(tmp_path: Path) -> None:
    import tracemalloc

    peaks = {}
    for count in (4_000, 16_000):
        project = _bulk_labelled_project(tmp_path / f"p{count}", count)
        tracemalloc.start()
        summary = export_labels(project, "csv", tmp_path / f"{count}.csv")
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert summary.rows == count
        project.engine.dispose()
    # Four times the rows (both past the first fetch buffers), the same peak: rows are streamed, never all held.
    assert peaks[16_000] < 1.3 * peaks[4_000], peaks


def test_streamed_export_past_several_fetch_batches(tmp_path: Path, engine) -> None:
    """More rows than one fetch (2,000) of the label stream, on each dialect: the per-chunk image lookups
    run while the streaming cursor (server-side on PostgreSQL) is still open."""
    url = engine.url.render_as_string(hide_password=False)
    project = _bulk_labelled_project(tmp_path / "p", 4_500, database_url=url)
    summary = export_labels(project, "jsonl", tmp_path / "all.jsonl")
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    assert summary.rows == len(lines) == 4_500
    assert len({json.loads(line)["sha256"] for line in lines}) == 4_500
