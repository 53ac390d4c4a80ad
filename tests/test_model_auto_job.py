"""A train job with model = "auto", run in this process as a worker runs it: it compares the candidates by
cross-validation on its labels, trains the kind it chose, and says why in its log, the version's metrics
and ``labeller status``."""

from __future__ import annotations

import pytest

from core.registry import AUTO_MODEL_CANDIDATES
from db.engine import reading, unit_of_work
from db.queries import jobs as job_queries
from db.queries import models as model_queries
from db.queries.status import project_status
from db.schema import JobStatus
from labeller.commands.status import format_status
from labeller.commands.train import follow_job
from tests.worker_helpers import make_project, run_job_here


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny fits on a shared 2-core machine run several times faster on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_train_job_with_model_auto_records_its_choice_and_why(tmp_path, capsys) -> None:
    project = make_project(tmp_path, labelled_per_class=10, unlabelled=8)
    project.settings.training.model = "auto"
    project.save_settings()
    job = run_job_here(project, "train")
    assert job.status == JobStatus.SUCCEEDED, job.error
    with unit_of_work(project.engine) as session:
        version = model_queries.get_model_version(session, job.model_version_id)
        selection = version.metrics["model_selection"]
        events = job_queries.job_events(session, job.id)
        logs = [e.payload.get("message", "") for e in events if e.kind == "log"]
        folds = [e.payload for e in events if e.payload.get("stage") == "choosing the model"]
    assert selection["compared"] and (selection["labels"], selection["folds"]) == (20, 5)
    assert version.model_kind == version.config["model"] == selection["chosen"] in AUTO_MODEL_CANDIDATES
    assert [c["model"] for c in selection["candidates"]] == ["m2", "supervised"]  # the default first
    assert all(len(c["folds"]) == 5 for c in selection["candidates"])
    assert f"model: auto chose {selection['chosen']} ({selection['reason']})" in logs
    assert selection["reason"].startswith("5-fold cross-validation on 20 labels, main-class accuracy: m2 ")
    assert [(f["candidate"], f["fold"]) for f in folds][:2] == [("m2", 1), ("m2", 2)] and len(folds) == 10
    with reading(project.engine) as session:
        shown = format_status(project.settings.name, project_status(session))
    assert f"    model auto: {selection['reason']}" in shown
    follow_job(project, job.id)  # what labeller train --wait prints
    followed = capsys.readouterr().out
    assert f"[job {job.id}] model auto: m2, fold 1/5" in followed and f"[job {job.id}] model: auto chose" in followed


def test_too_few_labels_keep_the_default_kind_and_say_so(tmp_path) -> None:
    project = make_project(tmp_path, labelled_per_class=4, unlabelled=4)
    job = run_job_here(project, "train", {"model": "auto"})
    assert job.status == JobStatus.SUCCEEDED, job.error
    with unit_of_work(project.engine) as session:
        version = model_queries.get_model_version(session, job.model_version_id)
    selection = version.metrics["model_selection"]
    assert version.model_kind == "m2" and not selection["compared"] and selection["candidates"] == []
    assert selection["reason"] == "too few labels to compare (8 labels; auto compares from 20): the default m2"
