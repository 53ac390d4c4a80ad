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


def small_model_threads(image_shape: tuple[int, ...]) -> int | None:
    """The intra-op threads a model on rows of ``image_shape`` trains and scores with on the cpu: 1 for small
    models (feature vectors (D,) and images under SMALL_IMAGE_SIDE px), None (torch's own) for larger ones.

    A small model's steps are too small to split: the threads wait on each other, and spin against other
    processes on a busy machine. Measured on the shared 2-core machine (benchmarks/results/threads.md): M2
    with its linear q(y|x) on 1,280-d features ran 13.9 steps/s on 1 thread against 1.6 on 2 (load 2-4.5
    from other work), and 3.1 against 0.5 beside 2 busy processes; M2 on 8x8 digits 12-13 against 0.5-2.7.
    Photo-sized pixel models keep torch's setting: where cores are free their convolutions use them."""
    from core.registry import SMALL_IMAGE_SIDE

    small = len(image_shape) == 1 or image_shape[1] < SMALL_IMAGE_SIDE  # (D,) or (C, H, W)
    return 1 if small else None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Torch's intra-op threads set to ``threads`` inside the block (None: left alone), restored after."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
