"""Do the settings a fresh project gets hold up against settings tuned for the data? (issue 11's experiment)

For one dataset: a fresh project (``labeller init``), its images imported with ``--labels-from-folders``;
then for every candidate of a small grid of M2's training settings (consistency, balance), written into the
project's ``labeller.toml``, ``labeller evaluate --on-validation``: measured on a validation split of the
pool, so the test split is never seen while choosing. The candidate with the best mean validation accuracy
(ties go to the defaults) is then measured on the test split beside the defaults, each with plain
``labeller evaluate``. Target: the defaults within one point of the tuned settings on test.

- digits28 (default): scikit-learn's digits 0-3 upscaled to 28x28 greyscale PNGs, the stand-in for the
  "new user with MNIST" run of issue 11 (``--budgets 40 --strategies random --models m2``).
- hymenoptera: ``$LABELLER_HYMENOPTERA`` (train/ and val/ together).

Writes ``results/tuned_vs_defaults/<dataset>.json|.md`` (commit, versions, machine, every candidate's
validation accuracy, both test rows).

    python -m benchmarks.tuned_vs_defaults [--dataset digits28] [--budgets 40] [--strategies random] [--seeds 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from benchmarks.product_defaults import HYMENOPTERA, LABELLER, _digits28, machine_record

RESULTS = Path(__file__).parent / "results" / "tuned_vs_defaults"
DEFAULTS = "defaults"
GRID: dict[str, tuple[Any, ...]] = {"consistency": (0.0, 20.0), "balance": (0.0, "auto")}


def _labeller(*args: str) -> str:
    done = subprocess.run([*LABELLER, *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"labeller {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def candidates(defaults: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The defaults (nothing written) and every other combination of the grid."""
    grid = {
        ", ".join(f"{key} {value}" for key, value in zip(GRID, values, strict=True)): dict(
            zip(GRID, values, strict=True)
        )
        for values in itertools.product(*GRID.values())
    }
    return {DEFAULTS: {}, **{name: values for name, values in grid.items() if values != defaults}}


def _write_training(project: Path, overrides: dict[str, Any], original: dict[str, Any]) -> None:
    settings = json.loads(json.dumps(original))  # a deep copy
    settings.setdefault("training", {}).update(overrides)
    (project / "labeller.toml").write_text(tomli_w.dumps(settings))


def _accuracy(result_file: Path, model: str, strategies: list[str]) -> float:
    """Mean main-class accuracy over the budgets and strategies of ``model``."""
    rows = json.loads(result_file.read_text())["summary"]
    values = [row["main_accuracy_mean"] for row in rows if row["model"] == model and row["strategy"] in strategies]
    return float(np.mean(values))


def run(dataset: str, sources: list[Path], work: Path, options: argparse.Namespace) -> dict[str, Any]:
    project = work / "project"
    _labeller("init", str(project))
    for source in sources:
        _labeller("import", str(project), str(source), "--labels-from-folders", "--create-classes")
    original = tomllib.loads((project / "labeller.toml").read_text())
    model = original.get("training", {}).get("model", "m2")
    grid = candidates({key: original.get("training", {}).get(key) for key in GRID})
    common = ["--budgets", options.budgets, "--strategies", options.strategies, "--seeds", str(options.seeds)]
    common += ["--workers", str(options.workers)]
    strategies = options.strategies.split(",")

    validation: dict[str, float] = {}
    started = time.perf_counter()
    for name, overrides in grid.items():
        _write_training(project, overrides, original)
        out = work / f"validation-{len(validation)}.json"
        _labeller("evaluate", str(project), *common, "--baselines", "", "--on-validation", "--json", str(out))
        validation[name] = _accuracy(out, model, strategies)
        print(f"validation  {name:<32} {100 * validation[name]:.1f}%", flush=True)
    tuning_seconds = time.perf_counter() - started
    best = max(validation, key=lambda name: (validation[name], name == DEFAULTS))

    test: dict[str, float] = {}
    for name in dict.fromkeys((DEFAULTS, best)):
        _write_training(project, grid[name], original)
        out = work / f"test-{len(test)}.json"
        _labeller("evaluate", str(project), *common, "--baselines", "label_spreading", "--json", str(out))
        test[name] = _accuracy(out, model, strategies)
        test.setdefault("label_spreading", _accuracy(out, "label_spreading", strategies))
        print(f"test        {name:<32} {100 * test[name]:.1f}%", flush=True)
    return {
        "dataset": dataset,
        "model": model,
        "options": vars(options),
        "validation": validation,
        "chosen_on_validation": best,
        "test": test,
        "defaults_minus_tuned_points": 100 * (test[DEFAULTS] - test[best]),
        "target_met": test[DEFAULTS] >= test[best] - 0.01,
        "tuning_seconds": tuning_seconds,
        "seconds": time.perf_counter() - started,
    }


def markdown(record: dict[str, Any]) -> str:
    result = record["result"]
    lines = [
        f"# Defaults against settings tuned on validation: {result['dataset']}\n",
        f"Commit {record['commit'][:7]}, torch {record['torch']}, {record['device']}, {record['threads']} threads, "
        f"{record['machine']}. `{' '.join(record['command'])}`; model {result['model']}, mean main-class accuracy "
        f"over budgets {result['options']['budgets']} and strategies {result['options']['strategies']}, "
        f"{result['options']['seeds']} seeds.\n",
        "| training settings | validation accuracy | test accuracy |",
        "|---|---|---|",
    ]
    for name, accuracy in result["validation"].items():
        tested = result["test"].get(name)
        chosen = " (chosen)" if name == result["chosen_on_validation"] else ""
        test_cell = "" if tested is None else f"{100 * tested:.1f}%"
        lines.append(f"| {name}{chosen} | {100 * accuracy:.1f}% | {test_cell} |")
    lines.append(f"| LabelSpreading (same split) | | {100 * result['test']['label_spreading']:.1f}% |")
    verdict = "met" if result["target_met"] else "NOT met"
    lines.append(
        f"\nDefaults minus tuned on test: {result['defaults_minus_tuned_points']:+.1f} points (target: within one "
        f"point, {verdict}). Wall time {result['seconds']:.0f} s."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("digits28", "hymenoptera"), default="digits28")
    parser.add_argument("--budgets", default="40")
    parser.add_argument("--strategies", default="random")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="labeller evaluate --workers (seeds in parallel)")
    options = parser.parse_args()
    command = ["python", "-m", "benchmarks.tuned_vs_defaults", *sys.argv[1:]]
    record: dict[str, Any] = {**machine_record(), "command": command}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if options.dataset == "digits28":
            sources = [_digits28(work / "digits28")]
        else:
            sources = [HYMENOPTERA / "train", HYMENOPTERA / "val"]
        record["result"] = run(options.dataset, sources, work, options)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{options.dataset}.json").write_text(json.dumps(record, indent=2))
    (RESULTS / f"{options.dataset}.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
