"""What a trained model's decoder makes: reconstructions of given images, and images drawn for each leaf
(what the model thinks each sub-class looks like; only M2 and M1+M2 can, M1's decoder knows no classes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from core.data import to_float
from core.device import eval_mode

if TYPE_CHECKING:
    from core.training import TrainedModel


def samples_per_leaf(trained: TrainedModel, per_leaf: int = 8, *, seed: int = 0) -> dict[str, np.ndarray]:
    """``{leaf name: uint8 array (per_leaf, H, W, C)}``: z ~ N(0, I), x = E[p(x | y, z)] for every leaf y."""
    model = trained.model
    if not hasattr(model, "sample"):
        raise ValueError(f"a {trained.config.model} model has no class-conditional decoder to sample from")
    device = next(model.parameters()).device
    leaves = torch.arange(trained.taxonomy.num_leaves, device=device).repeat_interleave(per_leaf)
    generator = torch.Generator(device=device).manual_seed(seed)
    with eval_mode(model):
        images = model.sample(leaves, generator).clamp(0, 1).float().cpu().numpy()
    pixels = np.rint(images * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    rows = pixels.reshape(trained.taxonomy.num_leaves, per_leaf, *pixels.shape[1:])
    return dict(zip(trained.taxonomy.leaf_names, rows, strict=True))


def reconstruct(trained: TrainedModel, pixels: np.ndarray) -> np.ndarray:
    """uint8 images (N, C, H, W) at the model's input size in, decoder reconstructions out as uint8 (N, H, W, C)."""
    model = trained.model
    if not hasattr(model, "reconstruct"):
        raise ValueError(f"a {trained.config.model} model has no decoder to reconstruct with")
    device = next(model.parameters()).device
    with eval_mode(model):
        output = model.reconstruct(to_float(torch.from_numpy(pixels)).to(device)).clamp(0, 1).float().cpu().numpy()
    return np.rint(output * 255).astype(np.uint8).transpose(0, 2, 3, 1)
