"""Run every benchmark and write ``benchmarks/results/<name>.json`` plus ``benchmarks/results/README.md``.

    python -m benchmarks.run_all            # full runs (slow: tens of minutes on 2 cores)
    python -m benchmarks.run_all --quick    # smoke-sized runs
    python -m benchmarks.run_all --only db_latency,import_speed

Every benchmark module has ``main(out_dir: Path, quick: bool) -> dict``; it writes its own JSON and returns
the same dict. A ``"rows"`` list of flat dicts in it becomes that benchmark's markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path
from typing import Any

BENCHMARKS = (
    "import_speed",
    "db_latency",
    "train_speed",
    "label_efficiency",
    "umap_speed",
    "jobs",
    "app_latency",
    "label_latency",  # Chromium: scripts/system-packages.sh
    "concurrent_labelling",  # PostgreSQL too when LABELLER_BENCH_PG_URL or LABELLER_TEST_PG_URL is set
    "soak",  # 30 minutes (--quick: 3); exits non-zero when anything was lost, doubled or locked
    "threads",  # torch threads for small models, idle and under load
    "loop_truth",  # the queue's head and calibration on hymenoptera ($LABELLER_HYMENOPTERA)
)
RESULTS_DIR = Path(__file__).parent / "results"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_no rows_\n"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_format_cell(row.get(column, "")) for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_summary(out_dir: Path) -> Path:
    """One markdown file with a section per benchmark JSON found in ``out_dir``."""
    sections = ["# Benchmark results\n", "Written by `python -m benchmarks.run_all`; one JSON per benchmark.\n"]
    for path in sorted(out_dir.glob("*.json")):
        result = json.loads(path.read_text())
        sections.append(f"## {path.stem}\n")
        if note := result.get("note"):
            sections.append(f"{note}\n")
        if machine := result.get("machine"):
            sections.append(f"Machine: {machine}\n")
        sections.append(markdown_table(result.get("rows", [])))
    summary = out_dir / "README.md"
    summary.write_text("\n".join(sections))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-sized runs")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    names = [name for name in args.only.split(",") if name] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        started = time.perf_counter()
        module.main(args.out, args.quick)
        print(f"{name}: {time.perf_counter() - started:.1f} s")
    print(f"summary: {write_summary(args.out)}")


if __name__ == "__main__":
    main()
