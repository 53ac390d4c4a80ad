"""Does the mean over a horizontal flip (``feature_view = "centre_flip"``) beat the centre crop alone?

A fresh project of ``$LABELLER_HYMENOPTERA`` (train/ and val/ together, ``labeller evaluate``'s own stratified
30% test split), default settings but the one under test; for each view, ``labeller evaluate`` with the
same budgets, strategies and seeds, so the label draws are paired. The features job computes each view
once (its cache is keyed by view). Writes ``results/feature_views.json`` and ``.md`` (commit, versions,
machine, accuracy per budget and view, seconds).

    python -m benchmarks.feature_views [--budgets 20,50,100] [--strategies random] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from benchmarks.product_defaults import HYMENOPTERA, machine_record
from benchmarks.tuned_vs_defaults import _labeller, _write_training
from core.features import VIEWS

RESULTS = Path(__file__).parent / "results"


def measure(project: Path, work: Path, options: argparse.Namespace) -> dict[str, Any]:
    original = tomllib.loads((project / "labeller.toml").read_text())
    rows: list[dict[str, Any]] = []
    for view in VIEWS:
        _write_training(project, {"feature_view": view}, original)
        out = work / f"{view}.json"
        started = time.perf_counter()
        _labeller(
            "evaluate", str(project), "--budgets", options.budgets, "--strategies", options.strategies,
            "--seeds", str(options.seeds), "--baselines", "", "--json", str(out),
        )  # fmt: skip
        seconds = time.perf_counter() - started
        for row in json.loads(out.read_text())["summary"]:
            rows.append({"feature_view": view, **row, "evaluate_seconds": round(seconds)})
        print(f"{view}: {seconds:.0f} s", flush=True)
    return {"rows": rows}


def markdown(record: dict[str, Any]) -> str:
    lines = [
        "# Test-time feature views: centre crop against the mean over a flip (hymenoptera)\n",
        f"Commit {record['commit'][:7]}, torch {record['torch']}, {record['device']}, {record['threads']} threads, "
        f"{record['machine']}. `{' '.join(record['command'])}`. Mean (std) main-class accuracy over seeds; the "
        "label draws are the same for both views.\n",
        "| view | model | strategy | budget | seeds | main accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        std = row.get("main_accuracy_std") or 0.0
        lines.append(
            f"| {row['feature_view']} | {row['model']} | {row['strategy']} | {row['budget']} | {row['seeds']} | "
            f"{100 * row['main_accuracy_mean']:.1f}% ({100 * std:.1f}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="20,50,100")
    parser.add_argument("--strategies", default="random")
    parser.add_argument("--seeds", type=int, default=3)
    options = parser.parse_args()
    command = ["python", "-m", "benchmarks.feature_views", *sys.argv[1:]]
    record: dict[str, Any] = {**machine_record(), "command": command}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        project = work / "project"
        _labeller("init", str(project))
        for source in (HYMENOPTERA / "train", HYMENOPTERA / "val"):
            _labeller("import", str(project), str(source), "--labels-from-folders", "--create-classes")
        record |= measure(project, work, options)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "feature_views.json").write_text(json.dumps(record, indent=2))
    (RESULTS / "feature_views.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
