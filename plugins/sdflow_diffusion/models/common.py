"""What every loader shares: file suffixes, quiet loading, the VAE's dtype,
models built without their weights.

A leaf: the loaders (:mod:`.single_file`, :mod:`.diffusers_folder`) and
:mod:`.load`, which chooses between them, all import it; it imports none.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")  # torch.save's formats: loading one can run code
CHECKPOINT_SUFFIXES = (".safetensors", ".sft", *PICKLE_SUFFIXES)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence diffusers' and transformers' advice, warnings and progress
    bars while loading: sdflow reports progress itself, and a user's output
    stays clean.  Real failures still raise."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled())
             for lib in (diffusers_logging, transformers_logging)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lib, verbosity, bar in saved:
            lib.set_verbosity(verbosity)
            lib.enable_progress_bar() if bar else lib.disable_progress_bar()


def vae_dtype(vae_config: Any, dtype: Any) -> Any:
    """SDXL's VAE overflows in fp16 (its config says ``force_upcast``), so
    it stays in fp32 when fp16 is asked for; other VAEs follow the run.
    Decided from the config, so that the weights load in that dtype."""
    import torch

    if dtype == torch.float16 and vae_config.get("force_upcast", False):
        return torch.float32
    return dtype


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build models whose parameters are on the meta device (no memory, no
    random initialisation: an init function does nothing to a meta tensor)
    and whose buffers are real.

    ``torch.device("meta")`` would put the buffers there too, and a buffer
    that is not saved with the weights would then have no value at all
    (CLIP's ``position_ids``, made by ``torch.arange`` in its constructor).
    So, as accelerate's ``init_empty_weights`` does, each parameter is moved
    to the meta device as its module registers it; the uninitialised memory
    it was created in is never touched and is freed at once.  The loader
    then gives every parameter its tensor (``load_state_dict(assign=True)``).

    It swaps ``torch.nn.Module.register_parameter`` while the models are
    built, as accelerate and transformers' ``no_init_weights`` swap functions
    of torch, under a lock so that two loaders never interleave their swaps;
    a module another thread built meanwhile would get meta parameters too
    (sdflow builds its models in one thread).
    """
    import torch

    with _BUILDING:
        register = torch.nn.Module.register_parameter

        def on_meta(module, name, param):
            if param is not None and param.device.type != "meta":
                param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            register(module, name, param)

        torch.nn.Module.register_parameter = on_meta
        try:
            yield
        finally:
            torch.nn.Module.register_parameter = register


_BUILDING = threading.RLock()
