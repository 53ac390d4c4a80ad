"""``labeller models list``: every column has a header, and the rows line up under it."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from db.engine import unit_of_work
from db.queries.models import promote_model_version, register_model_version
from labeller.cli import cli
from labeller.commands.models import HEADLINE_METRICS
from labeller.project import init_project


def test_models_list_has_a_header_for_every_column(tmp_path: Path) -> None:
    project = init_project(tmp_path / "project", name="models")
    with unit_of_work(project.engine) as session:
        version = register_model_version(
            session, name="v1", model_kind="m2", checkpoint_path="v1.pt", config={}, data_snapshot={},
            metrics={"val_main_accuracy": 0.91}, label_count=30,
        )  # fmt: skip
        promote_model_version(session, version.id)
    result = CliRunner().invoke(cli, ["models", str(project.root), "list"])
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()[:2]
    assert header.split() == ["id", "kind", "labels", *HEADLINE_METRICS, "created", "(UTC)"]
    # "created (UTC)" heads the date and the time: a row splits into as many words as the header.
    assert row.startswith("*")
    assert len(row[1:].split()) == len(header.split())
