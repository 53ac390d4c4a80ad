"""On a machine with CUDA: fit and score with mixed precision, and the checkpoint loads on the cpu.
Skipped elsewhere (CI has no GPU); run on a GPU box with ``pytest tests/test_core_cuda.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from core.data import LabelledPool
from core.scoring import score_pool
from core.taxonomy import Taxonomy
from core.training import TrainConfig, fit, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("model", ["m2", "m1m2", "supervised"])
def test_fit_and_score_on_cuda_with_amp(model, tmp_path):
    x, y = load_digits(return_X_y=True)
    images = np.round(x.reshape(-1, 1, 8, 8) * 255 / 16).astype(np.uint8)
    leaves = np.where(np.arange(len(y)) % 10 == 0, y, -1)
    pool = LabelledPool.from_leaf_labels(images[:1200], leaves[:1200], 10)
    taxonomy = Taxonomy.from_dict({str(d): [] for d in range(10)})
    config = TrainConfig(model=model, epochs=60, m1_epochs=60, device="cuda", amp=True, seed=0)
    trained = fit(pool, taxonomy, config)
    assert trained.metrics["device"].startswith("cuda") and trained.metrics["amp"] is True
    scores = score_pool(trained, images[1200:], mc_samples=4)
    accuracy = (scores.main_probs.argmax(1) == y[1200:]).mean()
    assert accuracy > 0.5, accuracy
    assert np.isfinite(scores.entropy).all() and np.isfinite(scores.latent_mean).all()
    path = save_checkpoint(trained, tmp_path / "model.pt")
    on_cpu = load_checkpoint(path, device="cpu")
    cpu_scores = score_pool(on_cpu, images[1200:1300], device="cpu", mc_samples=0)
    agreement = (cpu_scores.main_probs.argmax(1) == scores.main_probs[:100].argmax(1)).mean()
    assert agreement > 0.95  # bf16 on cuda vs float32 on cpu: the same decisions
    print(model, "cuda accuracy", accuracy, "images/s", trained.metrics["images_per_second"])


@pytest.mark.parametrize("model", ["m2", "m1m2"])
def test_fit_on_64px_rgb_on_cuda(model):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (256, 3, 64, 64), dtype=np.uint8)
    leaves = np.where(np.arange(256) % 4 == 0, np.arange(256) % 3, -1)
    pool = LabelledPool.from_leaf_labels(images, leaves, 3)
    taxonomy = Taxonomy.from_dict({"a": ["a1", "a2"], "b": []})
    trained = fit(pool, taxonomy, TrainConfig(model=model, epochs=2, m1_epochs=2, device="cuda"))
    scores = score_pool(trained, images, mc_samples=2)
    assert scores.main_probs.shape == (256, 2) and np.isfinite(scores.bald).all()
