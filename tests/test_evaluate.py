"""The label-efficiency harness: the anchors' protocol reproduced, active rounds that hit each budget,
an end-to-end run with a real model on a digits subset, and `labeller evaluate` on a generated project."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from core.evaluate import (
    SCHEMA,
    EvaluationConfig,
    EvaluationResult,
    balanced_draw,
    digits_data,
    evaluate,
    evaluation_split,
    from_class_labels,
    stratified_test_split,
)
from labeller.cli import cli
from tests.project_factory import labelled_project


def test_balanced_draw_takes_budget_over_classes_from_each() -> None:
    labels = np.repeat(np.arange(4), 25)
    picked = balanced_draw(labels, 22, 4, np.random.default_rng(0))
    assert len(picked) == len(set(picked.tolist())) == 22
    counts = np.bincount(labels[picked], minlength=4)
    assert counts.min() >= 5 and counts.sum() == 22


def test_random_label_spreading_reproduces_the_anchor_protocol() -> None:
    """Same split, same draws, same estimator as ../shared/anchors/digits.py, computed here directly."""
    from sklearn.model_selection import train_test_split
    from sklearn.semi_supervised import LabelSpreading

    data = digits_data()
    features, labels = data.features, data.main_labels
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.3, random_state=0, stratify=labels
    )
    expected = []
    for seed in range(2):
        rng = np.random.default_rng(seed)
        index = np.concatenate([rng.choice(np.where(y_train == c)[0], 2, replace=False) for c in range(10)])
        partial = -np.ones_like(y_train)
        partial[index] = y_train[index]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LabelSpreading(kernel="knn", n_neighbors=7, max_iter=100).fit(x_train, partial)
            expected.append(model.score(x_test, y_test))

    config = EvaluationConfig(budgets=(20,), strategies=("random",), models=(), seeds=2)
    result = evaluate(data, config)
    assert [run.main_accuracy for run in result.runs] == pytest.approx(expected, abs=1e-12)
    pool, test = stratified_test_split(data, 0.3, 0)
    assert len(pool) == len(x_train) and len(test) == len(x_test)


def test_active_rounds_stop_exactly_at_every_budget() -> None:
    data = digits_data()
    config = EvaluationConfig(
        budgets=(12, 20, 31), strategies=("entropy", "margin"), models=(), baselines=("label_spreading",), seeds=1
    )
    result = evaluate(data, config)
    for strategy in ("entropy", "margin"):
        runs = [run for run in result.runs if run.strategy == strategy]
        assert [run.budget for run in runs] == [12, 20, 31] and [run.labels for run in runs] == [12, 20, 31]
    # Baselines have no BALD column: a clear skip, not a crash.
    skipped = evaluate(data, EvaluationConfig(budgets=(10,), strategies=("bald",), models=(), seeds=1)).skipped
    assert skipped and "bald" in skipped[0]["reason"]


def test_end_to_end_on_a_digits_subset_with_a_real_model(tmp_path: Path) -> None:
    full = digits_data()
    subset = np.random.default_rng(0).choice(len(full.images), 300, replace=False)
    data = from_class_labels("digits-300", full.images[subset], full.main_labels[subset], [str(d) for d in range(10)])
    config = EvaluationConfig(
        budgets=(30,),
        strategies=("random", "entropy"),
        models=("m2",),
        baselines=("label_spreading",),
        seeds=1,
        initial_labels=20,
        round_size=10,
        train={"epochs": 20, "device": "cpu", "batch_size": 64},
    )
    messages: list[str] = []
    result = evaluate(data, config, on_event=messages.append)
    assert {(run.model, run.strategy) for run in result.runs} == {
        ("m2", "random"),
        ("m2", "entropy"),
        ("label_spreading", "random"),
        ("label_spreading", "entropy"),
    }
    for run in result.runs:
        assert 0.0 <= run.main_accuracy <= 1.0 and run.budget == 30
    # Label spreading on 30 labels is far above chance (10%); the tiny m2 run must at least beat chance.
    spreading = [run for run in result.runs if run.model == "label_spreading"]
    assert min(run.main_accuracy for run in spreading) > 0.5
    assert min(run.main_accuracy for run in result.runs if run.model == "m2") > 0.15
    assert len(messages) == 4

    paths = result.write(tmp_path / "out" / "digits.json", plotlyjs="cdn")
    written = json.loads(paths["json"].read_text())
    assert written["schema"] == SCHEMA
    assert written["dataset"]["num_test"] == 90 and written["dataset"]["num_pool"] == 210
    assert written["config"]["train"]["epochs"] == 20
    row = next(r for r in written["summary"] if r["model"] == "m2" and r["strategy"] == "entropy")
    assert row["seeds"] == 1 and row["main_accuracy_std"] is None  # one seed: no std to report
    assert "| m2 | entropy | 30 |" in paths["markdown"].read_text()
    assert "plotly" in paths["figure"].read_text()[:5000].lower()


def test_bad_configurations_are_clear_errors() -> None:
    data = digits_data()
    with pytest.raises(ValueError, match="unknown strategies"):
        evaluate(data, EvaluationConfig(strategies=("psychic",)))
    with pytest.raises(ValueError, match="increasing"):
        evaluate(data, EvaluationConfig(budgets=(50, 20)))
    with pytest.raises(ValueError, match=r"every budget .* exceeds"):
        evaluate(data, EvaluationConfig(budgets=(5_000,), models=()))


def test_cli_evaluates_a_generated_project(tmp_path: Path) -> None:
    project = labelled_project(tmp_path, per_class=15, size=16)
    out = tmp_path / "results" / "eval.json"
    arguments = [
        "evaluate",
        str(project.root),
        "--budgets",
        "6,10",
        "--strategies",
        "random,least_confidence",
        "--models",
        "supervised",
        "--seeds",
        "2",
        "--initial",
        "4",
        "--round-size",
        "3",
        "--initial-selection",
        "diverse",
        "--diversify",
        "--exploration",
        "0.4",
        "--epochs",
        "2",
        "--image-size",
        "16",
        "--device",
        "cpu",
        "--json",
        str(out),
    ]
    result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["dataset"]["taxonomy"] == {"bright": [], "dark": []}
    assert written["dataset"]["num_test"] == 9 and written["dataset"]["num_pool"] == 21
    combos = {(row["model"], row["strategy"], row["budget"]) for row in written["summary"]}
    assert combos == {
        (model, strategy, budget)
        for model in ("supervised", "label_spreading", "logistic_regression")
        for strategy in ("random", "least_confidence")
        for budget in (6, 10)
    }
    assert all(row["seeds"] == 2 for row in written["summary"])
    assert out.with_suffix(".md").is_file() and out.with_suffix(".html").is_file()
    assert written["config"]["initial_selection"] == "diverse" and written["config"]["diversify"] is True
    assert written["config"]["exploration"] == 0.4 and written["config"]["coverage"] == "typical"
    assert written["config"]["warm_start"] is False  # every active round retrains unless --warm-epochs
    # Two well-separated classes: label spreading on pixels gets them right.
    spreading = [row for row in written["summary"] if row["model"] == "label_spreading"]
    assert min(row["main_accuracy_mean"] for row in spreading) >= 0.8

    bad = CliRunner().invoke(cli, [*arguments[:3], "0,-5", *arguments[4:]])
    assert bad.exit_code != 0 and "budgets" in bad.output
    warm = CliRunner().invoke(cli, [*arguments, "--warm-epochs", "1", "--seeds", "1"], catch_exceptions=False)
    assert warm.exit_code == 0, warm.output
    config = json.loads(out.read_text())["config"]
    assert config["warm_start"] is True and config["warm_epochs"] == 1


def test_diverse_cold_start_and_parallel_parts_merge_into_one_result() -> None:
    data = digits_data()
    base = EvaluationConfig(budgets=(10, 15), strategies=("entropy",), models=(), seeds=2, initial_selection="diverse")
    whole = evaluate(data, base)
    # Seeds run as separate parts (as the benchmark's processes do) merge into the same numbers.
    parts = [evaluate(data, dataclasses.replace(base, seeds=1, first_seed=seed)) for seed in (0, 1)]
    merged = EvaluationResult.merge(parts, whole.config)
    assert merged.summary() == whole.summary()
    assert EvaluationResult.from_dict(json.loads(json.dumps(merged.to_dict()))).summary() == whole.summary()
    # A k-centre start covers more digit classes than 10 uniform draws usually do.
    pool, _ = stratified_test_split(data, 0.3, 0)
    from core.acquisition import cold_start

    start = cold_start(np.arange(len(pool)), 10, rng=np.random.default_rng(0), features=data.features[pool])
    assert len(set(data.main_labels[pool][start].tolist())) >= 7
    with pytest.raises(ValueError, match="initial_selection"):
        evaluate(data, dataclasses.replace(base, initial_selection="psychic"))
    with pytest.raises(ValueError, match="different datasets"):
        other = from_class_labels("other", data.images[:50], data.main_labels[:50], [str(d) for d in range(10)])
        EvaluationResult.merge([whole, evaluate(other, EvaluationConfig(budgets=(10,), models=(), seeds=1))])


def test_typical_start_labels_the_typical_image_of_each_cluster_and_covers_the_digits() -> None:
    data = digits_data()
    config = EvaluationConfig(budgets=(10,), strategies=("entropy",), models=(), seeds=3, initial_selection="typical")
    result = evaluate(data, config)
    covered = [run.classes_labelled for run in result.runs]
    # 10 typical images of 10 k-means clusters of the pixels: the clusters are nearly the digits.
    assert min(covered) >= 8, covered
    uniform = evaluate(data, dataclasses.replace(config, initial_selection="random"))
    assert np.mean(covered) > np.mean([run.classes_labelled for run in uniform.runs])


def test_cli_runs_seeds_in_parallel_processes_and_merges_them(tmp_path: Path) -> None:
    project = labelled_project(tmp_path, per_class=10, size=16)
    out = tmp_path / "parallel.json"
    arguments = ["evaluate", str(project.root), "--budgets", "4", "--strategies", "random", "--models", "supervised"]
    arguments += ["--baselines", "", "--seeds", "2", "--workers", "2", "--epochs", "1", "--device", "cpu"]
    result = CliRunner().invoke(cli, [*arguments, "--on-validation", "--json", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "[2/2 seeds]" in result.output
    written = json.loads(out.read_text())
    # 20 images: 6 held out for test and never seen; the 14 left split into 9 to label and 5 to measure on.
    assert written["dataset"]["measured_on"] == "validation" and written["config"]["on_validation"] is True
    assert (written["dataset"]["num_pool"], written["dataset"]["num_test"]) == (9, 5)
    assert out.with_suffix(".md").read_text().startswith("Validation accuracy")
    assert sorted(run["seed"] for run in written["runs"]) == [0, 1]
    assert written["config"]["seeds"] == 2 and written["summary"][0]["seeds"] == 2


def test_the_validation_split_is_drawn_from_the_pool_and_never_touches_the_test_split() -> None:
    data = digits_data()
    pool, test = stratified_test_split(data, 0.3, seed=0)
    tune, validation = evaluation_split(data, 0.3, 0, on_validation=True)
    assert set(tune) | set(validation) == set(pool) and not set(validation) & set(tune)
    assert not (set(tune) | set(validation)) & set(test)
    shares = np.bincount(data.main_labels[validation], minlength=10) / len(validation)
    np.testing.assert_allclose(shares, np.bincount(data.main_labels[pool], minlength=10) / len(pool), atol=0.01)
    assert [a.tolist() for a in evaluation_split(data, 0.3, 0)] == [pool.tolist(), test.tolist()]
