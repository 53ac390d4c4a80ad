"""``labeller evaluate`` refuses what ``labeller train`` refuses, and budgets that cannot give active rows
(issue 12 item 18)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from db.engine import unit_of_work
from db.queries.taxonomy import MainClassEntry, TaxonomySpec, apply_taxonomy_spec
from labeller.cli import cli
from labeller.ingest import ImportOptions, import_images
from labeller.project import Project, init_project
from tests.project_factory import labelled_project, write_class_images

FAST = ["--models", "supervised", "--seeds", "1", "--epochs", "1", "--image-size", "16", "--device", "cpu"]


def _evaluate(project: Project, *arguments: str) -> tuple[int, str]:
    out = project.root / "eval" / "eval.json"
    result = CliRunner().invoke(cli, ["evaluate", str(project.root), *arguments, *FAST, "--json", str(out)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def _one_class_labelled(tmp_path: Path, *, second_class: bool) -> Project:
    project = init_project(tmp_path / "project")
    write_class_images(tmp_path / "photos", per_class=12, size=16)
    (tmp_path / "photos" / "bright").rename(tmp_path / "bright")
    options = ImportOptions(labels_from_folders=True, create_classes=True, progress=False)
    import_images(project, [tmp_path / "photos"], options=options)  # every one labelled "dark"
    if second_class:
        with unit_of_work(project.engine) as session:
            apply_taxonomy_spec(session, TaxonomySpec((MainClassEntry("dark"), MainClassEntry("bright"))))
    import_images(project, [tmp_path / "bright"], options=ImportOptions(progress=False))  # unlabelled
    return project


@pytest.mark.parametrize("second_class", [True, False])
def test_labels_of_one_main_class_are_refused(tmp_path: Path, second_class: bool) -> None:
    project = _one_class_labelled(tmp_path, second_class=second_class)
    code, output = _evaluate(project, "--budgets", "6", "--initial", "4", "--strategies", "random")
    assert code == 1, output
    assert "'dark'" in output and ("one main class" in output)
    assert "nothing to tell apart" in output or "at least one other main class" in output


def test_budgets_below_initial_are_refused(tmp_path: Path) -> None:
    project = labelled_project(tmp_path, per_class=6, size=16)
    code, output = _evaluate(project, "--budgets", "5,8", "--initial", "6", "--strategies", "random,entropy")
    assert code == 2 and "budget(s) 5 below --initial 6" in output
    # Random only has a row at every budget: allowed.
    code, output = _evaluate(project, "--budgets", "5,8", "--initial", "6", "--strategies", "random")
    assert code == 0, output
