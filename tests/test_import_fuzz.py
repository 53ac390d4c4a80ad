"""Bounded fuzzing of the importer: any file names (any bytes but '/' and NUL) and any content, and any
manifest text. Every file given is imported, counted as a duplicate or reported; nothing raises except
the importer's own IngestError for an unusable manifest."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labeller.ingest import ImportOptions, IngestError, import_images
from labeller.project import Project, init_project
from tests.images import write_image

QUIET = ImportOptions(progress=False)
BOUNDED = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def project() -> Iterator[Project]:
    with tempfile.TemporaryDirectory() as folder:
        yield init_project(Path(folder) / "project")


@pytest.fixture(scope="module")
def png() -> Iterator[bytes]:
    with tempfile.TemporaryDirectory() as folder:
        yield write_image(Path(folder) / "x.png", seed=0).read_bytes()


names = (
    st.binary(min_size=1, max_size=40)
    .filter(lambda name: b"/" not in name and b"\0" not in name)
    .filter(lambda name: name not in (b".", b".."))
)
suffixes = st.sampled_from([b"", b".png", b".jpg", b".PNG", b".txt", b".tiff"])
contents = st.one_of(st.just("png"), st.binary(max_size=300), st.just("truncated"), st.just("empty"), st.just("fifo"))


@BOUNDED
@given(files=st.lists(st.tuples(names, suffixes, contents), min_size=1, max_size=8, unique_by=lambda f: f[0] + f[1]))
def test_every_file_is_imported_or_reported(project: Project, png: bytes, files: list) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = os.fsencode(folder)
        for name, suffix, content in files:
            path = root + b"/" + name + suffix
            if content == "fifo":
                os.mkfifo(path)
                continue
            data = {"png": png, "truncated": png[: len(png) // 2], "empty": b""}.get(content, content)
            with open(path, "wb") as stream:
                stream.write(data)
        report = import_images(project, [Path(folder)], options=QUIET)
    assert report.added + report.duplicates + len(report.skipped) == len(files)
    for skipped in report.skipped:
        (skipped.path + skipped.reason).encode("utf-8")  # printable by the CLI and the app


@BOUNDED
@given(text=st.text(max_size=400), name=st.sampled_from(["m.csv", "m.jsonl", "m.json", "m.txt"]))
def test_any_manifest_text_is_imported_or_refused_cleanly(project: Project, text: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / name
        manifest.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            import_images(project, manifest=manifest, options=QUIET)
        except IngestError as error:
            str(error).encode("utf-8", "backslashreplace")


@BOUNDED
@given(data=st.binary(max_size=400))
def test_any_manifest_bytes_are_imported_or_refused_cleanly(project: Project, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "m.csv"
        manifest.write_bytes(data)
        with contextlib.suppress(IngestError):
            import_images(project, manifest=manifest, options=QUIET)
