"""Weights kept in memory narrower than the run computes (``--weight-dtype``).

A checkpoint stored in fp16 (or bf16, or fp8) and run in fp32, as every run
on the CPU is, used to be widened to fp32 as it loaded: twice the file's
size in memory, most of it idle at any moment.  With ``--weight-dtype
file`` (the default on the CPU) each parameter stays as the file stores it,
and each module that owns a narrow one widens it as the module is called
and drops the wide copy when the call returns (:func:`compute_in`).  A layer
then computes with exactly the weights a widened load would have held (a
narrower float converts to a wider one exactly), so the images are the same
to the last bit; the U-Net and the text encoders take half the memory; each
call of a layer pays one conversion of its weights (on full-size SD 1.5 on
two cores, 0.4 s a step, 12% of a step at 256x256, a smaller share at larger
sizes, and the load takes half the time: benchmarks/README.md, weight_dtype.py).  On the CPU the narrow weights are not even copied:
they are views of the file's mapping (:mod:`.tensor_file`).

ComfyUI's "manual cast" and diffusers' layerwise casting do the same for
fp8 weights on GPUs.  Here it is forward hooks on the modules that own
narrow parameters (not diffusers' own hooks, which skip norm layers and
write each weight back to the storage dtype after every call); a module
that reads a weight other than through its own call would see the narrow
one, which is why the VAE, whose decoder reads its dtype off its first
parameter, is always widened (it is small).  A ControlNet file's weights
are kept as a checkpoint's U-Net's are (:mod:`.controlnet`).  Code that changes weights in
place (a LoRA, :mod:`.patches`) first asks :func:`widen` for a wide weight
to change, which keeps the narrow one untouched.

Imports torch; imports nothing of the plugin.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from sdflow.plugin import StageError

_RUNS_IN = "_sdflow_runs_in"  # the module attribute: the dtype its narrow parameters are widened to
_CALLS = "_sdflow_widened"  # the module attribute: per call in progress, the narrow parameters it put aside

WEIGHT_DTYPE_HELP = "use --weight-dtype run (or auto) with --compile"


def keeps_file_dtype(settings: Any, device: torch.device) -> bool:
    """Whether a checkpoint's weights stay in the file's dtype where it is
    narrower than the run's: ``--weight-dtype file``, or ``auto`` on the CPU.
    Not with ``--compile``, whose graph would have to trace the hooks."""
    if settings.weight_dtype == "run":
        return False
    if settings.compile:
        if settings.weight_dtype == "file":
            raise StageError("--weight-dtype file cannot be combined with --compile: the compiled U-Net reads "
                             "its weights in the run's dtype", WEIGHT_DTYPE_HELP)
        return False
    return settings.weight_dtype == "file" or device.type == "cpu"


def kept_dtype(stored: torch.dtype, dtype: torch.dtype) -> torch.dtype:
    """The dtype a parameter stored as ``stored`` is kept in for a run in
    ``dtype`` when weights keep the file's: ``stored`` if it is a narrower
    float, which widens to ``dtype`` exactly; else ``dtype`` (converted as it loads)."""
    if stored.is_floating_point and dtype.is_floating_point and stored.itemsize < dtype.itemsize:
        return stored
    return dtype


def compute_in(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` with each of its modules that owns a parameter not in
    ``dtype`` widening it to ``dtype`` for the length of each call; the
    parameters stay as they are between calls.  Once per model."""
    for module in model.modules():
        if any(_narrow(param, dtype) for param in module._parameters.values()):
            setattr(module, _RUNS_IN, dtype)
            setattr(module, _CALLS, [])
            module.register_forward_pre_hook(_widen_for_call)
            module.register_forward_hook(_narrow_after_call, always_call=True)
    return model


def runs_in(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype :func:`compute_in` widens ``module``'s parameters to, or
    None where they are kept as they run."""
    return getattr(module, _RUNS_IN, None)


def widen(module: torch.nn.Module, name: str) -> Callable[[], None] | None:
    """Put a wide copy of ``module``'s parameter ``name`` in its place, to be
    changed in place, and return what puts the narrow one back; None where
    the parameter is already in the dtype its module runs in."""
    dtype = runs_in(module)
    narrow = module._parameters[name]
    if dtype is None or not _narrow(narrow, dtype):
        return None
    module._parameters[name] = _wide(narrow, dtype)

    def restore() -> None:
        module._parameters[name] = narrow

    return restore


def _narrow(param: Any, dtype: torch.dtype) -> bool:
    return param is not None and param.is_floating_point() and param.dtype != dtype


def _wide(param: torch.nn.Parameter, dtype: torch.dtype) -> torch.nn.Parameter:
    return torch.nn.Parameter(param.detach().to(dtype), requires_grad=False)


def _widen_for_call(module: torch.nn.Module, args: Any) -> None:
    dtype = getattr(module, _RUNS_IN)
    aside: list[tuple[str, Any]] = []
    getattr(module, _CALLS).append(aside)  # a list per call (a module may be called inside its own call), kept
    for name, param in list(module._parameters.items()):  # first: a widening that fails is put back too
        if _narrow(param, dtype):
            aside.append((name, param))
            module._parameters[name] = _wide(param, dtype)


def _narrow_after_call(module: torch.nn.Module, args: Any, output: Any) -> None:
    module._parameters.update(getattr(module, _CALLS).pop())
