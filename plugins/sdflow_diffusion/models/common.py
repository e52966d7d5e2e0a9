"""What every loader shares: file suffixes, quiet loading, the VAE's dtype.

A leaf: the loaders (:mod:`.single_file`, :mod:`.diffusers_folder`) and
:mod:`.load`, which chooses between them, all import it; it imports none.
"""

from __future__ import annotations

import contextlib
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
