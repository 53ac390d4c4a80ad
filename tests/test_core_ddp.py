"""Data-parallel training through torchrun: 2 cpu processes with the gloo backend on a tiny dataset."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
from sklearn.datasets import load_digits

from core.data import LabelledPool, save_pool
from core.ddp import parameter_digest, torchrun_command
from core.taxonomy import Taxonomy
from core.training import TrainConfig, load_checkpoint


def test_two_gloo_processes_train_one_model_and_agree(tmp_path):
    x, y = load_digits(return_X_y=True)
    images = np.round(x[:240].reshape(-1, 1, 8, 8) * 255 / 16).astype(np.uint8)
    leaves = np.where(np.arange(240) % 6 == 0, y[:240], -1)
    taxonomy = Taxonomy.from_dict({str(d): [] for d in range(10)})
    pool_path = save_pool(LabelledPool.from_leaf_labels(images, leaves, 10), tmp_path / "pool.npz")
    (tmp_path / "taxonomy.json").write_text(json.dumps(taxonomy.to_dict()))
    config = TrainConfig(model="m1m2", epochs=2, m1_epochs=1, batch_size=32, device="cpu", seed=1)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    command = torchrun_command(
        2, pool_path, tmp_path / "taxonomy.json", tmp_path / "config.json", tmp_path / "model.pt", tmp_path / "ranks"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    reports = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert reports[0]["metrics"]["world_size"] == 2
    assert reports[0]["digest"] == reports[1]["digest"]  # the replicas stayed identical
    assert reports[0]["metrics"]["val_nll"] == reports[1]["metrics"]["val_nll"]
    trained = load_checkpoint(tmp_path / "model.pt", device="cpu")
    assert parameter_digest(trained) == reports[0]["digest"]
    assert "[train] epoch 2/2" in result.stdout
