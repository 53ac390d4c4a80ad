"""Checkpoints: written atomically, loaded on any device, carrying the taxonomy, input scaling and metrics
they were trained with."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from core.data import FeatureScaler
from core.density import LatentDensity
from core.device import resolve_device
from core.taxonomy import Taxonomy
from core.training.build import build_model
from core.training.config import (
    TrainConfig,
    TrainedModel,
)

CHECKPOINT_FORMAT = 1


def save_checkpoint(trained: TrainedModel, path: Path | str) -> Path:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": trained.config.to_dict(),
        "taxonomy": trained.taxonomy.to_dict(),
        "image_shape": list(trained.image_shape),
        "metrics": trained.metrics,
        "temperature": float(trained.temperature),
        "latent_density": trained.latent_density.to_state() if trained.latent_density else None,
        "scaler": trained.scaler.to_state() if trained.scaler else None,
        "state_dict": {k: v.detach().cpu() for k, v in trained.model.state_dict().items()},
    }
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path | str, device: str | torch.device | None = None) -> TrainedModel:
    """A model saved by ``save_checkpoint``, on ``device`` (default: the config's device, resolved)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable checkpoint: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a Latent Labeller checkpoint (format {CHECKPOINT_FORMAT})")
    config = TrainConfig.from_dict(payload["config"])
    taxonomy = Taxonomy.from_dict(payload["taxonomy"])
    image_shape = tuple(int(v) for v in payload["image_shape"])
    model = build_model(config, taxonomy, image_shape, load_vgg_weights=False)
    model.load_state_dict(payload["state_dict"])
    # Default "auto", not the config's device: a model trained on a GPU box must load on a laptop.
    device = resolve_device(device or "auto") if not isinstance(device, torch.device) else device
    density = payload.get("latent_density")
    scaler = payload.get("scaler")
    return TrainedModel(
        model=model.to(device).eval(),
        taxonomy=taxonomy,
        config=config,
        metrics=payload["metrics"],
        temperature=float(payload["temperature"]),
        image_shape=image_shape,  # type: ignore[arg-type]
        latent_density=LatentDensity.from_state(density) if density else None,
        scaler=FeatureScaler.from_state(scaler) if scaler else None,
    )
