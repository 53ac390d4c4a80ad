"""What ``export --predictions`` says about its probabilities (issue 19, point 6): ``prediction_in_sample``
is true exactly for the images whose labels the version was fitted on (never an audit image, held out of
training), and ``margin`` is the usual top-two gap p1 - p2 in every format, not the queue's stored score."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select, update

from db.engine import unit_of_work
from db.queries.annotations import current_labels
from db.schema import Image, JobStatus, ModelVersion, Prediction
from labeller.export import MAIN_PROBABILITY_PREFIX, ExportOptions, export_labels
from labeller.project import Project
from tests.export_factory import interchange_project
from tests.worker_helpers import make_project, run_job_here

WITH_PREDICTIONS = ExportOptions(predictions=True, include_unlabelled=True)


@dataclass(frozen=True)
class TrainedProject:
    project: Project
    version_id: int
    audit_id: int  # labelled before training, so held out of it
    labelled: frozenset[int]
    unlabelled: frozenset[int]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedProject]:
    """A real train job (one epoch on 16 px images, one thread: a few seconds) after one labelled image
    was moved into the audit slice."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny fits on a shared machine run faster on one thread
    try:
        project = make_project(tmp_path_factory.mktemp("honesty"), labelled_per_class=6, unlabelled=4)
        with unit_of_work(project.engine) as session:
            labelled = frozenset(label.image_id for label in current_labels(session))
            audit_id = min(labelled)
            session.execute(update(Image).where(Image.id == audit_id).values(audit=True))
            unlabelled = frozenset(session.scalars(select(Image.id))) - labelled
        job = run_job_here(project, "train")
        assert job.status == JobStatus.SUCCEEDED, job.error
        yield TrainedProject(project, job.model_version_id, audit_id, labelled, unlabelled)
    finally:
        torch.set_num_threads(threads)


def csv_rows(project: Project, out: Path, options: ExportOptions = WITH_PREDICTIONS) -> dict[int, dict[str, str]]:
    export_labels(project, "csv", out, options)
    with out.open(newline="") as stream:
        return {int(row["image_id"]): row for row in csv.DictReader(stream)}


def test_only_the_images_the_version_was_fitted_on_are_in_sample(trained: TrainedProject, tmp_path: Path) -> None:
    options = ExportOptions(predictions=True, include_unlabelled=True, model_version_id=trained.version_id)
    rows = csv_rows(trained.project, tmp_path / "p.csv", options)
    in_sample = {image_id: row["prediction_in_sample"] == "True" for image_id, row in rows.items()}
    assert set(in_sample) == trained.labelled | trained.unlabelled
    # The audit label is older than the version (the annotation-id rule called it in-sample), but the fit
    # never saw it: its probabilities are held out.
    assert rows[trained.audit_id]["audit"] == "True" and rows[trained.audit_id]["main_class"]
    assert in_sample[trained.audit_id] is False
    assert all(in_sample[i] for i in trained.labelled - {trained.audit_id})
    assert not any(in_sample[i] for i in trained.unlabelled)
    # ...because the version stores the images it was fitted on (after the audit labels were held out).
    with unit_of_work(trained.project.engine) as session:
        snapshot = session.get(ModelVersion, trained.version_id).data_snapshot
    assert snapshot["trained_image_ids"] == sorted(trained.labelled - {trained.audit_id})


def test_a_version_without_stored_ids_never_calls_an_audit_image_in_sample(tmp_path: Path) -> None:
    """Versions trained before the ids were stored fall back to the annotation-id rule, minus the audit slice."""
    project = interchange_project(tmp_path)
    with unit_of_work(project.engine) as session:
        ids = {Path(path).name: image_id for path, image_id in session.execute(select(Image.path, Image.id))}
        # b1 was labelled before the version's newest annotation (h1's), so the rule alone says in-sample.
        session.execute(update(Image).where(Image.id == ids["b1.png"]).values(audit=True))
        session.execute(update(Image).where(Image.id != ids["b1.png"]).values(audit=False))
    rows = csv_rows(project, tmp_path / "p.csv")
    in_sample = {name: rows[image_id]["prediction_in_sample"] == "True" for name, image_id in ids.items()}
    assert in_sample == {
        "a1.png": True,
        "a2.jpg": True,
        "b1.png": False,  # audit: held out of training
        "h1.png": True,
        "h2.png": False,  # labelled after training
        "u1.png": False,  # unlabelled
    }


def _margin(main: dict[str, float]) -> float:
    top = sorted(main.values(), reverse=True)
    return top[0] - top[1]


def test_the_exported_margin_is_p1_minus_p2_in_every_format(trained: TrainedProject, tmp_path: Path) -> None:
    project = trained.project
    rows = csv_rows(project, tmp_path / "p.csv")
    assert rows
    margins: dict[int, float] = {}
    for image_id, row in rows.items():
        main = {k: float(v) for k, v in row.items() if k.startswith(MAIN_PROBABILITY_PREFIX)}
        margins[image_id] = float(row["margin"])
        assert margins[image_id] == pytest.approx(_margin(main), abs=1e-9), image_id
    # The stored score, what the queue ranks by, is unchanged: 1 - (p1 - p2), from the unrounded
    # probabilities (stored ones keep 4 digits, hence the tolerance).
    with unit_of_work(project.engine) as session:
        query = select(Prediction.image_id, Prediction.margin).where(Prediction.model_version_id == trained.version_id)
        stored: dict[int, float] = {i: m for i, m in session.execute(query)}
    assert {i: pytest.approx(1 - stored[i], abs=2e-4) for i in margins} == margins

    # Every other format that carries the scores writes the same value, beside the same probabilities.
    export_labels(project, "jsonl", tmp_path / "p.jsonl", WITH_PREDICTIONS)
    jsonl = [(r["image_id"], r["prediction"]) for r in map(json.loads, (tmp_path / "p.jsonl").read_text().splitlines())]
    export_labels(project, "coco", tmp_path / "coco.json", WITH_PREDICTIONS)
    coco = [(p["image_id"], p) for p in json.loads((tmp_path / "coco.json").read_text())["predictions"]]
    export_labels(project, "labelstudio", tmp_path / "ls", WITH_PREDICTIONS)
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    labelstudio = [(t["data"]["image_id"], t["data"]["prediction"]) for t in tasks]
    export_labels(project, "fiftyone", tmp_path / "fo", WITH_PREDICTIONS)
    # FiftyOne's predictions are keyed by the exported file, not the image id: compared as a multiset.
    fiftyone = [(None, p) for p in json.loads((tmp_path / "fo" / "predictions.json").read_text())["labels"].values()]
    for name, predictions in (("jsonl", jsonl), ("coco", coco), ("labelstudio", labelstudio), ("fiftyone", fiftyone)):
        assert len(predictions) == len(margins), name
        for image_id, prediction in predictions:
            margin = prediction["scores"]["margin"]
            assert margin == pytest.approx(_margin(prediction["main"]), abs=1e-9), (name, image_id)
            if image_id is not None:
                assert margin == pytest.approx(margins[image_id], abs=1e-9), (name, image_id)
        exported = sorted(prediction["scores"]["margin"] for _, prediction in predictions)
        assert exported == pytest.approx(sorted(margins.values()), abs=1e-9), name
