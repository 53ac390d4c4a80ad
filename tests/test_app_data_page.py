"""The Data page's import: the image count includes what was just imported, and skipped files are listed
with their whole reason, in correct English."""

from __future__ import annotations

from pathlib import Path

import pytest

from labeller.app.text import md_text
from labeller.project import Project
from tests.e2e.project_factory import make_app_project, write_digit_images
from tests.test_app_pages import open_page

IMPORT = "FormSubmitter:import_folder-Import folder"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    project = make_app_project(tmp_path / "project", images=10)
    monkeypatch.setenv("LABELLER_PROJECT", str(project.root))
    return project


def test_import_refreshes_the_count_and_lists_each_skipped_file_in_full(project: Project, tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    write_digit_images(folder, 14)  # the first 10 are the project's own: 4 new images
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    project.settings.access.import_roots = [str(tmp_path)]
    project.save_settings()
    app = open_page(project, "data")
    assert next(m for m in app.metric if m.label == "Images in the project").value == "10"
    app.text_input[0].input(str(folder))
    app.button(key=IMPORT).click().run()
    assert not app.exception
    assert "Added 4 images" in app.success[0].value
    assert next(m for m in app.metric if m.label == "Images in the project").value == "14"
    assert [e.label for e in app.expander if "skipped" in e.label] == ["1 file skipped"]
    reasons = app.table[0].value
    # Under the import root, not where it is on the server; as text (st.table renders Markdown).
    assert list(reasons.index) == [md_text("incoming/broken.png")]
    assert len(reasons["reason"].iloc[0]) > 0
