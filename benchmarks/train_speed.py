"""Training throughput of the convolutional M2 at 64x64 RGB, and how a step's cost grows with K leaves.

Also the memory format ``core.training.fit`` uses (channels-last) against plain NCHW, on the same batches
in the same process, at 28x28 greyscale (the small CNN of MNIST-like sets) and 64x64 RGB, 4 leaves.

For K = 2, 12, 24: the median wall time of one optimisation step (64 unlabelled + 32 labelled images,
forward + backward + Adam) of the conv M2, as ``core.training.fit`` runs it. Baselines in the same
process and on the same batches: the supervised classifier step (q(y|x) alone), and a naive M2 step that
runs the encoder trunk once per leaf instead of once per image (what the batched enumeration avoids).
Random pixels: a step costs the same whatever the images show.

    python -m benchmarks.train_speed [--quick] [--device cuda] [--amp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.device import autocast, needs_grad_scaler, resolve_device
from core.models import M2, LossTerms, set_loss
from core.taxonomy import Taxonomy
from core.training import TrainConfig, build_model

IMAGE_SHAPE = (3, 64, 64)
UNLABELLED, LABELLED = 64, 32


def naive_m2_loss(model: M2, x_unlabelled: torch.Tensor, x_labelled: torch.Tensor, admissible: torch.Tensor):
    """M2's loss with one full encoder pass per leaf (the loop of most reimplementations)."""

    def per_leaf_losses(x: torch.Tensor) -> torch.Tensor:
        columns = []
        for leaf in range(model.num_leaves):
            y = torch.full((len(x),), leaf, device=x.device)
            mean, log_var = model.encoder_z(model.encoder_z_trunk(x), y)
            z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
            kl = 0.5 * (mean.float() ** 2 + log_var.float().exp() - 1 - log_var.float()).sum(1)
            columns.append(-model.likelihood.log_prob(model.decoder(z, y), x) + kl - model.log_prior_y[leaf])
        return torch.stack(columns, dim=1)

    everything = torch.ones(len(x_unlabelled), model.num_leaves, dtype=torch.bool, device=x_unlabelled.device)
    unlabelled, _ = set_loss(model.classify(x_unlabelled), per_leaf_losses(x_unlabelled), everything)
    labelled, classification = set_loss(model.classify(x_labelled), per_leaf_losses(x_labelled), admissible)
    loss = unlabelled.mean() + labelled.mean() + model.alpha * classification.mean()
    return LossTerms(loss, {})


def time_steps(
    loss_fn: Callable[[], LossTerms],
    model: torch.nn.Module,
    device: torch.device,
    amp: bool,
    steps: int,
    warmup: int,
) -> list[float]:
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(device, amp) else None
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = loss_fn().loss.float()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
        else:
            loss.backward()
            optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return times


def measure(
    num_leaves: int,
    variant: str,
    device: torch.device,
    amp: bool,
    steps: int,
    warmup: int,
    *,
    image_shape: tuple[int, int, int] = IMAGE_SHAPE,
    channels_last: bool = True,
) -> dict:
    torch.manual_seed(0)
    taxonomy = Taxonomy.from_dict({f"c{i}": [] for i in range(num_leaves)})
    model_name = "supervised" if variant == "supervised" else "m2"
    # arch as fit chooses; balance resolved, as fit resolves it from the labels
    config = TrainConfig(model=model_name, classifier="cnn", likelihood="gaussian", balance=0.0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(config, taxonomy, image_shape).to(device, memory_format=memory_format).train()
    x_unlabelled = torch.rand(UNLABELLED, *image_shape, device=device).contiguous(memory_format=memory_format)
    x_labelled = torch.rand(LABELLED, *image_shape, device=device).contiguous(memory_format=memory_format)
    leaves = torch.randint(0, num_leaves, (LABELLED,), device=device)
    admissible = torch.nn.functional.one_hot(leaves, num_leaves).bool()
    if variant == "naive":
        loss_fn = lambda: naive_m2_loss(model, x_unlabelled, x_labelled, admissible)  # noqa: E731
    else:
        loss_fn = lambda: model(x_unlabelled, x_labelled, admissible)  # noqa: E731
    times = time_steps(loss_fn, model, device, amp, steps, warmup)
    median = statistics.median(times)
    images = LABELLED if variant == "supervised" else UNLABELLED + LABELLED
    return {
        "variant": variant,
        "image_shape": "x".join(map(str, image_shape)),
        "memory_format": "channels_last" if channels_last else "nchw",
        "leaves": num_leaves,
        "device": device.type,
        "amp": amp and device.type == "cuda",
        "median_step_ms": 1000 * median,
        "images_per_second": images / median,
        "steps_timed": len(times),
    }


def main(out_dir: Path, quick: bool, device: str = "cpu", amp_modes: tuple[bool, ...] = (False,)) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = resolve_device(device)
    on_gpu = target.type == "cuda"
    steps, warmup = (3, 1) if quick and not on_gpu else ((20, 5) if on_gpu else (7, 2))
    rows: list[dict[str, Any]] = []
    for amp in amp_modes:
        for k in (2, 12, 24):
            rows.append(measure(k, "supervised", target, amp, steps, warmup))
            rows.append(measure(k, "m2", target, amp, steps, warmup))
            if k == 12 or (k == 2 and not quick):
                # The naive loop is slow on a cpu: fewer steps suffice to show the gap.
                naive_steps = steps if on_gpu else 3
                rows.append(measure(k, "naive", target, amp, naive_steps, 1))
    formats: list[dict[str, Any]] = []
    for shape in ((1, 28, 28), IMAGE_SHAPE):
        for channels_last in (False, True):
            row = measure(4, "m2", target, False, steps, warmup, image_shape=shape, channels_last=channels_last)
            formats.append(row)
    for amp in amp_modes:
        batched = [r for r in rows if r["variant"] == "m2" and r["amp"] == (amp and on_gpu)]
        ks = np.array([r["leaves"] for r in batched], dtype=float)
        ms = np.array([r["median_step_ms"] for r in batched])
        slope, intercept = np.polyfit(ks, ms, 1)
        for r in rows:
            if r["amp"] == (amp and on_gpu):
                r["ms_per_extra_leaf"] = float(slope) if r["variant"] == "m2" else ""
                r["step_ms_at_k0_fit"] = float(intercept) if r["variant"] == "m2" else ""
    machine = (
        torch.cuda.get_device_name(target)
        if on_gpu
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
        f"{torch.get_num_threads()} torch threads"
    )
    result = {
        "name": "train_speed" if not on_gpu else "train_speed_cuda",
        "quick": quick,
        "machine": machine,
        "note": (
            f"Conv M2 at 64x64 RGB, one step = {UNLABELLED} unlabelled + {LABELLED} labelled images "
            "(forward, backward, Adam), median over timed steps after warm-up. 'supervised' = the classifier "
            "alone on the labelled batch; 'naive' = M2 with the encoder trunk run once per leaf. "
            "ms_per_extra_leaf: slope of a straight-line fit of the M2 step time against K. The last four rows: "
            "M2 with 4 leaves in NCHW and in the channels-last format that fit uses, at 28x28 grey and 64x64 RGB."
        ),
        "rows": rows + formats,
    }
    (out_dir / f"{result['name']}.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="on cuda: measure with and without AMP")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    outcome = main(args.out, args.quick, args.device, (False, True) if args.amp else (False,))
    for row in outcome["rows"]:
        print(row)
