"""Ids typed by users (a URL's ``?image=``, a command-line argument) never crash anything: anything but
a positive integer that fits an id column is ignored (app) or a usage error (CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from db.schema import MAX_ID
from labeller.app.services import common, label
from labeller.cli import cli
from labeller.project import init_project


@pytest.mark.parametrize(
    "value", ["²", "٣", "①", "-1", "0", "1e3", " ", "", None, "../etc/passwd", str(2**63), str(2**64 + 5), "9" * 500]
)
def test_image_ids_from_urls_that_are_not_usable_ids_are_ignored(value: object) -> None:
    assert common.parse_image_id(value) is None


@pytest.mark.parametrize(("value", "expected"), [("1", 1), (" 42 ", 42), (str(MAX_ID), MAX_ID)])
def test_image_ids_from_urls(value: str, expected: int) -> None:
    assert common.parse_image_id(value) == expected


def test_the_largest_id_is_looked_up_without_an_overflow(tmp_path: Path) -> None:
    project = init_project(tmp_path / "p")
    who = label.claim_requested(project.engine, annotator_id=1, image_id=MAX_ID, strategy="entropy", lease_seconds=60)
    assert who is None


@pytest.mark.parametrize(
    "arguments",
    [
        ["jobs", "{p}", "cancel", "²"],
        ["jobs", "{p}", "cancel", str(2**63)],
        ["jobs", "{p}", "cancel", "0"],
        ["models", "{p}", "promote", str(2**64)],
        ["models", "{p}", "promote", "-3"],
        ["models", "{p}", "compare", "1", str(2**63)],
    ],
)
def test_bad_ids_on_the_command_line_are_usage_errors(tmp_path: Path, arguments: list[str]) -> None:
    project = init_project(tmp_path / "p")
    result = CliRunner().invoke(cli, [a.format(p=project.root) for a in arguments])
    assert result.exit_code == 2, result.output  # click's usage error, not a traceback (exit code 1)
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), result.exception


def test_an_unknown_id_that_fits_is_a_clean_error(tmp_path: Path) -> None:
    project = init_project(tmp_path / "p")
    for arguments in (
        ["jobs", str(project.root), "cancel", str(MAX_ID)],
        ["models", str(project.root), "promote", "7"],
    ):
        result = CliRunner().invoke(cli, arguments)
        assert result.exit_code == 1 and "Error:" in result.output, result.output
        assert isinstance(result.exception, SystemExit), result.exception
