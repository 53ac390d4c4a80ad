"""Device handling in one place: which device to run on, and whether mixed precision applies there."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class DeviceError(ValueError):
    """A device spec that names no device this machine has."""


def resolve_device(spec: str = "auto") -> torch.device:
    """``"auto"`` -> cuda when present, else cpu; otherwise ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise DeviceError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r} asked for, but this machine has no usable CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' asked for, but MPS is not available")
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for mixed precision on ``device``, or None where it does not pay (cpu)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Mixed precision on cuda when ``enabled``; a no-op elsewhere."""
    dtype = amp_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def needs_grad_scaler(device: torch.device, enabled: bool) -> bool:
    """float16 autocast needs loss scaling; bfloat16 has float32's range and does not."""
    return enabled and amp_dtype(device) == torch.float16


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Evaluate without gradients, then put the module back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)
