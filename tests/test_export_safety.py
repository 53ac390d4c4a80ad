"""Exports that are safe to open and to write: no cell a spreadsheet runs as a formula (OWASP CSV
injection), names read back unchanged by ``labeller import``, and ``--out`` never replacing anything but
a regular file."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from db.engine import unit_of_work
from db.queries.annotations import record_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.taxonomy import (
    MainClassEntry,
    SubClassEntry,
    TaxonomySpec,
    apply_taxonomy_spec,
    main_class_by_name,
    sub_class_by_name,
)
from db.schema import AnnotationKind, Image
from labeller.cli import cli
from labeller.export import (
    FORMULA_STARTS,
    ExportError,
    ExportOptions,
    _place,
    export_labels,
    spreadsheet_cell,
    unescape_cell,
)
from labeller.ingest import ImportOptions, import_images
from labeller.project import Project, init_project
from tests.images import write_image

QUIET = ImportOptions(progress=False)
# Names anyone may type, each of which a spreadsheet would run ("/" is not allowed in class names).
HOSTILE_MAINS = ("=1+2", "@SUM(1)", "+1", "'=already quoted")
HOSTILE_SUBS = ("-1", "=cmd|' -C calc'!A0", "@A1")
HOSTILE_ANNOTATORS = ("=cmd|' /C calc'!A0", '=HYPERLINK("http://127.0.0.1:9/x","click")', "-2+3")
# Escaped too, but not in the round trip: import strips the whitespace around every name in every format.
WHITESPACE_STARTS = ("\tTAB", "\rCR", "\t=1")


def hostile_taxonomy() -> TaxonomySpec:
    return TaxonomySpec(
        (
            MainClassEntry(HOSTILE_MAINS[0], sub_classes=tuple(SubClassEntry(sub) for sub in HOSTILE_SUBS)),
            *(MainClassEntry(name) for name in HOSTILE_MAINS[1:]),
        )
    )


def hostile_project(root: Path) -> Project:
    """One image per (main class, annotator) pair of hostile names; the first class's images carry tags."""
    project = init_project(root / "project")
    with unit_of_work(project.engine) as session:
        apply_taxonomy_spec(session, hostile_taxonomy())
    count = len(HOSTILE_MAINS) * len(HOSTILE_ANNOTATORS)
    for seed in range(count):
        write_image(root / "data" / f"img{seed}.png", seed + 1)
    import_images(project, [root / "data"], options=QUIET)
    with unit_of_work(project.engine) as session:
        ids = sorted(session.scalars(select(Image.id)))
        pairs = [(main, who) for main in HOSTILE_MAINS for who in HOSTILE_ANNOTATORS]
        for index, (image_id, (main, who)) in enumerate(zip(ids, pairs, strict=True)):
            tags = [HOSTILE_SUBS[index % len(HOSTILE_SUBS)]] if main == HOSTILE_MAINS[0] else []
            if main == HOSTILE_MAINS[0] and index % 4 == 3:
                tags = list(HOSTILE_SUBS[:2])  # a cell of joined tags that starts with a formula
            record_annotation(
                session,
                image_id=image_id,
                annotator_id=get_or_create_annotator(session, who).id,
                kind=AnnotationKind.LABEL,
                main_class_id=main_class_by_name(session, main).id,
                sub_class_ids=[sub_class_by_name(session, main, tag).id for tag in tags],
            )
    return project


def labels(project: Project, tmp_path: Path) -> dict[str, tuple[str, tuple[str, ...], str]]:
    out = tmp_path / "check.jsonl"
    export_labels(project, "jsonl", out, ExportOptions())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {r["sha256"]: (r["main_class"], tuple(r["sub_classes"]), r["annotator"]) for r in rows}


def csv_cells(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_escaping_is_exactly_undone() -> None:
    for name in (*HOSTILE_MAINS, *HOSTILE_SUBS, *HOSTILE_ANNOTATORS, *WHITESPACE_STARTS, "''+x", "'a", "a", "", "'"):
        escaped = spreadsheet_cell(name)
        assert not escaped.startswith(FORMULA_STARTS), name
        assert unescape_cell(escaped) == name
    assert spreadsheet_cell("=x") == "'=x" and spreadsheet_cell("'=x") == "''=x" and spreadsheet_cell("ok") == "ok"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return hostile_project(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize(
    ("format", "name", "file"),
    [("csv", "labels.csv", "labels.csv"), ("imagefolder", "folder", "labels.csv"), ("hf", "hf", "metadata.csv")],
)
def test_no_csv_cell_starts_a_formula_and_import_reads_the_names_back(
    project: Project, tmp_path: Path, format: str, name: str, file: str
) -> None:
    out = tmp_path / "export" / name
    export_labels(project, format, out, ExportOptions(include_unlabelled=True))  # type: ignore[arg-type]
    written = out / file if format != "csv" else out
    rows = csv_cells(written)
    assert len(rows) == len(HOSTILE_MAINS) * len(HOSTILE_ANNOTATORS)
    for row in rows:
        for column, cell in row.items():
            assert not cell.startswith(FORMULA_STARTS), (column, cell)
    stored = labels(project, tmp_path / "stored").values()
    assert {row["annotator"] for row in rows} == {spreadsheet_cell(who) for _, _, who in stored}
    assert {row["main_class"] for row in rows} == {spreadsheet_cell(main) for main, _, _ in stored}
    # Relative paths that would start a formula still name the same file.
    for column in ("exported_file", "file_name"):
        for row in rows:
            if column in row:
                assert (out / row[column]).is_file()
    # export -> fresh project -> the same names, tags and annotators.
    fresh = init_project(tmp_path / "fresh")
    with unit_of_work(fresh.engine) as session:
        apply_taxonomy_spec(session, hostile_taxonomy())
    result = CliRunner().invoke(cli, ["import", str(fresh.root), "--manifest", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert labels(fresh, tmp_path / "a") == labels(project, tmp_path / "b")


def test_numbers_are_not_escaped(tmp_path: Path) -> None:
    """Negative numbers are signs, not formulas: numeric columns stay numbers."""
    from labeller.export import spreadsheet_row

    row = spreadsheet_row({"margin": -0.25, "image_id": 3, "audit": False, "leaf": "-1", "path": "-x.png"})
    assert row == {"margin": -0.25, "image_id": 3, "audit": False, "leaf": "'-1", "path": "./-x.png"}


# --- export targets ------------------------------------------------------------------------------------


def export_cli(project: Project, out: Path, format: str = "csv") -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["export", str(project.root), "--format", format, "--out", str(out)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_fifo_as_out_is_refused_and_stays_a_fifo(project: Project, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    code, output = export_cli(project, fifo)
    assert code != 0 and "named pipe (FIFO)" in output and "nothing written" in output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert leftovers(tmp_path) == ["pipe.csv"]  # no temporary file left either


@pytest.mark.parametrize("format", ["csv", "jsonl", "coco"])
def test_a_symlink_as_out_is_refused_and_its_target_unchanged(project: Project, tmp_path: Path, format: str) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    target.chmod(0o644)
    link = tmp_path / "labels.out"
    link.symlink_to(target)
    code, output = export_cli(project, link, format)
    assert code != 0 and "symbolic link" in output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "keep me\n" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert leftovers(tmp_path) == ["labels.out", "precious.txt"]


@pytest.mark.parametrize("format", ["imagefolder", "hf", "labelstudio", "fiftyone"])
def test_a_symlink_to_a_folder_as_out_is_refused(project: Project, tmp_path: Path, format: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "export"
    link.symlink_to(elsewhere, target_is_directory=True)
    code, output = export_cli(project, link, format)
    assert code != 0 and "symbolic link" in output
    assert link.is_symlink() and leftovers(elsewhere) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_node_as_out_is_refused_and_stays_a_device(project: Project, tmp_path: Path) -> None:
    device = tmp_path / "null"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    code, output = export_cli(project, device)
    assert code != 0 and "character device" in output
    info = os.lstat(device)
    assert stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(1, 3)


def test_a_regular_file_as_out_is_still_replaced(project: Project, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    out.write_text("old\n")
    assert export_cli(project, out)[0] == 0
    assert out.read_text().startswith("image_id,") and not out.is_symlink()


def test_files_are_never_placed_through_a_symlink_inside_the_folder(tmp_path: Path) -> None:
    """A link planted inside the export folder while it is written (a folder or a file name the export is
    about to use) is refused, never followed; what it points to stays as it was."""
    source = tmp_path / "image.png"
    source.write_bytes(b"image bytes")
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "ants").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ExportError, match="symbolic link"):
        _place(source, out, Path("ants") / "image.png", link=False)
    assert leftovers(elsewhere) == []
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"keep me")
    (out / "bees").mkdir()
    (out / "bees" / "image.png").symlink_to(precious)
    for link in (True, False):
        with pytest.raises(ExportError, match="symbolic link"):
            _place(source, out, Path("bees") / "image.png", link=link)
    assert precious.read_bytes() == b"keep me"
    # A name already taken by a regular file (a hard link to another image) is replaced, not written into.
    other = tmp_path / "other.png"
    other.write_bytes(b"other image")
    (out / "bees" / "copy.png").hardlink_to(other)
    assert _place(source, out, Path("bees") / "copy.png", link=True) == "copied"
    assert other.read_bytes() == b"other image" and (out / "bees" / "copy.png").read_bytes() == b"image bytes"
