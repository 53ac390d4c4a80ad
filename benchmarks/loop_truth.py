"""Does the loop tell the truth? The queue's head against the uncertainty ranking, and calibration on held-out
photos, before and after issue 19, on the setting a new user meets: hymenoptera ``train/`` as the pool with 30
random labels (15 ants, 15 bees), the product's default model on its default backbone's features, and
``val/`` (153 photos) as the held-out set.

Per seed, one model is trained (``core.training.fit`` with ``TrainConfig()``'s product defaults); both rules are
applied to that same model, so the comparison is paired:

- queue: of the first 20 images the app would serve (``labeller.jobs.score.rank_queue``, the product's ranking,
  against the single diversified query over the 2,000-image head that it replaced), how many lie among the
  100 most uncertain unlabelled images by entropy;
- calibration: ECE and NLL of the main-class probabilities on ``val/`` with the temperature the new rule gives
  (``core.calibration.calibrate``) and the one the old rule gave (``fit_temperature`` clipped to [0.5, 20] on
  the same held-out labels, whatever their number), and how many ``val/`` predictions claim 99% or more.

    python -m benchmarks.loop_truth [--seeds 3] [--data DIR]   (DIR: default $LABELLER_HYMENOPTERA)

Writes ``benchmarks/results/loop_truth.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.product_defaults import HYMENOPTERA, machine_record

RESULTS = Path(__file__).parent / "results"
CACHE = Path(os.environ.get("LABELLER_BENCH_CACHE", Path.home() / ".cache" / "latent-labeller-bench"))
LABELS = 30
HEAD, TOP = 20, 100
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def photo_features(root: Path, split: str, backbone: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features, class index, class names) of ``root/split/CLASS/*``, cached per backbone."""
    from core.features import FeatureSpec, extract_features

    folders = sorted(p for p in (root / split).iterdir() if p.is_dir())
    paths = [f for folder in folders for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    labels = np.array([folders.index(path.parent) for path in paths])
    cache = CACHE / f"hymenoptera-{split}-{backbone}.npy"
    if cache.is_file():
        features = np.load(cache)
    else:
        features = np.zeros((len(paths), 0), dtype=np.float32)
        for batch in extract_features(paths, FeatureSpec(backbone), device="cpu", num_workers=0):
            if batch.failures:
                raise SystemExit(f"unreadable photos: {batch.failures}")
            if features.shape[1] == 0:
                features = np.zeros((len(paths), batch.features.shape[1]), dtype=np.float32)
            features[batch.positions] = batch.features
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, features)
    return features, labels, [folder.name for folder in folders]


def single_query_ranking(scores: Any, candidates: np.ndarray, labelled: np.ndarray, seed: int) -> np.ndarray:
    """The ranking before issue 19: one diversified query over the whole 2,000-image head (its shortlist,
    5 x 2,000, is the whole pool), the coverage picks interleaved 4 per round of 20."""
    from core.acquisition import get_strategy
    from core.registry import DEFAULT_COVERAGE, DEFAULT_EXPLORATION, DEFAULT_STRATEGY
    from labeller.jobs.score import QUEUE_RANK_LIMIT

    strategy = get_strategy(DEFAULT_STRATEGY, exploration=DEFAULT_EXPLORATION, coverage=DEFAULT_COVERAGE)
    limit = min(QUEUE_RANK_LIMIT, len(candidates))
    picks = strategy.query(
        scores.uncertainty(),
        candidates,
        limit,
        rng=np.random.default_rng(seed),
        latent=scores.latent_mean,
        labelled=labelled,
    )
    explored_count = int(np.ceil(DEFAULT_EXPLORATION * len(picks)))
    uncertain, explored = list(picks[: len(picks) - explored_count]), list(picks[len(picks) - explored_count :])
    order: list[int] = []
    while uncertain or explored:
        take = min(len(uncertain), 20 - min(4, len(explored)))
        order += uncertain[:take] + explored[: 20 - take]
        uncertain, explored = uncertain[take:], explored[20 - take :]
    return np.array(order, dtype=np.int64)


def calibration_record(trained: Any, features: np.ndarray, truth: np.ndarray, temperature: float) -> dict[str, float]:
    from core.calibration import expected_calibration_error
    from core.scoring import score_pool

    scores = score_pool(dataclasses.replace(trained, temperature=temperature), features, mc_samples=0)
    probs = scores.main_probs
    return {
        "temperature": temperature,
        "ece": expected_calibration_error(probs, truth),
        "nll": float(-np.log(probs[np.arange(len(truth)), truth] + 1e-12).mean()),
        "accuracy": float((probs.argmax(1) == truth).mean()),
        "share_at_99": float((probs.max(1) >= 0.99).mean()),
    }


def measure_seed(
    seed: int,
    pool: np.ndarray,
    pool_truth: np.ndarray,
    val: np.ndarray,
    val_truth: np.ndarray,
    names: list[str],
    backbone: str,
) -> dict[str, Any]:
    import torch

    import core.training.loop as loop
    from core.calibration import calibrate, fit_temperature
    from core.data import LabelledPool
    from core.registry import DEFAULT_ROUND_SIZE
    from core.scoring import score_pool
    from core.taxonomy import Taxonomy
    from core.training import TrainConfig, fit
    from labeller.jobs.score import rank_queue

    rng = np.random.default_rng(seed)
    labelled_rows = np.concatenate(
        [rng.choice(np.flatnonzero(pool_truth == c), LABELS // len(names), replace=False) for c in range(len(names))]
    )
    labelled = np.zeros(len(pool), dtype=bool)
    labelled[labelled_rows] = True
    admissible = np.ones((len(pool), len(names)), dtype=bool)
    admissible[labelled_rows] = np.eye(len(names), dtype=bool)[pool_truth[labelled_rows]]
    taxonomy = Taxonomy.from_dict({name: [] for name in names})

    held_out: dict[str, Any] = {}

    def recording(logits: torch.Tensor, admissible: torch.Tensor) -> Any:
        held_out["logits"], held_out["admissible"] = logits, admissible
        return calibrate(logits, admissible)

    loop.calibrate = recording  # the same training, both rules read its held-out logits
    try:
        trained = fit(
            LabelledPool(pool, admissible, labelled), taxonomy, TrainConfig(backbone=backbone, device="cpu", seed=seed)
        )
    finally:
        loop.calibrate = calibrate
    old_temperature = fit_temperature(held_out["logits"], held_out["admissible"])

    scores = score_pool(trained, pool, mc_samples=0)
    candidates = np.flatnonzero(~labelled)
    top = set(candidates[np.argsort(-scores.entropy[candidates])][:TOP].tolist())
    no_audit = np.zeros(len(pool), dtype=bool)
    ranks = rank_queue("entropy", scores, labelled, no_audit, seed, round_size=DEFAULT_ROUND_SIZE).ranks
    ranked = np.flatnonzero(ranks >= 0)
    new_order = ranked[np.argsort(ranks[ranked])]
    old_order = single_query_ranking(scores, candidates, np.flatnonzero(labelled), seed)
    pool_entropy = float(scores.entropy[candidates].mean())
    return {
        "seed": seed,
        "held_out_labels": len(held_out["logits"]),
        "calibration_reason": trained.metrics["calibration"]["reason"],
        "queue": {
            "candidates": len(candidates),
            "pool_mean_entropy": pool_entropy,
            "top_mean_entropy": float(scores.entropy[sorted(top)][:HEAD].mean()),
            "before": {
                "hits": len(set(old_order[:HEAD].tolist()) & top),
                "mean_entropy": float(scores.entropy[old_order[:HEAD]].mean()),
            },
            "after": {
                "hits": len(set(new_order[:HEAD].tolist()) & top),
                "mean_entropy": float(scores.entropy[new_order[:HEAD]].mean()),
            },
        },
        "calibration": {
            "before": calibration_record(trained, val, val_truth, old_temperature),
            "after": calibration_record(trained, val, val_truth, trained.temperature),
            "uncalibrated": calibration_record(trained, val, val_truth, 1.0),
        },
    }


def interval(values: list[float]) -> str:
    """mean ± std over seeds (n/a with one seed)."""
    mean = float(np.mean(values))
    return f"{mean:.3f} ± {float(np.std(values, ddof=1)):.3f}" if len(values) > 1 else f"{mean:.3f} ± n/a"


def markdown(record: dict[str, Any]) -> str:
    runs, machine = record["runs"], record["machine"]
    test_images = record["val_images"]
    lines = [
        "# The loop tells the truth: queue head and calibration (hymenoptera, 30 labels)\n",
        f"Pool: hymenoptera train/ ({record['pool_images']} photos, {LABELS} labelled), held-out: val/ "
        f"({test_images} photos; one photo is {100 / test_images:.2f} points). Default model on "
        f"{record['backbone']} features; {len(runs)} seeds, mean ± std over seeds. "
        f"Commit {machine['commit'][:8]}, torch {machine['torch']}, {machine['cpus']} CPUs.\n",
        f"| queue: first {HEAD} served | before (one query over the head) | after (rounds) |",
        "|---|---|---|",
        f"| among the {TOP} most uncertain | "
        + " | ".join(interval([r["queue"][when]["hits"] for r in runs]) for when in ("before", "after"))
        + " |",
        "| mean entropy (pool mean "
        + interval([r["queue"]["pool_mean_entropy"] for r in runs])
        + ", top-20 mean "
        + interval([r["queue"]["top_mean_entropy"] for r in runs])
        + ") | "
        + " | ".join(interval([r["queue"][when]["mean_entropy"] for r in runs]) for when in ("before", "after"))
        + " |",
        "",
        "| calibration on val/ | T = 1 | before (fit, clipped to [0.5, 20]) | after (calibrate) |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("temperature", "temperature"),
        ("ece", "ECE (10 bins)"),
        ("nll", "NLL"),
        ("accuracy", "accuracy"),
        ("share_at_99", "share of predictions >= 99%"),
    ):
        cells = [interval([r["calibration"][when][key] for r in runs]) for when in ("uncalibrated", "before", "after")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Held-out labels inside training per seed: " + ", ".join(str(r["held_out_labels"]) for r in runs)]
    lines += ["", "Calibration decisions: " + "; ".join(sorted({r["calibration_reason"] for r in runs}))]
    return "\n".join(lines) + "\n"


def main(out_dir: Path = RESULTS, quick: bool = False, *, seeds: int = 3, data: Path = HYMENOPTERA) -> dict[str, Any]:
    import torch

    from core.registry import DEFAULT_BACKBONE

    torch.set_num_threads(1)  # small models: benchmarks/results/threads.md
    seeds = 1 if quick else seeds
    pool, pool_truth, names = photo_features(data, "train", DEFAULT_BACKBONE)
    val, val_truth, val_names = photo_features(data, "val", DEFAULT_BACKBONE)
    assert names == val_names, (names, val_names)
    runs = []
    for seed in range(seeds):
        runs.append(measure_seed(seed, pool, pool_truth, val, val_truth, names, DEFAULT_BACKBONE))
        print(json.dumps(runs[-1]["queue"]), json.dumps(runs[-1]["calibration"]["after"]), flush=True)
    rows = [
        {
            "seed": run["seed"],
            "queue_hits_before": run["queue"]["before"]["hits"],
            "queue_hits_after": run["queue"]["after"]["hits"],
            "ece_before": run["calibration"]["before"]["ece"],
            "ece_after": run["calibration"]["after"]["ece"],
            "temperature_before": run["calibration"]["before"]["temperature"],
            "temperature_after": run["calibration"]["after"]["temperature"],
        }
        for run in runs
    ]
    record = {
        "benchmark": "loop_truth",
        "note": f"first {HEAD} served among the {TOP} most uncertain; ECE on hymenoptera val/ (loop_truth.md)",
        "backbone": DEFAULT_BACKBONE,
        "pool_images": len(pool),
        "val_images": len(val),
        "labels": LABELS,
        "machine": machine_record(),
        "runs": runs,
        "rows": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "loop_truth.json").write_text(json.dumps(record, indent=2) + "\n")
    (out_dir / "loop_truth.md").write_text(markdown(record))
    print(markdown(record))
    return record


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=HYMENOPTERA)
    options = parser.parse_args()
    main(seeds=options.seeds, data=options.data)
