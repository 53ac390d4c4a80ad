"""Multi-GPU (or multi-process cpu) data-parallel training through torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m core.ddp \\
        --pool pool.npz --taxonomy taxonomy.json --config config.json --out model.pt

Every rank runs the same ``fit``; it sees torch.distributed initialised, wraps the model in
DistributedDataParallel and trains on its shard of each batch stream. Rank 0 writes the checkpoint.
Backend: nccl on cuda, gloo on cpu.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from core.data import load_pool
from core.taxonomy import Taxonomy
from core.training import Progress, TrainConfig, TrainedModel, fit, save_checkpoint


def parameter_digest(trained: TrainedModel) -> str:
    """sha256 of every parameter's bytes: equal on every rank when DDP kept the replicas in sync."""
    digest = hashlib.sha256()
    for name, tensor in sorted(trained.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def torchrun_command(
    nproc: int, pool: Path, taxonomy: Path, config: Path, out: Path, report_dir: Path | None = None
) -> list[str]:
    """The command line that trains with ``nproc`` processes on this machine."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "core.ddp", "--pool", str(pool), "--taxonomy", str(taxonomy), "--config", str(config),
        "--out", str(out),
    ]  # fmt: skip
    if report_dir is not None:
        command += ["--report-dir", str(report_dir)]
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.ddp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=Path, required=True, help=".npz written by core.data.save_pool")
    parser.add_argument("--taxonomy", type=Path, required=True, help="JSON: main class -> sub-class names")
    parser.add_argument("--config", type=Path, required=True, help="JSON of TrainConfig fields")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint path (written by rank 0)")
    parser.add_argument("--report-dir", type=Path, help="each rank writes rank<N>.json with its metrics")
    args = parser.parse_args(argv)

    config = TrainConfig.from_dict(json.loads(args.config.read_text()))
    taxonomy = Taxonomy.from_dict(json.loads(args.taxonomy.read_text()))
    pool = load_pool(args.pool)
    use_cuda = torch.cuda.is_available() and config.device != "cpu"
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        config.device = f"cuda:{local_rank}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    try:

        def show(progress: Progress) -> None:
            if progress.step == progress.steps_per_epoch:
                losses = ", ".join(f"{k}={v:.3f}" for k, v in progress.loss_terms.items())
                print(f"[{progress.phase}] epoch {progress.epoch}/{progress.epochs} {losses}", flush=True)

        trained = fit(pool, taxonomy, config, on_progress=show)
        if args.report_dir is not None:
            args.report_dir.mkdir(parents=True, exist_ok=True)
            report = {"rank": rank, "digest": parameter_digest(trained), "metrics": trained.metrics}
            (args.report_dir / f"rank{rank}.json").write_text(json.dumps(report, default=str))
        if rank == 0:
            save_checkpoint(trained, args.out)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
