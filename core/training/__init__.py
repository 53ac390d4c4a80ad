"""Training: ``fit(pool, taxonomy, config) -> TrainedModel``, checkpoints, and the progress callback.

``config`` holds TrainConfig and what training returns, ``build`` the model builder and its automatic
choices, ``loop`` the fitting loop, ``checkpoint`` saving and loading.
"""

from core.training.build import balanced_leaves, build_model, resolve_balance
from core.training.checkpoint import load_checkpoint, save_checkpoint
from core.training.config import Progress, TrainConfig, TrainedModel, TrainingCancelled, TrainingDiverged
from core.training.loop import fit, nearest_neighbours

__all__ = [
    "Progress",
    "TrainConfig",
    "TrainedModel",
    "TrainingCancelled",
    "TrainingDiverged",
    "balanced_leaves",
    "build_model",
    "fit",
    "load_checkpoint",
    "nearest_neighbours",
    "resolve_balance",
    "save_checkpoint",
]
