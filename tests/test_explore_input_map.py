"""The Explore page's input map (the images placed by their pretrained features before any model version):
the service's view of it next to a version's map, on SQLite."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from db.engine import unit_of_work
from db.queries.models import set_input_embedding
from labeller.app.services import common, explore
from labeller.project import Project
from tests.e2e.project_factory import add_active_model, label_truthfully, make_app_project

FEATURES = "efficientnet_lite2 features"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    project = make_app_project(tmp_path / "project", images=12)
    yield project
    project.engine.dispose()


def add_input_map(project: Project, image_ids: list[int], name: str = FEATURES) -> None:
    """Input-map rows as the embed job writes them (``set_input_embedding``)."""
    coords = np.random.default_rng(0).normal(size=(len(image_ids), 2))
    with unit_of_work(project.engine) as session:
        set_input_embedding(session, name, image_ids, coords)


def taxonomy(project: Project) -> common.TaxonomyView:
    with unit_of_work(project.engine) as session:
        return common.load_taxonomy(session)


def test_without_a_model_the_input_map_is_the_only_map_coloured_by_label(project: Project) -> None:
    assert explore.available_maps(project.engine).sources == []
    add_input_map(project, list(range(1, 11)))  # images 11 and 12 are not placed
    label_truthfully(project, 3)
    maps = explore.available_maps(project.engine)
    assert (maps.version_id, maps.version_mapped, maps.input_name) == (None, False, FEATURES)
    assert maps.sources == [explore.INPUT_MAP] and maps.label(explore.INPUT_MAP) == "image features"
    assert explore.embedding_view(project.engine, taxonomy(project), "human", explore.VERSION_MAP) is None

    view = explore.embedding_view(project.engine, taxonomy(project), "human", explore.INPUT_MAP)
    assert view is not None and view.model_version_id is None and view.input_name == FEATURES
    assert view.chart_key == "umap-input"
    assert sorted(view.image_ids) == list(range(1, 11)) and len(view.x) == len(view.y) == 10
    assert view.image_ids[-3:] == [1, 2, 3] and view.labelled == [False] * 7 + [True] * 3  # labelled on top
    assert view.categories == ["loops", "strokes", "curves"]
    assert all(math.isnan(c) for c in view.colour[:7]) and not any(math.isnan(c) for c in view.colour[7:])
    assert view.hover[0] == f"image {view.image_ids[0]}<br>label: -"  # no predictions to show
    assert "predicted" not in view.hover[-1] and view.hover[-1].startswith("image 3<br>label: ")


def test_colouring_the_input_map_by_a_prediction_or_score_gives_none_everywhere(project: Project) -> None:
    add_input_map(project, list(range(1, 13)))
    for colour_by in ("predicted", "predicted_sub", "entropy", "novelty", "disagreement"):
        view = explore.embedding_view(project.engine, taxonomy(project), colour_by, explore.INPUT_MAP)
        assert view is not None and len(view.colour) == 12
        assert all(math.isnan(c) for c in view.colour), colour_by
    with pytest.raises(ValueError, match="unknown map"):
        explore.embedding_view(project.engine, taxonomy(project), "human", "latent")


def test_a_versions_map_is_the_default_and_the_input_map_stays_on_offer(project: Project) -> None:
    add_input_map(project, list(range(1, 13)), "pixels (16x16, 3 channel(s))")
    version = add_active_model(project)
    maps = explore.available_maps(project.engine)
    assert maps.sources == [explore.VERSION_MAP, explore.INPUT_MAP]
    assert maps.label(explore.VERSION_MAP) == f"model version {version}"
    assert maps.label(explore.INPUT_MAP) == "image pixels"
    own = explore.embedding_view(project.engine, taxonomy(project), "predicted", explore.VERSION_MAP)
    assert own is not None and own.model_version_id == version and own.input_name is None
    assert own.chart_key == f"umap-{version}" and "predicted: " in own.hover[0]
    inputs = explore.embedding_view(project.engine, taxonomy(project), "predicted", explore.INPUT_MAP)
    assert inputs is not None and inputs.chart_key == "umap-input" and "predicted" not in inputs.hover[0]


def test_a_version_without_its_map_yet_leaves_the_input_map(project: Project) -> None:
    from db.queries.models import promote_model_version, register_model_version, write_predictions

    add_input_map(project, list(range(1, 13)))
    with unit_of_work(project.engine) as session:
        version = register_model_version(
            session, name="v", model_kind="m2", checkpoint_path="x.pt", config={}, data_snapshot={}, metrics={},
            label_count=0,
        )  # fmt: skip
        row = {"image_id": 1, "confidence": 0.9, "entropy": 0.1, "leaf_entropy": 0.1, "margin": 0.2}
        write_predictions(session, version.id, [{**row, "least_confidence": 0.1}])  # scored, not embedded
        promote_model_version(session, version.id)
    maps = explore.available_maps(project.engine)
    assert (maps.version_id, maps.version_mapped, maps.sources) == (version.id, False, [explore.INPUT_MAP])


def test_hover_text_leaves_out_what_is_missing(project: Project) -> None:
    names = taxonomy(project)
    loops = names.main_classes[0].id
    full = explore.hover_text(names, 4, loops, predicted=loops, confidence=0.5, entropy=0.25)
    assert full == "image 4<br>label: loops<br>predicted: loops (50%)<br>entropy 0.25"
    bare = explore.hover_text(names, 4, None, predicted=loops, confidence=None, entropy=None)
    assert bare == "image 4<br>label: -<br>predicted: loops"
