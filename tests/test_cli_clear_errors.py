"""Clear errors instead of tracebacks (issue 12 item 17): a manifest field over csv's 128 KiB limit, a
taxonomy file that is not UTF-8, ``export --out`` naming a folder; conflicting manifest rows for one file are
reported; keys the Label page would replace are refused; a file that changes only keys is applied and said."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner

from db.engine import unit_of_work
from db.queries.annotations import current_labels
from db.queries.taxonomy import taxonomy_spec
from labeller.cli import cli
from labeller.project import open_project
from tests.images import write_image

TAXONOMY = """
[[main]]
name = "ants"
key = "1"
  [[main.sub]]
  name = "red"
  key = "q"
[[main]]
name = "bees"
key = "2"
"""


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        trace = "".join(traceback.format_exception(result.exception))
        raise AssertionError(f"traceback instead of a clear error:\n{trace}")
    return result.exit_code, result.output


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    assert run("init", root)[0] == 0
    (tmp_path / "taxonomy.toml").write_text(TAXONOMY)
    assert run("taxonomy", root, "--file", tmp_path / "taxonomy.toml")[0] == 0
    return root


def test_manifest_field_over_the_csv_limit(project: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "data" / "a.png", 1)
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,class,tags\ndata/a.png,ants," + "x" * (140 * 1024) + "\n")
    code, output = run("import", project, "--manifest", manifest)
    assert code == 1 and "labels.csv" in output and "field larger than field limit" in output


def test_taxonomy_file_that_is_not_utf8(project: Path, tmp_path: Path) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('[[main]]\nname = "caf\xe9"\n'.encode("latin-1"))
    code, output = run("taxonomy", project, "--file", bad)
    assert code == 1 and "not UTF-8" in output and "line 2" in output and "nothing was changed" in output


@pytest.mark.parametrize("export_format", ["csv", "jsonl", "coco"])
def test_export_out_an_existing_folder(project: Path, tmp_path: Path, export_format: str) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    code, output = run("export", project, "--format", export_format, "--out", folder)
    assert code == 1 and "is a folder" in output and f"labels.{export_format}" in output
    assert list(folder.iterdir()) == []


def test_conflicting_manifest_rows_are_reported(project: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "data" / "a.png", 1)
    write_image(tmp_path / "data" / "b.png", 2)
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,class,tags\ndata/a.png,ants,\ndata/a.png,bees,\ndata/b.png,bees,\ndata/b.png,bees,\n")
    code, output = run("import", project, "--manifest", manifest)
    assert code == 0, output
    assert "skipped 2: conflicting labels" in output and "line 2 says ants" in output and "line 3 says bees" in output
    assert "added 2" in output  # both files: a.png without either of its two labels
    with unit_of_work(open_project(project).engine) as session:
        assert [label.main_class for label in current_labels(session)] == ["bees"]


@pytest.mark.parametrize(
    ("key", "why"),
    [("s", "skip key"), ("z", "undo key"), ("?", "one letter or digit"), ("ab", "one letter or digit")],
)
def test_keys_the_label_page_would_replace_are_refused(project: Path, tmp_path: Path, key: str, why: str) -> None:
    changed = tmp_path / "keys.toml"
    changed.write_text(TAXONOMY.replace('key = "q"', f'key = "{key}"'))
    code, output = run("taxonomy", project, "--file", changed)
    assert code == 1 and why in output and "ants/red" in output and "nothing was changed" in output


def test_a_file_that_changes_only_keys_is_applied_and_said(project: Path, tmp_path: Path) -> None:
    changed = tmp_path / "keys.toml"
    changed.write_text(TAXONOMY.replace('key = "q"', 'key = "w"').replace('key = "2"', 'key = "3"'))
    code, output = run("taxonomy", project, "--file", changed)
    assert code == 0 and "no changes" not in output
    assert "sub-class ants/red: key q -> w" in output and "main class 'bees': key 2 -> 3" in output
    with unit_of_work(open_project(project).engine) as session:
        spec = taxonomy_spec(session)
    assert [main.key for main in spec.main_classes] == ["1", "3"]
    assert spec.main_classes[0].sub_classes[0].key == "w"
