"""Grid, Review, Train, Explore and Data pages through Streamlit's AppTest, on a real project database."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from db.engine import unit_of_work
from db.queries.annotations import current_labels, record_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.jobs import list_jobs
from db.queries.models import (
    active_model_version,
    register_model_version,
    set_input_embedding,
    write_predictions,
)
from db.queries.taxonomy import list_main_classes
from db.schema import AnnotationKind, Image, JobStatus
from labeller.app.state import Identity
from labeller.app.text import md_text
from labeller.project import Project
from tests.e2e.project_factory import add_active_model, make_app_project

MAIN_APP = str(Path(__file__).resolve().parents[1] / "labeller" / "app" / "main.py")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    project = make_app_project(tmp_path / "project", images=30)
    monkeypatch.setenv("LABELLER_PROJECT", str(project.root))
    return project


def open_page(project: Project, page: str, name: str = "ann") -> AppTest:
    with unit_of_work(project.engine) as session:
        annotator = get_or_create_annotator(session, name)
        identity = Identity(annotator.id, annotator.name)
    app = AppTest.from_file(MAIN_APP, default_timeout=30)
    app.session_state["identity"] = identity
    app.run()
    app.switch_page(f"views/{page}.py").run()
    assert not app.exception, app.exception
    return app


def label(project: Project, annotator: str, image_id: int, main: str) -> None:
    with unit_of_work(project.engine) as session:
        who = get_or_create_annotator(session, annotator)
        main_id = next(m.id for m in list_main_classes(session) if m.name == main)
        record_annotation(
            session, image_id=image_id, annotator_id=who.id, kind=AnnotationKind.LABEL, main_class_id=main_id
        )


def test_every_page_asks_for_a_name_first(project: Project) -> None:
    app = AppTest.from_file(MAIN_APP, default_timeout=30).run()
    for page in ("grid", "review", "train", "explore", "data"):
        app.switch_page(f"views/{page}.py").run()
        assert not app.exception
        assert "Pick or enter your name" in app.info[0].value


def test_grid_selects_a_page_and_labels_it_at_once(project: Project) -> None:
    app = open_page(project, "grid")
    assert len(app.checkbox) >= 24  # the page's tiles (plus the sidebar's toggles)
    next(b for b in app.button if b.label == "Select page").click().run()
    assert len(app.session_state["grid_selected"]) == 24
    with unit_of_work(project.engine) as session:
        curves = next(m.id for m in list_main_classes(session) if m.name == "curves")
    next(box for box in app.selectbox if box.label == "Main class").select(curves)
    app.button(key="FormSubmitter:bulk_label-Apply").click().run()
    with unit_of_work(project.engine) as session:
        stored = list(current_labels(session))
    assert len(stored) == 24 and {s.main_class for s in stored} == {"curves"}
    assert app.session_state["grid_selected"] == set()


def test_review_shows_kappa_disagreements_and_likely_mistakes(project: Project) -> None:
    add_active_model(project)
    for image_id in range(1, 11):
        label(project, "ann", image_id, "loops" if image_id <= 5 else "strokes")
        label(project, "bob", image_id, "loops" if image_id <= 6 else "strokes")
    app = open_page(project, "review")
    frames = [frame.value for frame in app.dataframe]
    agreement = next(f for f in frames if "Cohen's kappa" in f.columns)
    assert agreement["shared images"].tolist() == [10]
    assert agreement["agreement"].tolist() == [pytest.approx(0.9)]
    assert agreement["Cohen's kappa"].tolist() == ["0.80"]
    disagreements = next(f for f in frames if "main classes differ" in f.columns)
    assert disagreements["image"].tolist() == [6]
    # The test model is wrong on about 20% of images with confidence up to 0.99.
    app.slider[0].set_value(0.5).run()
    assert not app.exception


def test_train_queues_a_job_cancels_it_and_promotes_and_rolls_back(project: Project) -> None:
    first = add_active_model(project)
    with unit_of_work(project.engine) as session:
        second = register_model_version(
            session,
            name="second",
            model_kind="m2",
            checkpoint_path="x.pt",
            config={},
            data_snapshot={},
            metrics={"accuracy": 0.9},
            label_count=10,
        ).id
    app = open_page(project, "train")
    app.number_input[0].set_value(3)
    app.button(key="FormSubmitter:retrain-Start retrain").click().run()
    with unit_of_work(project.engine) as session:
        (job,) = list_jobs(session)
        assert (job.kind, job.status, job.params["epochs"]) == ("train", JobStatus.QUEUED, 3)
    assert app.session_state["watched_job"] == job.id
    app.button(key=f"cancel-{job.id}").click().run()
    with unit_of_work(project.engine) as session:
        assert list_jobs(session)[0].status == JobStatus.CANCELLED

    version_box = next(box for box in app.selectbox if box.label == "Version")
    version_box.select(second).run()
    next(b for b in app.button if b.label == "Promote").click().run()
    with unit_of_work(project.engine) as session:
        # Unscored: it stays inactive, and the score job it gets promotes it once its predictions exist.
        assert active_model_version(session).id == first
        score = next(job for job in list_jobs(session) if job.kind == "score")
        assert score.params["model_version_id"] == second and score.params["promote"] is True
        image_id = session.scalar(select(Image.id).limit(1))
        row = {"image_id": image_id, "confidence": 0.9, "entropy": 0.1, "leaf_entropy": 0.1, "margin": 0.2}
        write_predictions(session, second, [{**row, "least_confidence": 0.1}])
    next(b for b in app.button if b.label == "Promote").click().run()
    with unit_of_work(project.engine) as session:
        assert active_model_version(session).id == second
    next(b for b in app.button if b.label == "Roll back").click().run()
    with unit_of_work(project.engine) as session:
        assert active_model_version(session).id == first


def test_explore_without_a_model_explains_what_to_do(project: Project) -> None:
    app = open_page(project, "explore")
    assert "No latent map yet" in app.info[0].value


def test_explore_with_a_model_draws_one_webgl_trace(project: Project) -> None:
    add_active_model(project)
    app = open_page(project, "explore")
    figure = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert [trace["type"] for trace in figure["data"]] == ["scattergl"]
    assert len(figure["data"][0]["x"]) == 30


def _add_input_map(project: Project, name: str = "efficientnet_lite2 features") -> None:
    """Input-map rows for every image, as the embed job writes them."""
    with unit_of_work(project.engine) as session:
        image_ids = list(session.scalars(select(Image.id).order_by(Image.id)))
        set_input_embedding(session, name, image_ids, np.random.default_rng(0).normal(size=(len(image_ids), 2)))


def test_explore_without_a_model_shows_the_input_map(project: Project) -> None:
    _add_input_map(project)
    app = open_page(project, "explore")
    (chart,) = app.get("plotly_chart")
    figure = json.loads(chart.proto.spec)
    assert [trace["type"] for trace in figure["data"]] == ["scattergl"] and len(figure["data"][0]["x"]) == 30
    assert "umap-input" in chart.proto.id  # its own key: a selection on it never lands on a version's map
    assert figure["data"][0]["marker"]["colorbar"]["title"]["text"] == "Human label"
    assert not app.radio and not app.info  # one map only; nothing to explain
    caption = next(c.value for c in app.caption if "Images placed by" in c.value)
    assert caption.startswith("Images placed by their efficientnet_lite2 features; no model yet")


def test_explore_defaults_to_the_versions_map_and_switches_to_the_input_map(project: Project) -> None:
    _add_input_map(project)
    version = add_active_model(project)
    app = open_page(project, "explore")
    (choice,) = app.radio
    assert choice.label == "Map" and choice.options == [f"model version {version}", "image features"]
    assert f"umap-{version}" in app.get("plotly_chart")[0].proto.id
    assert any(c.value.startswith(f"Model version {version} ·") for c in app.caption)
    choice.set_value("input").run()
    assert not app.exception
    assert "umap-input" in app.get("plotly_chart")[0].proto.id
    assert any(
        c.value.startswith("Images placed by their efficientnet_lite2 features; no model involved") for c in app.caption
    )


def test_data_page_edits_the_taxonomy_and_rejects_a_bad_one(project: Project) -> None:
    app = open_page(project, "data")
    editor = app.text_area[0]
    assert 'name = "loops"' in editor.value
    editor.input(editor.value.replace('name = "curves"', 'name = "bends"\nrenamed_from = "curves"')).run()
    next(b for b in app.button if b.label == "Apply taxonomy").click().run()
    assert not app.exception
    with unit_of_work(project.engine) as session:
        assert [m.name for m in list_main_classes(session)] == ["loops", "strokes", "bends"]
    app.text_area[0].input("this is not toml [").run()
    next(b for b in app.button if b.label == "Apply taxonomy").click().run()
    assert app.error and "not valid TOML" in app.error[0].value
    with unit_of_work(project.engine) as session:
        assert [m.name for m in list_main_classes(session)] == ["loops", "strokes", "bends"]


def test_data_page_imports_a_server_folder(project: Project, tmp_path: Path) -> None:
    from tests.e2e.project_factory import write_digit_images

    folder = tmp_path / "incoming"
    write_digit_images(folder, 40)  # the first 30 are the project's own images: duplicates
    project.settings.access.import_roots = [str(tmp_path)]  # the folder box reads only under these
    project.save_settings()
    app = open_page(project, "data")
    app.text_input[0].input(str(folder))
    app.button(key="FormSubmitter:import_folder-Import folder").click().run()
    assert "Added 10 images (30 duplicates" in app.success[0].value
    app.text_input[0].input(str(tmp_path / "missing"))
    app.button(key="FormSubmitter:import_folder-Import folder").click().run()
    assert "is not a folder on the server" in app.error[0].value


@pytest.mark.slow
def test_explore_shows_decoder_reconstructions_of_labelled_examples(project: Project) -> None:
    from core.training import TrainConfig, fit, save_checkpoint
    from labeller.training_data import load_project_pool
    from tests.e2e.project_factory import label_truthfully

    label_truthfully(project, 20)
    data = load_project_pool(project, image_size=32, channels=3)
    trained = fit(data.pool, data.taxonomy, TrainConfig(model="m2", epochs=1, batch_size=16, device="cpu"))
    checkpoint = save_checkpoint(trained, project.models_dir / "tiny.pt")
    add_active_model(project, checkpoint=checkpoint)
    app = open_page(project, "explore")
    images_before = len(app.get("image"))
    app.toggle(key="show_reconstructions").set_value(True).run()
    assert not app.exception, app.exception
    # Ten sub-classes with two labelled examples each: an input and a reconstruction per example.
    assert len(app.get("image")) - images_before == 40
    assert any(md_text("loops/0") in m.value for m in app.markdown)  # a class name, shown as text

    app.toggle(key="show_reconstructions").set_value(False).run()
    app.toggle(key="show_samples").set_value(True).run()
    assert not app.exception, app.exception
    # Eight images drawn from the decoder for each of the ten leaves (one st.image call per leaf).
    samples = [m.value for m in app.markdown if "drawn from p(x | y, z)" in m.value]
    assert len(samples) == 10 and samples[0].startswith(f"**{md_text('loops/0')}**")
    assert len(app.get("image")) - images_before == 10


def test_data_page_offers_the_labels_for_download(project: Project) -> None:
    label(project, "ann", 3, "curves")
    app = open_page(project, "data")
    assert not app.exception
    from labeller.app.services import data
    from labeller.app.services.common import Role

    lines = data.labels_csv(project, role=Role.ADMIN).splitlines()
    assert len(lines) == 2 and lines[1].startswith("3,") and ",curves," in lines[1]
    assert '"main_class": "curves"' in data.labels_jsonl(project, role=Role.ADMIN)
