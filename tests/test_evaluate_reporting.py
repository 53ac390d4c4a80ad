"""`labeller evaluate` does not overstate (issue 19 point 5): no std from one seed, budgets the pool cannot
give are skipped rather than aborting the run, the points one test image is worth are named, active rounds
are the app queue's round, and small feature models train on one torch thread."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from core.evaluate import (
    EvaluationConfig,
    EvaluationData,
    EvaluationResult,
    digits_data,
    evaluate,
    from_class_labels,
)
from core.evaluate.learners import TrainedModelLearner, torch_threads, training_threads
from core.registry import DEFAULT_ROUND_SIZE, DIVERSITY_FACTOR
from labeller.cli import cli
from tests.project_factory import labelled_project

SPREADING = {"models": (), "baselines": ("label_spreading",)}


def _digits_subset(size: int) -> EvaluationData:
    full = digits_data()
    rows = np.random.default_rng(0).choice(len(full.images), size, replace=False)
    return from_class_labels(
        f"digits-{size}", full.images[rows], full.main_labels[rows], [str(d) for d in range(10)],
        features=full.features[rows],
    )  # fmt: skip


def test_one_seed_reports_no_std_and_two_seeds_do(tmp_path: Path) -> None:
    data = digits_data()
    config = EvaluationConfig(budgets=(20,), strategies=("random",), seeds=1, **SPREADING)
    one = evaluate(data, config)
    row = one.summary()[0]
    assert row["seeds"] == 1 and row["main_accuracy_std"] is None and row["macro_f1_std"] is None
    table = one.markdown()
    assert "± n/a" in table and "± 0.0" not in table and "one seed, so no std (n/a)" in table
    written = json.loads(json.dumps(one.to_dict()))
    assert written["summary"][0]["main_accuracy_std"] is None  # null in the JSON, not 0.0
    figure = one.figure()
    assert "one seed, so no std (n/a)" in figure.layout.title.text
    assert figure.data[0].error_y.visible is False and "± n/a over 1 seed(s)" in figure.data[0].text[0]
    html = one.write(tmp_path / "one.json", plotlyjs="cdn")["figure"].read_text()
    assert "one seed, so no std (n\\u002fa)" in html  # plotly writes "/" as \u002f in the page's JSON

    two = evaluate(data, dataclasses.replace(config, seeds=2))
    row = two.summary()[0]
    assert row["seeds"] == 2 and row["main_accuracy_std"] is not None
    assert "n/a" not in two.markdown() and "mean ± std over seeds." in two.markdown()
    # Merged one-seed parts give the two-seed numbers, std included.
    parts = [evaluate(data, dataclasses.replace(config, first_seed=seed)) for seed in (0, 1)]
    assert EvaluationResult.merge(parts, two.config).summary() == two.summary()


def test_a_budget_above_the_pool_is_skipped_and_the_others_run() -> None:
    data = digits_data()  # a pool of 1,257 images
    config = EvaluationConfig(budgets=(12, 20, 5_000), strategies=("random", "entropy"), seeds=1, **SPREADING)
    messages: list[str] = []
    result = evaluate(data, config, on_event=messages.append)
    assert sorted({run.budget for run in result.runs}) == [12, 20]
    assert {(run.strategy, run.budget) for run in result.runs} == {
        (strategy, budget) for strategy in ("random", "entropy") for budget in (12, 20)
    }
    assert result.skipped == [{"budget": 5_000, "reason": "more than the 1257 labelled images in the pool"}]
    assert messages[0] == "skipped budget 5000: more than the 1257 labelled images in the pool"
    assert "Skipped budget 5000: more than the 1257 labelled images in the pool" in result.markdown()
    assert list(result.config["budgets"]) == [12, 20, 5_000]  # what was asked, with the skip beside it
    # Parts run separately (one per seed) list the skip once when merged.
    parts = [evaluate(data, dataclasses.replace(config, first_seed=seed)) for seed in (0, 1)]
    assert EvaluationResult.merge(parts).skipped == result.skipped
    # Only when no budget fits is it an error.
    with pytest.raises(ValueError, match=r"every budget \(5000, 6000\) exceeds the 1257 labelled images"):
        evaluate(data, dataclasses.replace(config, budgets=(5_000, 6_000)))


def test_the_summary_and_figure_name_the_points_one_test_image_is_worth(tmp_path: Path) -> None:
    data = _digits_subset(60)  # a 30% test split: 18 images
    result = evaluate(data, EvaluationConfig(budgets=(20,), strategies=("random",), seeds=2, **SPREADING))
    assert result.dataset["num_test"] == 18
    assert result.image_points() == "1 test image = 5.6 points (18 test images)"
    assert "1 test image = 5.6 points (18 test images)." in result.markdown()
    paths = result.write(tmp_path / "small.json", plotlyjs="cdn")
    assert "1 test image = 5.6 points (18 test images)" in paths["markdown"].read_text()
    assert "1 test image = 5.6 points (18 test images)" in paths["figure"].read_text()
    on_validation = evaluate(
        data, EvaluationConfig(budgets=(10,), strategies=("random",), on_validation=True, seeds=1, **SPREADING)
    )
    assert on_validation.image_points().startswith("1 validation image = ")


def _cli_project(tmp_path: Path, round_size: int) -> tuple[list[str], Path]:
    """A 20-image project (pool 14, test 6) whose labelling.round_size is ``round_size``, and the arguments
    of a quick baselines-only evaluation of it."""
    project = labelled_project(tmp_path, per_class=10, size=16)
    assert project.settings.labelling.round_size == DEFAULT_ROUND_SIZE
    project.settings.labelling.round_size = round_size
    project.save_settings()
    out = tmp_path / "eval.json"
    arguments = ["evaluate", str(project.root), "--strategies", "random,entropy", "--models", "", "--seeds", "1"]
    return [*arguments, "--baselines", "label_spreading", "--initial", "4", "--json", str(out)], out


def test_cli_round_size_defaults_to_the_project_setting(tmp_path: Path) -> None:
    arguments, out = _cli_project(tmp_path, round_size=3)
    result = CliRunner().invoke(cli, [*arguments, "--budgets", "6,10"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = json.loads(out.read_text())["config"]
    assert config["round_size"] == 3 and config["diversity_factor"] == DIVERSITY_FACTOR
    explicit = CliRunner().invoke(cli, [*arguments, "--budgets", "6", "--round-size", "2"], catch_exceptions=False)
    assert explicit.exit_code == 0, explicit.output
    assert json.loads(out.read_text())["config"]["round_size"] == 2
    shown = CliRunner().invoke(cli, ["evaluate", "--help"], terminal_width=200)
    assert "Default: the project's labelling.round_size" in " ".join(shown.output.split())


def test_cli_skips_budgets_above_the_pool_and_names_the_points_per_test_image(tmp_path: Path) -> None:
    arguments, out = _cli_project(tmp_path, round_size=3)
    result = CliRunner().invoke(cli, [*arguments, "--budgets", "6,10,50"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert sorted({row["budget"] for row in written["summary"]}) == [6, 10]
    assert written["skipped"] == [{"budget": 50, "reason": "more than the 14 labelled images in the pool"}]
    assert "skipped budget 50: more than the 14 labelled images in the pool" in result.output
    assert "Skipped budget 50" in result.output  # again under the table
    assert "1 test image = 16.7 points (6 test images)" in result.output
    assert "1 test image = 16.7 points (6 test images)" in out.with_suffix(".md").read_text()
    assert "± n/a" in result.output and "± 0.0" not in result.output

    none_fit = CliRunner().invoke(cli, [*arguments, "--budgets", "50,60"])
    assert none_fit.exit_code == 1 and isinstance(none_fit.exception, SystemExit), none_fit.output
    assert "Error: every budget (50, 60) exceeds the 14 labelled images in the pool" in none_fit.output
    assert "Traceback" not in none_fit.output


def test_feature_models_train_on_one_thread_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import core.training

    config = EvaluationConfig(models=("m2",))
    assert training_threads(config, (1280,)) == 1 and training_threads(config, (1, 8, 8)) == 1
    assert training_threads(config, (3, 64, 64)) is None  # photo-sized CNNs: torch's own setting
    assert training_threads(dataclasses.replace(config, threads=2), (1280,)) == 2
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before

    features = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    data = from_class_labels("features", features, np.arange(40) % 2, ["a", "b"])
    seen: list[int] = []

    def record_threads(*args: object, **kwargs: object) -> None:
        seen.append(torch.get_num_threads())

    monkeypatch.setattr(core.training, "fit", record_threads)
    train = {"backbone": "efficientnet_lite2", "device": "cpu"}
    learner = TrainedModelLearner(
        "m2", data, np.arange(30), dataclasses.replace(config, train=train), 0, needs_bald=False
    )
    learner.fit(np.arange(6), warm=False)
    asked = dataclasses.replace(config, train=train, threads=2)
    TrainedModelLearner("m2", data, np.arange(30), asked, 0, needs_bald=False).fit(np.arange(6), warm=False)
    assert seen == [1, 2] and torch.get_num_threads() == before


def test_the_product_trains_small_models_on_one_cpu_thread_and_restores_the_setting() -> None:
    import torch

    from core.device import small_model_threads, torch_threads

    assert small_model_threads((1280,)) == 1 and small_model_threads((1, 8, 8)) == 1
    assert small_model_threads((3, 64, 64)) is None
    before = torch.get_num_threads()
    with torch_threads(small_model_threads((1280,))):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
