"""The Train page's sub-class (leaf) confusion matrices and its paired comparison of two versions on the same
held-out labels (issue 13), through AppTest and the services behind it; and ``labeller models compare``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import update

from db.engine import unit_of_work
from db.queries.annotations import record_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.models import held_out_outcomes, register_model_version, write_predictions
from db.queries.taxonomy import list_main_classes
from db.schema import AnnotationKind, Image
from labeller.app.services import train_report
from labeller.app.services.train_report import LabelledPrediction, build_class_report
from labeller.cli import cli
from labeller.jobs.train import AuditResult, audit_comparison, promotion_decision
from labeller.project import Project
from tests.e2e.project_factory import make_app_project
from tests.test_app_pages import open_page

# Images 1-12 are in the audit slice and labelled: (main class, sub-class tags).
LABELS: dict[int, tuple[str, tuple[str, ...]]] = {
    **{i: ("loops", ("0",)) for i in range(1, 7)},
    **{i: ("strokes", ("1",)) for i in range(7, 10)},
    10: ("loops", ()),  # main class only: counts over main classes only
    11: ("loops", ()),
    12: ("curves", ("2", "3")),  # two sub-classes: no single leaf either
}
# Version A's predictions (main class, best sub-class inside it); every other image: loops/0.
A_PREDICTS: dict[int, tuple[str, str]] = {
    **{i: ("loops", "0") for i in range(1, 5)},
    5: ("loops", "6"),
    6: ("strokes", "1"),
    7: ("strokes", "1"),
    8: ("loops", "0"),
    9: ("loops", "0"),
    10: ("loops", "8"),
    11: ("loops", "8"),
    12: ("curves", "2"),
}
# Version B is right on every main class.
B_PREDICTS: dict[int, tuple[str, str]] = {
    **{i: (main, tags[0] if tags else "0") for i, (main, tags) in LABELS.items()},
    12: ("curves", "2"),
}
A_RIGHT = tuple(A_PREDICTS[i][0] == LABELS[i][0] for i in range(1, 13))  # wrong on 6, 8 and 9


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    project = make_app_project(tmp_path / "project", images=30)
    monkeypatch.setenv("LABELLER_PROJECT", str(project.root))
    return project


def _ids(project: Project) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    with unit_of_work(project.engine) as session:
        mains = list_main_classes(session)
        return {m.name: m.id for m in mains}, {(m.name, s.name): s.id for m in mains for s in m.sub_classes}


def _version(project: Project, predicts: dict[int, tuple[str, str]], metrics: dict) -> int:
    mains, subs = _ids(project)
    with unit_of_work(project.engine) as session:
        version = register_model_version(
            session,
            name="v",
            model_kind="m2",
            checkpoint_path="x.pt",
            config={"model": "m2"},
            data_snapshot={"newest_annotation_id": 100},
            metrics=metrics,
            label_count=20,
        )
        rows = []
        for image_id in range(1, 31):
            main, sub = predicts.get(image_id, ("loops", "0"))
            rows.append(
                {
                    "image_id": image_id,
                    "main_class_id": mains[main],
                    "sub_class_id": subs[(main, sub)],
                    "confidence": 0.9,
                    "entropy": 0.3,
                    "leaf_entropy": 0.5,
                    "margin": 0.2,
                    "least_confidence": 0.1,
                }
            )
        write_predictions(session, version.id, rows)
        return version.id


@pytest.fixture
def two_versions(project: Project) -> tuple[int, int]:
    mains, subs = _ids(project)
    with unit_of_work(project.engine) as session:
        session.execute(update(Image).where(Image.id <= 12).values(audit=True))
        who = get_or_create_annotator(session, "ann")
        for image_id, (main, tags) in LABELS.items():
            record_annotation(
                session,
                image_id=image_id,
                annotator_id=who.id,
                kind=AnnotationKind.LABEL,
                main_class_id=mains[main],
                sub_class_ids=[subs[(main, tag)] for tag in tags],
            )
    first = _version(project, A_PREDICTS, {"audit_count": 12, "audit_main_accuracy": 0.75})
    new, active = AuditResult(12, 1.0, 1.0, (True,) * 12), AuditResult(12, 0.75, 0.75, A_RIGHT)
    promoted, reason = promotion_decision("auto", new, active, None, None)
    promotion = {"promoted": promoted, "reason": reason, "compared_with": first}
    promotion.update(audit_comparison(new, active).as_metrics())
    second = _version(project, B_PREDICTS, {"audit_count": 12, "audit_main_accuracy": 1.0, "promotion": promotion})
    return first, second


def test_leaf_matrix_counts_only_labels_that_name_one_leaf() -> None:
    taxonomy = {"loops": ["0", "6"], "strokes": ["1"], "other": []}
    rows = [
        LabelledPrediction("loops", ("0",), "loops", "0", True),
        LabelledPrediction("loops", ("0",), "loops", "6", True),
        LabelledPrediction("loops", ("0",), "other", None, True),
        LabelledPrediction("other", (), "other", None, True),  # no sub-classes: the main class is the leaf
        LabelledPrediction("loops", (), "loops", "0", True),  # partial: main classes only
        LabelledPrediction("loops", ("0", "6"), "loops", "0", False),  # two tags: main classes only
        LabelledPrediction("strokes", ("1",), "strokes", None, False),  # prediction without a sub-class
        LabelledPrediction("strokes", ("1",), None, None, False),  # no prediction: nowhere
    ]
    report = build_class_report(taxonomy, rows)
    assert report.classes == ["loops", "strokes", "other"]
    assert report.leaves == ["loops/0", "loops/6", "strokes/1", "other"]
    assert int(report.held_out.sum()) == 5 and int(report.in_sample.sum()) == 2
    assert report.leaf_held_out.tolist() == [[1, 1, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    assert int(report.leaf_in_sample.sum()) == 0
    assert (report.leaf_skipped_held_out, report.leaf_skipped_in_sample) == (1, 2)
    rows_by_leaf = {r["sub-class"]: r for r in report.accuracy_rows(report.leaves, report.leaf_held_out, "sub-class")}
    assert rows_by_leaf["loops/0"]["labels"] == 3 and rows_by_leaf["loops/0"]["accuracy"] == pytest.approx(1 / 3)
    assert rows_by_leaf["other"]["accuracy"] == 1.0 and rows_by_leaf["loops/6"]["accuracy"] is None
    assert "1 labels with a main class only" in report.leaf_note("Held out", True)
    assert build_class_report({"a": [], "b": []}, rows=[]).leaf_note("Held out", True) is None


def test_class_report_reads_leaves_from_labels_and_predictions(project: Project, two_versions) -> None:
    first, _ = two_versions
    report = train_report.class_report(project.engine, first)
    loops0, loops6, strokes1 = (report.leaves.index(name) for name in ("loops/0", "loops/6", "strokes/1"))
    held = report.leaf_held_out
    assert (held[loops0, loops0], held[loops0, loops6], held[loops0, strokes1]) == (4, 1, 1)
    assert (held[strokes1, strokes1], held[strokes1, loops0]) == (1, 2)
    assert int(held.sum()) == 9 and report.leaf_skipped_held_out == 3  # images 10-12
    assert int(report.held_out.sum()) == 12 and not report.in_sample.sum() and not report.leaf_in_sample.sum()


def test_held_out_outcomes_pair_the_stored_predictions(project: Project, two_versions) -> None:
    first, second = two_versions
    with unit_of_work(project.engine) as session:
        table = held_out_outcomes(session, first, second)
        reverse = held_out_outcomes(session, second, first)
    assert table == {"images": 12, "both_right": 9, "only_a_right": 0, "only_b_right": 3, "neither_right": 0}
    assert (reverse["only_a_right"], reverse["only_b_right"]) == (3, 0)


def test_page_shows_leaf_matrices_and_the_paired_test(project: Project, two_versions) -> None:
    first, second = two_versions
    app = open_page(project, "train")
    assert not app.exception
    decisions = next(f.value for f in app.dataframe if "reason" in f.value.columns)
    row = decisions.set_index("version").loc[second]
    assert row["test"] == "paired McNemar / Newcombe paired"
    assert "paired test on the same images: only the new version right on 3, only the active on 0" in row["reason"]
    assert "McNemar exact p = 0.25" in row["reason"]
    captions = [c.value for c in app.caption]
    (compare,) = [c for c in captions if c.startswith("Same held-out labels:")]
    assert "B is within the noise of A on the same 12 held-out labels" in compare
    assert "only B right on 3, only A on 0, McNemar exact p = 0.25" in compare

    app.selectbox(key="report-version").select(first).run()
    assert not app.exception
    tables = [f.value for f in app.dataframe]
    leaf_accuracy = next(f for f in tables if "sub-class" in f.columns).set_index("sub-class")
    assert leaf_accuracy.loc["loops/0", "labels"] == 6
    assert leaf_accuracy.loc["loops/0", "accuracy"] == pytest.approx(4 / 6)
    assert leaf_accuracy.loc["strokes/1", "accuracy"] == pytest.approx(1 / 3)
    leaf_confusion = next(f for f in tables if "loops/0" in f.columns and list(f.columns) == list(f.index))
    assert leaf_confusion.loc["strokes/1", "loops/0"] == 2 and int(np.asarray(leaf_confusion).sum()) == 9
    main_accuracy = next(f for f in tables if "class" in f.columns).set_index("class")
    assert main_accuracy.loc["loops", "labels"] == 8 and main_accuracy.loc["loops", "accuracy"] == pytest.approx(7 / 8)
    assert any(
        "by sub-class: 9 images" in c and "3 labels with a main class only" in c for c in (c.value for c in app.caption)
    )


def test_models_compare_prints_the_paired_test(project: Project, two_versions) -> None:
    first, second = two_versions
    result = CliRunner().invoke(cli, ["models", str(project.root), "compare", str(first), str(second)])
    assert result.exit_code == 0, result.output
    assert "same held-out labels: B is within the noise of A on the same 12 held-out labels" in result.output
    assert "McNemar exact p = 0.25" in result.output
    assert "paired test on the same images: only the new version right on 3" in result.output  # B's reason


def _snapshot_versions(project: Project) -> tuple[int, int]:
    """Two versions whose data snapshots differ by a 5,000-id trained_image_ids list and a short taxonomy list."""
    ids = []
    with unit_of_work(project.engine) as session:
        for trained, subs in ((list(range(1, 4991)), ["0"]), (list(range(3, 5003)), ["0", "6"])):
            version = register_model_version(
                session,
                name="v",
                model_kind="m2",
                checkpoint_path="x.pt",
                config={"model": "m2"},
                data_snapshot={"newest_annotation_id": 100, "trained_image_ids": trained, "taxonomy": {"loops": subs}},
                metrics={},
                label_count=len(trained),
            )
            ids.append(version.id)
    return ids[0], ids[1]


def test_models_compare_shows_a_list_of_ids_by_its_length(project: Project) -> None:
    first, second = _snapshot_versions(project)
    result = CliRunner().invoke(cli, ["models", str(project.root), "compare", str(first), str(second)])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if "trained_image_ids" in line]
    assert len(row) < 300, row
    assert row.strip() == "trained_image_ids: 4,990 images -> 5,000 images (+12, -2 vs A)"
    assert "taxonomy.loops: ['0'] -> ['0', '6']" in result.output  # a short list stays in full


def test_train_page_comparison_shows_a_list_of_ids_by_its_length(project: Project) -> None:
    first, second = _snapshot_versions(project)
    _, differences = train_report.comparison_rows(train_report.compare_versions(project.engine, first, second))
    rows = {row[""]: row for row in differences}
    row = rows["data_snapshot: trained_image_ids"]
    assert sum(len(str(v)) for v in row.values()) < 300, row
    assert (row["A"], row["B"]) == ("4,990 images", "5,000 images (+12, -2 vs A)")
    assert (rows["data_snapshot: taxonomy.loops"]["A"], rows["data_snapshot: taxonomy.loops"]["B"]) == (
        "['0']",
        "['0', '6']",
    )
    assert train_report.snapshot_list_text("trained_image_ids", [7]) == "1 image"
    assert train_report.snapshot_list_text("labelled_images", 12) is None
    assert train_report.snapshot_list_text("names", [str(i) for i in range(20)]) == "20 items"
