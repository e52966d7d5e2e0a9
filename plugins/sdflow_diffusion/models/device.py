"""Which device and dtype a run uses: ``--device`` and ``--dtype``.

``auto`` is CUDA in fp16 where there is a GPU, else the CPU in fp32.  An
explicit choice the machine cannot honour is an error, not a silent
fallback: a recipe kept for reproduction must say what it ran on.
"""

from __future__ import annotations

import torch

from sdflow.plugin import StageError

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_device(settings) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of ``settings`` (the plugin's DiffusionSettings,
    which imports this module for its ``resolved()``: not imported here)."""
    device = _device(settings.device)
    if settings.dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    elif settings.dtype in _DTYPES:
        dtype = _DTYPES[settings.dtype]
    else:
        raise StageError(f"unknown dtype '{settings.dtype}'", "choose auto, fp16, bf16 or fp32")
    if device.type == "cpu" and dtype == torch.float16:
        raise StageError("fp16 is not supported on the CPU", "use --dtype fp32 (or bf16) on the CPU")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise StageError("this GPU does not support bf16", "use --dtype fp16")
    return device, dtype


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("--device cuda was asked for, but torch sees no CUDA GPU",
                         f"use --device auto or cpu (torch {torch.__version__})")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise StageError("--device mps was asked for, but this machine has no Apple GPU", "use --device auto")
    if name not in ("cpu", "cuda", "mps"):
        raise StageError(f"unknown device '{name}'", "choose auto, cuda, cpu or mps")
    return torch.device(name)


def dtype_name(dtype: torch.dtype) -> str:
    """``fp16``, ``bf16`` or ``fp32``: a dtype as the settings write it."""
    return next((name for name, known in _DTYPES.items() if known == dtype), str(dtype))
