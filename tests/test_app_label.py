"""The Label page without a browser: the decision rules, the card's ops applied exactly once (resends,
reruns, a new server session), undo, the look-ahead window's claims, links and progress; and the page
itself through Streamlit's AppTest with the ops the card would send."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from db.engine import unit_of_work
from db.queries import app_views
from db.queries.annotations import current_labels, recent_annotations
from db.queries.annotators import get_or_create_annotator
from db.queries.queue import claimed_images
from db.schema import AnnotationKind, Image, ModelVersion, Prediction
from labeller.app.label_card import KEY as CARD_KEY
from labeller.app.services import common, label, label_session
from labeller.app.services import data as data_service
from labeller.app.services import grid as grid_service
from labeller.app.services.label_session import DecisionError, LabelSession, parse_card_ops, resolve_decision
from labeller.app.state import Identity
from labeller.project import Project
from tests.e2e.project_factory import DIGIT_TAXONOMY, add_active_model, make_app_project

MAIN_APP = str(Path(__file__).resolve().parents[1] / "labeller" / "app" / "main.py")
LEASE = 600
_ids = itertools.count(1)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    project = make_app_project(tmp_path / "project", images=40)
    monkeypatch.setenv("LABELLER_PROJECT", str(project.root))
    return project


def annotator(project: Project, name: str) -> int:
    with unit_of_work(project.engine) as session:
        return get_or_create_annotator(session, name).id


def taxonomy(project: Project) -> common.TaxonomyView:
    with unit_of_work(project.engine) as session:
        return common.load_taxonomy(session)


def main_id(tax: common.TaxonomyView, name: str) -> int:
    return next(m.id for m in tax.main_classes if m.name == name)


def sub_id(tax: common.TaxonomyView, main: str, sub: str) -> int:
    return next(s.id for m in tax.main_classes if m.name == main for s in m.sub_classes if s.name == sub)


def op(kind: str, image: int, *, after: int = 0, step: int = 1, **extra: Any) -> dict[str, Any]:
    return {"op": f"op-{next(_ids)}", "kind": kind, "image": image, "after": after, "step": step, **extra}


def rows_of(project: Project, annotator_id: int) -> list[tuple[int, str]]:
    with unit_of_work(project.engine) as session:
        views = recent_annotations(session, annotator_id, 1000, include_undos=True)
    return [(v.image_id, str(v.kind)) for v in reversed(views)]


def labels(project: Project) -> dict[int, tuple[str, tuple[str, ...], str]]:
    with unit_of_work(project.engine) as session:
        return {label.image_id: (label.main_class, label.tags, label.annotator) for label in current_labels(session)}


def new_session(project: Project, name: str, strategy: str = "entropy") -> LabelSession:
    session = LabelSession(annotator(project, name), strategy)
    session.refill(project.engine, lease_seconds=LEASE)
    return session


# ----------------------------------------------------------------------------------------- rules


def test_decision_rules(project: Project) -> None:
    tax = taxonomy(project)
    loops, strokes = main_id(tax, "loops"), main_id(tax, "strokes")
    zero, one = sub_id(tax, "loops", "0"), sub_id(tax, "strokes", "1")
    assert resolve_decision(tax, "label", loops, [zero, zero]).sub_class_ids == (zero,)
    with pytest.raises(DecisionError, match="another main class"):
        resolve_decision(tax, "label", loops, [one])
    with pytest.raises(DecisionError, match="needs a main class"):
        resolve_decision(tax, "label", None, [])
    # Unsure with tags alone: a tentative label of their main class; tags of two main classes: refused.
    tentative = resolve_decision(tax, "unsure", None, [one])
    assert (tentative.main_class_id, tentative.sub_class_ids) == (strokes, (one,))
    with pytest.raises(DecisionError, match="one main class"):
        resolve_decision(tax, "unsure", None, [zero, one])
    with pytest.raises(DecisionError, match="carries no class"):
        resolve_decision(tax, "skip", loops, [])
    with pytest.raises(DecisionError, match="no sub-class"):
        resolve_decision(tax, "label", loops, [9999])


def test_malformed_ops_are_dropped_with_a_reason() -> None:
    ops, problems = parse_card_ops(
        {
            "ops": [
                op("label", 3, main=1),
                {"op": "x", "kind": "label", "image": "3; drop table", "step": 1},
                {"op": "y", "kind": "delete", "image": 3, "step": 1},
                op("undo", 3, step=1, target=1),  # an undo must come after the step it withdraws
                op("label", 4, main=1, strategy="not-a-strategy"),
            ]
        }
    )
    assert [o.image_id for o in ops] == [3, 4]
    assert ops[1].strategy is None
    assert len(problems) == 3
    assert parse_card_ops(None) == ([], [])


# ----------------------------------------------------------------------------------------- ops


def test_each_op_applies_once_to_the_image_it_names(project: Project) -> None:
    tax = taxonomy(project)
    session = new_session(project, "ann")
    first, second, third = (item.image_id for item in session.window[:3])
    # The card decided on the second and third images while the server still thinks the first is on top.
    outbox = {
        "epoch": "e1",
        "ops": [
            op("label", second, main=main_id(tax, "strokes")),
            op("skip", third),
        ],
    }
    results = session.receive(project.engine, outbox, tax, lease_seconds=LEASE)
    assert [r.status for r in results] == ["applied", "applied"]
    assert labels(project)[second][0] == "strokes" and first not in labels(project)
    assert session.window[0].image_id == first  # untouched, still first
    # The same outbox again (a rerun before the card saw the answer): nothing new is written.
    again = session.receive(project.engine, outbox, tax, lease_seconds=LEASE)
    assert [r.status for r in again] == ["applied", "applied"]
    assert rows_of(project, session.annotator_id) == [(second, "label"), (third, "skip")]


def test_a_resend_to_a_new_server_session_is_recognised_in_the_history(project: Project) -> None:
    tax = taxonomy(project)
    session = new_session(project, "ann")
    image = session.window[0].image_id
    outbox = {"ops": [op("label", image, main=main_id(tax, "loops")), op("label", session.window[1].image_id)]}
    outbox["ops"][1]["main"] = main_id(tax, "curves")
    session.receive(project.engine, outbox, tax, lease_seconds=LEASE)
    # The server restarted (a fresh session knows no op ids); the browser sends its stored outbox again.
    restarted = LabelSession(session.annotator_id, "entropy")
    results = restarted.receive(project.engine, outbox, tax, lease_seconds=LEASE)
    assert [r.status for r in results] == ["duplicate", "duplicate"]
    assert len(rows_of(project, session.annotator_id)) == 2
    # A different decision at the same place in the history is refused, not applied over the first.
    clash = {"ops": [op("label", image, main=main_id(tax, "strokes"))]}
    assert restarted.receive(project.engine, clash, tax, lease_seconds=LEASE)[0].status == "rejected"
    assert labels(project)[image][0] == "loops"


def test_undo_then_decide_again_on_the_same_image(project: Project) -> None:
    tax = taxonomy(project)
    session = new_session(project, "ann")
    image = session.window[0].image_id
    loops, curves = main_id(tax, "loops"), main_id(tax, "curves")
    ops = [
        op("label", image, main=loops, step=1),
        op("undo", image, step=2, target=1),
        op("label", image, main=curves, step=3),
    ]
    results = session.receive(project.engine, {"ops": ops[:2]}, tax, lease_seconds=LEASE)
    assert [r.status for r in results] == ["applied", "applied"]
    assert image not in labels(project)
    session.refill(project.engine, lease_seconds=LEASE)
    assert session.window[0].image_id == image  # the undo put it back in front, claimed again
    assert image in claimed_images_of(project, session.annotator_id)
    session.receive(project.engine, {"ops": ops}, tax, lease_seconds=LEASE)
    assert labels(project)[image][0] == "curves"
    assert [kind for i, kind in rows_of(project, session.annotator_id) if i == image] == ["label", "undo", "label"]
    # Replayed from the start by a fresh session: all three are found in the history.
    fresh = LabelSession(session.annotator_id, "entropy")
    assert [r.status for r in fresh.receive(project.engine, {"ops": ops}, tax, lease_seconds=LEASE)] == [
        "duplicate"
    ] * 3


def test_undo_with_no_local_history_names_the_annotation(project: Project) -> None:
    tax = taxonomy(project)
    session = new_session(project, "ann")
    image = session.window[0].image_id
    session.receive(project.engine, {"ops": [op("label", image, main=main_id(tax, "loops"))]}, tax, lease_seconds=LEASE)
    annotation = labels_annotation_id(project, image)
    undo = {"ops": [op("undo_annotation", image, step=0, annotation=annotation)]}
    reset_before = session.reset
    assert session.receive(project.engine, undo, tax, lease_seconds=LEASE)[0].status == "applied"
    assert session.reset == reset_before + 1 and session.window[0].image_id == image
    fresh = LabelSession(session.annotator_id, "entropy")
    assert fresh.receive(project.engine, undo, tax, lease_seconds=LEASE)[0].status == "duplicate"
    assert [kind for i, kind in rows_of(project, session.annotator_id) if i == image] == ["label", "undo"]


def labels_annotation_id(project: Project, image: int) -> int:
    with unit_of_work(project.engine) as session:
        return next(label.annotation_id for label in current_labels(session) if label.image_id == image)


def claimed_images_of(project: Project, annotator_id: int) -> list[int]:
    with unit_of_work(project.engine) as session:
        return claimed_images(session, annotator_id)


def test_a_correction_elsewhere_makes_a_late_op_refused_not_misapplied(project: Project) -> None:
    tax = taxonomy(project)
    session = new_session(project, "ann")
    image = session.window[0].image_id
    loops = main_id(tax, "loops")
    session.receive(project.engine, {"ops": [op("label", image, main=loops)]}, tax, lease_seconds=LEASE)
    label.correct_annotation(
        project.engine,
        annotator_id=session.annotator_id,
        image_id=image,
        decision=label.Decision(AnnotationKind.LABEL, main_id(tax, "strokes")),
    )
    late_undo = {"ops": [op("undo", image, step=2, target=1)]}
    result = session.receive(project.engine, late_undo, tax, lease_seconds=LEASE)[0]
    assert result.status == "rejected"
    assert labels(project)[image][0] == "strokes"


# ----------------------------------------------------------------------------------------- window


def test_windows_of_two_annotators_never_share_an_image_and_refill(project: Project) -> None:
    tax = taxonomy(project)
    ann, bob = new_session(project, "ann"), new_session(project, "bob")
    # 40 images left: a window takes at most a quarter of them, so that the look-ahead starves nobody.
    assert len(ann.window) == len(bob.window) == 10 < label_session.WINDOW_SIZE
    assert not {i.image_id for i in ann.window} & {i.image_id for i in bob.window}
    decided = [item.image_id for item in ann.window[:5]]
    ann.receive(
        project.engine,
        {"ops": [op("label", image, main=main_id(tax, "loops")) for image in decided]},
        tax,
        lease_seconds=LEASE,
    )
    ann.refill(project.engine, lease_seconds=LEASE)
    assert len(ann.window) == 10
    assert not set(decided) & {i.image_id for i in ann.window}
    assert not {i.image_id for i in ann.window} & {i.image_id for i in bob.window}
    # A new browser session of the same annotator resumes with the images it holds, in the same order.
    again = new_session(project, "ann")
    assert len(again.window) == 35 // 4  # five fewer images left
    assert [i.image_id for i in again.window] == [i.image_id for i in ann.window][: len(again.window)]
    # Leaving the Label page gives the look-ahead back: the next annotator gets those images first.
    held = {i.image_id for i in again.window}
    again.release_window(project.engine)
    # Only its own: the first session (another tab) keeps the two images past the new one's window.
    assert claimed_images_of(project, again.annotator_id) == [i.image_id for i in ann.window][len(held) :]
    cy = new_session(project, "cy")
    assert held <= {i.image_id for i in cy.window}


def test_leaving_the_label_page_in_one_tab_keeps_the_other_tabs_images(project: Project) -> None:
    first_tab = new_session(project, "ann")
    mine = {item.image_id for item in first_tab.window}
    # The annotator's second tab holds an image the first never had (claimed while the first was away).
    other = next(image for image in range(1, 100) if image not in mine)
    with unit_of_work(project.engine) as session:
        assert app_views.claim_image(session, image_id=other, annotator_id=first_tab.annotator_id, lease_seconds=LEASE)
    first_tab.release_window(project.engine)
    assert claimed_images_of(project, first_tab.annotator_id) == [other]


def test_card_data_sends_each_image_once_per_card_and_the_taxonomy_keys(project: Project) -> None:
    tax = taxonomy(project)
    session = new_session(project, "ann")
    session.receive(project.engine, {"epoch": "card-1", "ops": []}, tax, lease_seconds=LEASE)
    data = session.card_data(project.engine, project, tax, acks=[], hide="plain", storage="k")
    assert all(item["src"].startswith("data:image/") for item in data["items"])
    again = session.card_data(project.engine, project, tax, acks=[], hide="plain", storage="k")
    assert not any("src" in item for item in again["items"])
    session.receive(project.engine, {"epoch": "card-2", "ops": []}, tax, lease_seconds=LEASE)  # a remounted card
    third = session.card_data(project.engine, project, tax, acks=[], hide="plain", storage="k")
    assert all("src" in item for item in third["items"])
    assert set(data["keys"]["mainByKey"]) == {"1", "2", "3"}
    assert [main["name"] for main in data["taxonomy"]] == list(DIGIT_TAXONOMY)


def test_progress_counts_my_labels_and_what_is_left(project: Project) -> None:
    tax = taxonomy(project)
    session = new_session(project, "ann")
    ops = [op("label", item.image_id, main=main_id(tax, "loops")) for item in session.window[:3]]
    ops.append(op("skip", session.window[3].image_id))
    session.receive(project.engine, {"ops": ops}, tax, lease_seconds=LEASE)
    done = label_session.progress(project.engine, annotator_id=session.annotator_id, session_started=session.started)
    assert (done.session, done.today, done.per_hour, done.left) == (3, 3, 3.0, 37)
    assert done.by_main_class["loops"] == 3


def test_a_link_opens_one_image_through_the_page_and_ignores_anything_else(project: Project) -> None:
    app = page_for(project, "ann")
    wanted = first_item(app) + 3
    app.query_params["image"] = str(wanted)
    app.run()
    assert first_item(app) == wanted
    app.query_params["image"] = "../../labeller.toml"
    app.run()
    assert first_item(app) == wanted and not app.exception


# ----------------------------------------------------------------------------------------- the page


def page_for(project: Project, name: str) -> AppTest:
    app = AppTest.from_file(MAIN_APP, default_timeout=30)
    app.session_state["identity"] = Identity(annotator(project, name), name)
    return app.run()


def first_item(app: AppTest) -> int:
    window = app.session_state["label_session"].window
    return window[0].image_id


def send(app: AppTest, ops: list[dict[str, Any]]) -> AppTest:
    """What the card does: put its outbox in its component state, which reruns the page."""
    app.session_state[CARD_KEY] = {"outbox": {"epoch": "apptest", "ops": ops}}
    return app.run()


@pytest.fixture
def page(project: Project) -> Callable[[str], AppTest]:
    return lambda name: page_for(project, name)


def test_the_page_applies_the_cards_ops_and_shows_progress(project: Project, page) -> None:
    app = page("ann")
    assert not app.exception
    tax = taxonomy(project)
    first = first_item(app)
    send(app, [op("label", first, main=main_id(tax, "strokes"), tags=[sub_id(tax, "strokes", "7")])])
    assert not app.exception
    assert labels(project)[first] == ("strokes", ("7",), "ann")
    assert first_item(app) != first
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Labels this session"] == "1" and metrics["Images left to label"] == "39"
    # The Recent list's box corrects a label; a rerun that reports it unchanged writes nothing.
    box = next(b for b in app.selectbox if b.key and b.key.startswith("history-main-"))
    box.select("loops").run()
    assert labels(project)[first][0] == "loops"
    rows = len(rows_of(project, annotator(project, "ann")))
    app.run()
    assert len(rows_of(project, annotator(project, "ann"))) == rows


def test_the_page_hides_images_when_the_project_says_so(project: Project) -> None:
    project.settings.labelling.blur_images = True
    project.save_settings()
    from labeller.app.state import _open_project

    _open_project.clear()
    session = new_session(project, "ann")
    data = session.card_data(project.engine, project, taxonomy(project), acks=[], hide="blurred", storage="k")
    assert data["hide"] == "blurred"
    app = page_for(project, "ann")
    assert app.session_state["blur"] is True and not app.exception


def test_prediction_and_reason_go_to_the_card_with_a_model(project: Project) -> None:
    add_active_model(project)
    session = new_session(project, "ann")
    data = session.card_data(project.engine, project, taxonomy(project), acks=[], hide="plain", storage="k")
    item = data["items"][0]
    assert item["reason"].startswith("1st most uncertain") and item["pred"]["main"] in DIGIT_TAXONOMY
    assert item["score"] is not None and item["mv"] is not None


def _first_items(project: Project, count: int = 2) -> list[dict[str, Any]]:
    session = new_session(project, f"ann-{next(_ids)}")
    return session.card_data(project.engine, project, taxonomy(project), acks=[], hide="plain", storage="k")["items"][
        :count
    ]


def test_the_card_says_where_an_image_stands_in_the_uncertainty_ranking(project: Project) -> None:
    # Issue 19: the card said "Queued by entropy, ranked" for images of entropy 0.000.
    version = add_active_model(project)
    item = _first_items(project, 1)[0]
    with unit_of_work(project.engine) as session:
        entropies = dict(
            session.execute(
                select(Prediction.image_id, Prediction.entropy).where(Prediction.model_version_id == version)
            ).all()
        )
    place = 1 + sum(value > entropies[item["id"]] for value in entropies.values())
    expected = f"most uncertain of {len(entropies)} unlabelled images (entropy, version {version})"
    assert item["reason"] == f"{label_session.ordinal(place)} {expected}"
    assert (
        label_session.ordinal(1) == "1st"
        and label_session.ordinal(12) == "12th"
        and label_session.ordinal(23) == "23rd"
    )


def test_a_coverage_pick_of_the_ranked_queue_says_so(project: Project) -> None:
    version = add_active_model(project)
    with unit_of_work(project.engine) as session:
        ranked = list(
            session.scalars(
                select(Prediction.image_id)
                .where(Prediction.model_version_id == version)
                .order_by(Prediction.entropy.desc(), Prediction.image_id)
            )
        )
        for rank, image_id in enumerate(ranked):
            session.get(Prediction, (version, image_id)).queue_rank = rank
        session.get(ModelVersion, version).metrics = {"queue": {"strategy": "entropy", "coverage_ranks": [1]}}
    first, second = _first_items(project)
    assert (first["id"], second["id"]) == (ranked[0], ranked[1])
    assert first["reason"].startswith("1st most uncertain of 40 unlabelled images")
    assert second["reason"].startswith(f"coverage pick of version {version}'s entropy queue")


def test_percentages_only_from_a_version_calibrated_on_enough_labels(project: Project) -> None:
    add_active_model(project, metrics={"calibration": {"labels": 6, "trusted": False}, "val_ece": 0.2})
    pred = _first_items(project, 1)[0]["pred"]
    assert pred["main"] in DIGIT_TAXONOMY and pred["bars"] == []
    assert "calibrated on 6 held-out labels" in pred["note"]
    tiles, _ = grid_service.grid_page(project.engine, project, mode="uncertain")
    assert tiles and all(tile.confidence == "" for tile in tiles)
    assert "6 held-out labels" in grid_service.confidence_note(project.engine)

    add_active_model(project, metrics={"calibration": {"labels": 40, "trusted": True}, "val_ece": 0.03})
    pred = _first_items(project, 1)[0]["pred"]
    assert pred["bars"] and pred["note"] is None and all(0 <= p <= 1 for _, p in pred["bars"])
    tiles, _ = grid_service.grid_page(project.engine, project, mode="uncertain")
    assert all(tile.confidence.endswith("%") for tile in tiles if tile.row.confidence is not None)
    assert grid_service.confidence_note(project.engine) is None


def test_an_audit_image_shows_no_prediction_and_says_it_is_the_audit_sample(project: Project) -> None:
    add_active_model(project, metrics={"calibration": {"labels": 40, "trusted": True}})
    with unit_of_work(project.engine) as session:
        audit_image = session.scalars(select(Image.id).order_by(Image.id)).first()
        session.get(Image, audit_image).audit = True
    session = new_session(project, "auditor")
    session.put_in_front(audit_image)
    data = session.card_data(project.engine, project, taxonomy(project), acks=[], hide="plain", storage="k")
    item = next(item for item in data["items"] if item["id"] == audit_image)
    assert item["audit"] and item["pred"] is None and item["score"] is None
    assert item["reason"].startswith("audit sample")


def test_no_project_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LABELLER_PROJECT", str(tmp_path / "nowhere"))
    app = AppTest.from_file(MAIN_APP, default_timeout=30).run()
    assert "not a Latent Labeller project" in app.error[0].value


def test_label_ops_on_each_database(tmp_path: Path, database_url: str) -> None:
    """Decide, resend, undo and claims on SQLite and on PostgreSQL."""
    project = make_app_project(tmp_path / "project", images=40, database_url=database_url)
    tax = taxonomy(project)
    ann, bob = new_session(project, "ann"), new_session(project, "bob")
    assert not {i.image_id for i in ann.window} & {i.image_id for i in bob.window}
    image = ann.window[0].image_id
    ops = [op("label", image, main=main_id(tax, "loops")), op("undo", image, step=2, target=1)]
    ann.receive(project.engine, {"ops": ops[:1]}, tax, lease_seconds=LEASE)
    assert labels(project)[image] == ("loops", (), "ann")
    fresh = LabelSession(ann.annotator_id, "entropy")
    assert [r.status for r in fresh.receive(project.engine, {"ops": ops}, tax, lease_seconds=LEASE)] == [
        "duplicate",
        "applied",
    ]
    assert image not in labels(project)
    project.engine.dispose()


def test_break_reminder_after_the_set_minutes(project: Project) -> None:
    import time

    project.settings.labelling.break_reminder_minutes = 30
    project.save_settings()
    from labeller.app.state import _open_project

    _open_project.clear()
    app = page_for(project, "ann")
    assert not app.warning
    app.session_state["break_started"] = time.time() - 31 * 60
    app.run()
    assert "Time for a short break" in app.warning[0].value
    app.button(key="took_break").click().run()
    assert not app.warning
    assert app.session_state["exposures"] == 0


def test_data_page_and_card_show_the_taxonomy_files_keys(project: Project) -> None:
    import tomllib

    text = data_service.taxonomy_toml(project.engine).replace('key = "2"', 'key = "9"')
    data_service.apply_taxonomy_toml(project.engine, text, role=common.Role.ADMIN)
    spec = tomllib.loads(data_service.taxonomy_toml(project.engine))  # what `labeller taxonomy --show` prints
    from_file = {main["name"]: main.get("key") for main in spec["main"]}
    assert from_file["strokes"] == "9"
    app = page_for(project, "ann")
    app.switch_page("views/data.py").run()
    assert not app.exception
    table = next(frame.value for frame in app.dataframe if "source" in frame.value.columns)
    shown = {row["class"]: row["key"] for _, row in table.iterrows() if " / " not in row["class"]}
    assert shown == from_file
    session = new_session(project, "ann")
    data = session.card_data(project.engine, project, taxonomy(project), acks=[], hide="plain", storage="k")
    assert {main["name"]: main["key"] for main in data["taxonomy"]} == from_file
    # The test taxonomy gives its sub-classes no keys: the table says which keys the app assigned.
    assert set(table.loc[table["class"].str.contains(" / "), "source"]) == {"assigned"}
