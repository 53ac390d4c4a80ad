"""Label efficiency: test accuracy against the number of labels, random vs active, for M2, M1+M2, a
supervised-only model with the same classifier, and scikit-learn baselines, on two real datasets.

- digits: scikit-learn's 1,797 8x8 digits with the anchors' protocol (``../shared/anchors/digits.py``:
  stratified 30% test split with seed 0; random = ``budget/10`` labels per class; active = 10 random labels,
  then the 5 most uncertain per round).
- hymenoptera: ``../shared/data/hymenoptera`` (ants vs bees photos), ``train/`` is the pool and ``val/`` the
  test set, labels from folder names, resized to 64x64 RGB, trained from scratch.

Writes ``label_efficiency.json`` (rows for the summary table, targets met or not) and, per dataset,
``label_efficiency/<dataset>.json|.md|.html`` (the full ``labeller evaluate`` result, schema in
``core.evaluate``).

    python -m benchmarks.label_efficiency [--quick] [--only digits] [--device cuda]
    python -m benchmarks.label_efficiency --render   # redraw tables/figures from saved JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.evaluate import EvaluationConfig, EvaluationData, EvaluationResult, digits_data, evaluate, folder_data

HYMENOPTERA = Path(
    os.environ.get("LABELLER_HYMENOPTERA", Path(__file__).resolve().parents[2] / "shared/data/hymenoptera")
)
CACHE = Path(__file__).parent / ".cache"
DETAILS = "label_efficiency"

# Training settings per dataset, chosen by measurement (see the report in the JSON's "note").
DIGITS_TRAIN: dict[str, Any] = {"epochs": 30}
HYMENOPTERA_TRAIN: dict[str, Any] = {"epochs": 30}

# (dataset, strategy or "random", model, budget, minimum main-class accuracy): the targets.
TARGETS = (
    ("digits", "active", 50, 0.97),
    ("digits", "active", 100, 0.98),
    ("digits", "random", 50, 0.94),
    ("digits", "random", 100, 0.96),
    ("hymenoptera", "any", 100, 0.70),
)


def hymenoptera_data(
    root: Path = HYMENOPTERA, *, image_size: int = 64
) -> tuple[EvaluationData, np.ndarray, np.ndarray]:
    """(data, pool indices = train/, test indices = val/); decoded pixels cached under benchmarks/.cache."""
    cache = CACHE / f"hymenoptera-{image_size}.npz"
    if cache.is_file():
        with np.load(cache) as stored:
            images, labels, is_test = stored["images"], stored["labels"], stored["is_test"]
    else:
        train = folder_data(root / "train", image_size=image_size, classes=("ants", "bees"))
        test = folder_data(root / "val", image_size=image_size, classes=("ants", "bees"))
        images = np.concatenate([train.images, test.images])
        labels = np.concatenate([train.main_labels, test.main_labels])
        is_test = np.r_[np.zeros(len(train.images), bool), np.ones(len(test.images), bool)]
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(cache, images=images, labels=labels, is_test=is_test)
    from core.evaluate import from_class_labels

    data = from_class_labels("hymenoptera", images, labels, ["ants", "bees"])
    return data, np.flatnonzero(~is_test), np.flatnonzero(is_test)


def configs(quick: bool, device: str) -> dict[str, EvaluationConfig]:
    if quick:
        return {
            "digits": EvaluationConfig(
                budgets=(20, 50),
                models=("m2", "supervised"),
                seeds=1,
                warm_epochs=2,
                train={**DIGITS_TRAIN, "epochs": 3, "device": device},
            ),
            "hymenoptera": EvaluationConfig(
                budgets=(20,),
                models=("supervised",),
                seeds=1,
                initial_labels=10,
                round_size=10,
                train={**HYMENOPTERA_TRAIN, "epochs": 2, "device": device},
            ),
        }
    return {
        "digits": EvaluationConfig(
            budgets=(20, 50, 100),
            strategies=("random", "entropy"),
            models=("m2", "m1m2", "supervised"),
            baselines=("label_spreading", "logistic_regression"),
            seeds=3,
            warm_epochs=max(5, DIGITS_TRAIN["epochs"] // 3),
            train={**DIGITS_TRAIN, "device": device},
        ),
        "hymenoptera": EvaluationConfig(
            budgets=(20, 50, 100),
            strategies=("random", "entropy"),
            models=("m2", "m1m2", "supervised"),
            baselines=("label_spreading", "logistic_regression"),
            seeds=3,
            initial_labels=10,
            round_size=10,
            warm_epochs=max(5, HYMENOPTERA_TRAIN["epochs"] // 3),
            train={**HYMENOPTERA_TRAIN, "device": device},
        ),
    }


def target_rows(results: dict[str, EvaluationResult]) -> list[dict[str, Any]]:
    """Each target with the best matching (model, strategy) mean, and whether it is met."""
    rows = []
    for dataset, kind, budget, minimum in TARGETS:
        if dataset not in results:
            continue
        candidates = [
            row
            for row in results[dataset].summary()
            if row["budget"] == budget
            and row["model"] not in ("label_spreading", "logistic_regression")
            and (kind == "any" or (row["strategy"] == "random") == (kind == "random"))
        ]
        best = max(candidates, key=lambda row: row["main_accuracy_mean"], default=None)
        rows.append(
            {
                "dataset": dataset,
                "acquisition": kind,
                "labels": budget,
                "target": minimum,
                "best": None if best is None else f"{best['model']} · {best['strategy']}",
                "accuracy": None if best is None else round(best["main_accuracy_mean"], 4),
                "met": bool(best is not None and best["main_accuracy_mean"] >= minimum),
            }
        )
    return rows


def summary_rows(results: dict[str, EvaluationResult]) -> list[dict[str, Any]]:
    rows = []
    for dataset, result in results.items():
        for row in result.summary():
            rows.append(
                {
                    "dataset": dataset,
                    "model": row["model"],
                    "strategy": row["strategy"],
                    "labels": row["budget"],
                    "main_accuracy": round(row["main_accuracy_mean"], 4),
                    "std": round(row["main_accuracy_std"], 4),
                    "macro_f1": round(row["macro_f1_mean"], 4),
                    "seeds": row["seeds"],
                }
            )
    return rows


def report(out_dir: Path, results: dict[str, EvaluationResult], *, quick: bool, machine: str) -> dict[str, Any]:
    targets = target_rows(results)
    met = ", ".join(
        f"{t['dataset']} {t['acquisition']} @{t['labels']}: {'met' if t['met'] else 'NOT met'} "
        f"({100 * (t['accuracy'] or 0):.1f}% vs {100 * t['target']:.0f}%)"
        for t in targets
    )
    result = {
        "name": "label_efficiency",
        "quick": quick,
        "machine": machine,
        "note": (
            "Test main-class accuracy, mean and std over seeds; details per dataset in label_efficiency/. "
            f"Targets: {met or 'none evaluated'}."
        ),
        "seconds": {name: round(r.seconds, 1) for name, r in results.items()},
        "targets": targets,
        "rows": summary_rows(results),
    }
    (out_dir / "label_efficiency.json").write_text(json.dumps(result, indent=2))
    return result


def _machine(device: str) -> str:
    import torch

    from core.device import resolve_device

    resolved = resolve_device(device)
    name = torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else "cpu"
    return f"{platform.machine()}, {os.cpu_count()} cores, {name}"


def main(out_dir: Path, quick: bool, *, only: tuple[str, ...] = (), device: str = "auto") -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    details = out_dir / DETAILS
    results: dict[str, EvaluationResult] = {}
    for name, config in configs(quick, device).items():
        if only and name not in only:
            continue
        started = time.perf_counter()
        if name == "digits":
            results[name] = evaluate(digits_data(), config, on_event=print)
        else:
            data, pool, test = hymenoptera_data()
            results[name] = evaluate(data, config, split=(pool, test), on_event=print)
        _write_details(results[name], details / f"{name}.json")
        print(f"{name}: {time.perf_counter() - started:.0f} s")
    return report(out_dir, results, quick=quick, machine=_machine(device))


def _write_details(result: EvaluationResult, path: Path) -> None:
    try:
        import plotly  # noqa: F401
    except ImportError:  # e.g. a GPU box without plotly: redraw later with --render
        result.write(path, figure=False)
        return
    result.write(path, plotlyjs="cdn")


def render(out_dir: Path) -> dict[str, Any]:
    """Rebuild markdown, figures and the summary JSON from the per-dataset JSON files."""
    saved = json.loads((out_dir / "label_efficiency.json").read_text())
    results = {
        path.stem: EvaluationResult.from_dict(json.loads(path.read_text()))
        for path in sorted((out_dir / DETAILS).glob("*.json"))
    }
    for name, result in results.items():
        _write_details(result, out_dir / DETAILS / f"{name}.json")
    return report(out_dir, results, quick=saved.get("quick", False), machine=saved.get("machine", "unknown"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="digits, hymenoptera (comma-separated)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--render", action="store_true", help="only redraw from saved JSON")
    arguments = parser.parse_args()
    if arguments.render:
        summary = render(arguments.out)
    else:
        names = tuple(name for name in arguments.only.split(",") if name)
        summary = main(arguments.out, arguments.quick, only=names, device=arguments.device)
    print(json.dumps(summary["targets"], indent=2))
