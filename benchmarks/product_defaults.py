"""The product-defaults row: what a user gets with no setting touched, measured end to end.

For each dataset: a fresh project (``labeller init``), its images imported with ``labeller import
--labels-from-folders --create-classes``, then ``labeller evaluate PROJECT --json ...`` with no other option,
so every choice (input kind, backbone, model, strategy, consistency and balance, image size) is the one the
product makes. Records the wall time of import and evaluation, the decision ``labeller evaluate`` printed,
and the machine.

- hymenoptera: ``$LABELLER_HYMENOPTERA`` (default ``../shared/data/hymenoptera``), train/ and val/ together:
  ``labeller evaluate`` holds out its own stratified 30% test split.
- digits28: scikit-learn's digits upscaled to 28x28 greyscale PNGs, 4 classes (0-3): a stand-in for the
  "new user with MNIST" experiment of issue 11.

    python -m benchmarks.product_defaults [--only hymenoptera] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HYMENOPTERA = Path(
    os.environ.get("LABELLER_HYMENOPTERA", Path(__file__).resolve().parents[2] / "shared/data/hymenoptera")
)
RESULTS = Path(__file__).parent / "results" / "product_defaults"
LABELLER = [sys.executable, "-m", "labeller"]


def machine_record() -> dict[str, Any]:
    """What a label-efficiency result was measured with: the commit, torch, device, threads and machine."""
    import torch

    return {
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
    }


def _run(*args: str) -> str:
    done = subprocess.run([*LABELLER, *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"labeller {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _digits28(folder: Path) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    for index, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        if label > 3:
            continue
        target = folder / str(label)
        target.mkdir(parents=True, exist_ok=True)
        grey = Image.fromarray(np.rint(image.reshape(8, 8) * 255 / 16).astype(np.uint8), "L")
        grey.resize((28, 28), Image.Resampling.BILINEAR).save(target / f"{index:04d}.png")
    return folder


def measure(name: str, sources: list[Path], workdir: Path, seeds: int) -> dict:
    project = workdir / f"{name}-project"
    _run("init", str(project))
    started = time.perf_counter()
    for source in sources:
        _run("import", str(project), str(source), "--labels-from-folders", "--create-classes")
    import_seconds = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    out = _run("evaluate", str(project), "--seeds", str(seeds), "--json", str(RESULTS / f"{name}.json"))
    evaluate_seconds = time.perf_counter() - started
    decision = next((line for line in out.splitlines() if line.startswith("input:")), "")
    return {"import_seconds": import_seconds, "evaluate_seconds": evaluate_seconds, "input": decision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("hymenoptera", "digits28"))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    record: dict = {**machine_record(), "datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "hymenoptera"):
            sources = [HYMENOPTERA / "train", HYMENOPTERA / "val"]
            record["datasets"]["hymenoptera"] = measure("hymenoptera", sources, work, args.seeds)
        if args.only in (None, "digits28"):
            record["datasets"]["digits28"] = measure("digits28", [_digits28(work / "digits28")], work, args.seeds)
    path = RESULTS / ("run.json" if args.only is None else f"run_{args.only}.json")
    path.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
