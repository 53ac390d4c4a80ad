"""Torch intra-op threads for the product's default model on features: 1 against 2, idle and under load.

The product's default model is M2 with a linear q(y|x) on a backbone's pooled features (efficientnet_lite2:
1,280 floats per image). Its steps are small matrix products; torch's intra-op threads then spend more time
waiting for each other than computing, and when other processes hold the cores a waiting thread spins
instead of yielding, so a fit that runs tens of steps per second alone can drop to a few.

What is timed: ``core.training.fit(TrainConfig(model="m2", backbone="efficientnet_lite2", device="cpu"))``
on synthetic features (4 Gaussian classes in 1,280 dimensions, 2,000 rows, 30 labelled), each fit in a fresh
process with ``torch.set_num_threads(1)`` or ``(2)``; ``steps_per_s`` is the optimisation steps over the
training loop's own time (``metrics["train_seconds"]``), ``fit_s`` the whole ``fit`` call. Two conditions:
``idle`` (whatever else the machine runs; its load average is recorded) and ``loaded`` (this benchmark
starts 2 busy-loop processes, bounded in time, and kills them after). Median of the repeats.

    python -m benchmarks.threads [--quick] [--epochs 3] [--repeats 3]

Writes ``benchmarks/results/threads.json`` and ``threads.md`` (commit, torch, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
ROWS, DIMENSIONS, LABELLED, CLASSES = 2_000, 1_280, 30, 4
THREADS = (1, 2)
BUSY_PROCESSES = 2
# A busy loop that ends by itself, so a crashed benchmark cannot leave the machine loaded.
BUSY_LOOP = "import sys, time\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"


def one_fit(threads: int, epochs: int) -> dict[str, Any]:
    """One fit of the default feature model with ``threads`` intra-op threads (run in a fresh process)."""
    import numpy as np
    import torch

    from core.data import LabelledPool
    from core.taxonomy import Taxonomy
    from core.training import Progress, TrainConfig, fit

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 1.0, (CLASSES, DIMENSIONS))
    classes = rng.integers(0, CLASSES, ROWS)
    features = (centres[classes] + rng.normal(0.0, 2.0, (ROWS, DIMENSIONS))).astype(np.float32)
    leaves = np.where(np.arange(ROWS) < LABELLED, classes, -1)
    pool = LabelledPool.from_leaf_labels(features, leaves, CLASSES)
    taxonomy = Taxonomy.from_dict({f"c{i}": [] for i in range(CLASSES)})
    config = TrainConfig(model="m2", backbone="efficientnet_lite2", device="cpu", epochs=epochs)
    seen: list[Progress] = []
    started = time.perf_counter()
    trained = fit(pool, taxonomy, config, on_progress=seen.append)
    fit_seconds = time.perf_counter() - started
    last = seen[-1]
    steps = (last.epoch - 1) * last.steps_per_epoch + last.step
    train_seconds = float(trained.metrics["train_seconds"])
    return {
        "threads": torch.get_num_threads(),
        "classifier": trained.metrics.get("classifier"),
        "steps": steps,
        "train_s": train_seconds,
        "fit_s": fit_seconds,
        "steps_per_s": steps / train_seconds,
    }


def _fit_in_process(threads: int, epochs: int) -> dict[str, Any]:
    """A fresh interpreter per fit, so no thread pool or allocator state carries over between settings."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.threads", "--one", str(threads), "--epochs", str(epochs)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure(condition: str, epochs: int, repeats: int) -> list[dict[str, Any]]:
    """Every thread count, interleaved repeat by repeat (a drift in the machine's load hits both alike)."""
    runs: dict[int, list[dict[str, Any]]] = {threads: [] for threads in THREADS}
    load_before = os.getloadavg()[0]
    for _ in range(repeats):
        for threads in THREADS:
            runs[threads].append(_fit_in_process(threads, epochs))
    load_after = os.getloadavg()[0]
    rows = []
    for threads, found in runs.items():
        rows.append(
            {
                "condition": condition,
                "threads": threads,
                "repeats": len(found),
                "steps": found[0]["steps"],
                "steps_per_s_median": round(statistics.median(run["steps_per_s"] for run in found), 1),
                "fit_s_median": round(statistics.median(run["fit_s"] for run in found), 2),
                "steps_per_s_all": [round(run["steps_per_s"], 1) for run in found],
                "load_1min_before": round(load_before, 2),
                "load_1min_after": round(load_after, 2),
            }
        )
    return rows


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(out_dir: Path = RESULTS, quick: bool = False, *, epochs: int = 3, repeats: int = 3) -> dict[str, Any]:
    import torch

    if quick:
        epochs, repeats = 1, 1
    started = time.perf_counter()
    rows = _measure("idle", epochs, repeats)
    # Bounded well past the loaded phase's expected length; killed as soon as it is over.
    busy = [
        subprocess.Popen([sys.executable, "-c", BUSY_LOOP, "1800"], stdout=subprocess.DEVNULL)
        for _ in range(BUSY_PROCESSES)
    ]
    try:
        time.sleep(2)  # let the busy loops take their cores
        rows += _measure("loaded", epochs, repeats)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    result = {
        "name": "threads",
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "torch": torch.__version__,
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "machine": f"{_cpu_model()}, {os.cpu_count()} CPUs (nproc), {platform.platform()}",
        "quick": quick,
        "setup": {
            "model": "m2",
            "backbone": "efficientnet_lite2",
            "rows": ROWS,
            "dimensions": DIMENSIONS,
            "labelled": LABELLED,
            "classes": CLASSES,
            "epochs": epochs,
            "repeats": repeats,
            "busy_processes": BUSY_PROCESSES,
        },
        "note": (
            f"core.training.fit of M2 (linear q(y|x)) on {ROWS:,} synthetic {DIMENSIONS:,}-d feature rows, "
            f"{LABELLED} labelled, {epochs} epochs, cpu, each fit in a fresh process with torch.set_num_threads(N); "
            f"median of {repeats}. loaded: {BUSY_PROCESSES} busy-loop processes beside it."
        ),
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "threads.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "threads.md").write_text(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Torch threads for the default feature model (M2, linear q(y|x), 1,280-d features)\n",
        f"{result['note']}\n",
        "| condition | threads | steps/s (median) | fit s (median) | steps/s per repeat | load 1 min before → after |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        each = ", ".join(str(value) for value in row["steps_per_s_all"])
        lines.append(
            f"| {row['condition']} | {row['threads']} | {row['steps_per_s_median']} | {row['fit_s_median']} | "
            f"{each} | {row['load_1min_before']} → {row['load_1min_after']} |"
        )
    lines += [
        "",
        f"- commit: `{result['commit']}`, {result['date']}",
        f"- torch {result['torch']}; {result['nproc']} CPUs (nproc), {result['cpu']}; {result['seconds']} s in all",
        "- idle means no load from this benchmark; other processes on the machine show in the load average.",
        "",
        "Run it with `python -m benchmarks.threads` (`--quick`: 1 epoch, 1 repeat).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 repeat")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one fit with N threads, as JSON
    arguments = parser.parse_args()
    if arguments.one is not None:
        print(json.dumps(one_fit(arguments.one, arguments.epochs)))
    else:
        outcome = main(arguments.out, arguments.quick, epochs=arguments.epochs, repeats=arguments.repeats)
        print(markdown(outcome))
