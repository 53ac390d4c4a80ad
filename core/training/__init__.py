"""Training: ``fit(pool, taxonomy, config) -> TrainedModel``, checkpoints, and the progress callback.

``config`` holds TrainConfig and what training returns, ``build`` the model builder and its automatic
choices, ``loop`` the fitting loop, ``checkpoint`` saving and loading, ``selection`` what ``model = "auto"``
chooses.
"""

from core.training.build import balanced_leaves, build_model, resolve_balance
from core.training.checkpoint import load_checkpoint, save_checkpoint
from core.training.config import Progress, TrainConfig, TrainedModel, TrainingCancelled, TrainingDiverged
from core.training.loop import fit, nearest_neighbours
from core.training.selection import CandidateScore, ModelSelection, select_model

__all__ = [
    "CandidateScore",
    "ModelSelection",
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
    "select_model",
]
