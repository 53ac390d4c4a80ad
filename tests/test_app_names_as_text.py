"""Names anyone may type are shown as text: a class, a tag, an annotator or a project named like a Markdown
image or link never becomes one (every annotator's browser would fetch its URL)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

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
from labeller.app.state import Identity
from labeller.app.text import md_text
from labeller.project import Project
from tests.e2e.project_factory import DIGIT_TAXONOMY, make_app_project

MAIN_APP = str(Path(__file__).resolve().parents[1] / "labeller" / "app" / "main.py")
ANNOTATOR = "![b](http://127.0.0.1:9/x.png)"
PROJECT = "[p](http://127.0.0.1:9/p) **bold** :red[red]"
# Class names cannot hold "/": a relative URL is still fetched from the app's own host.
CLASS = "![c](x.png)"
TAG = "![t](t.png) <img src=x>"
ESCAPED = re.compile(r"\\[!-/:-@\[-`{-~]")
LINK_OR_IMAGE = re.compile(r"!?\[[^\]]*\]\(|<img|https?://")


def rendered_markup(markdown: str) -> list[str]:
    """The Markdown images, links and raw tags in ``markdown``, once its backslash escapes are taken out."""
    return LINK_OR_IMAGE.findall(ESCAPED.sub("", markdown))


def as_text(markdown: str) -> str:
    return ESCAPED.sub(lambda match: match.group()[1], markdown)


def test_md_text_escapes_everything_markdown_could_render() -> None:
    for name in (ANNOTATOR, PROJECT, CLASS, TAG, "# heading", "1. list", "`code`", "$x$", "a\nb", "plain"):
        shown = md_text(name)
        assert rendered_markup(shown) == []
        assert as_text(shown).replace("  \n", "\n") == name
    assert md_text("plain name 2") == "plain name 2"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    project = make_app_project(tmp_path / "project", images=12)
    project.settings.name = PROJECT
    project.save_settings()
    spec = TaxonomySpec(
        (
            *(
                MainClassEntry(name=main, sub_classes=tuple(SubClassEntry(sub) for sub in subs))
                for main, subs in DIGIT_TAXONOMY.items()
            ),
            MainClassEntry(name=CLASS, sub_classes=(SubClassEntry(TAG), SubClassEntry("other"))),
        )
    )
    with unit_of_work(project.engine) as session:
        apply_taxonomy_spec(session, spec)
        image_id = session.scalars(select(Image.id).order_by(Image.id)).first()
        record_annotation(
            session,
            image_id=image_id,
            annotator_id=get_or_create_annotator(session, ANNOTATOR).id,
            kind=AnnotationKind.LABEL,
            main_class_id=main_class_by_name(session, CLASS).id,
            sub_class_ids=[sub_class_by_name(session, CLASS, TAG).id],
        )
    monkeypatch.setenv("LABELLER_PROJECT", str(project.root))
    return project


def markdown_of(app: AppTest) -> list[str]:
    """What every Markdown-rendering element of the page (sidebar included) was given."""
    kinds = ("markdown", "caption", "title", "header", "subheader", "error", "info", "success", "warning", "toast")
    bodies = [str(element.value) for kind in kinds for element in getattr(app, kind)]
    labels = [str(widget.label) for kind in ("checkbox", "toggle", "button", "radio") for widget in getattr(app, kind)]
    return bodies + labels


def test_the_label_page_and_sidebar_show_names_as_text(project: Project) -> None:
    with unit_of_work(project.engine) as session:
        who = get_or_create_annotator(session, ANNOTATOR)
        identity = Identity(who.id, who.name)
    app = AppTest.from_file(MAIN_APP, default_timeout=30)
    app.session_state["identity"] = identity
    app.run()
    assert not app.exception, app.exception
    shown = markdown_of(app)
    assert [(body, markup) for body in shown if (markup := rendered_markup(body))] == []
    text = "\n".join(as_text(body) for body in shown)
    # Each name is on the page, as the text it is: the sidebar's project and annotator, the caption's class
    # and the Recent list's tag.
    for name in (PROJECT, ANNOTATOR, CLASS, TAG):
        assert name in text, name
    assert any(ANNOTATOR in as_text(element.value) for element in app.sidebar.markdown)
    assert any(CLASS in as_text(element.value) for element in app.caption)
