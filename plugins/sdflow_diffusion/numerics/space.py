"""Which model's latent space a latent is in, and the check that it fits where it goes.

A latent made by a model (sample) or a VAE (vae_encode) carries its
family's name and VAE scaling factor in ``Latent.extra["space"]``; a
sampler or VAE of another scale (an SDXL VAE on an SD 1.5 latent) is then
an error naming both, not a grey or burnt image.  An empty latent has no
space and fits everywhere.
"""

from __future__ import annotations

import math
from typing import Any

from sdflow.plugin import StageError
from sdflow_diffusion.handles import Family, Latent


def tagged(extra: dict[str, Any], family: Family) -> dict[str, Any]:
    """``extra`` saying the latent is in ``family``'s space."""
    return {**extra, "space": (family.name, family.vae_scaling_factor)}


def check_space(latent: Latent, family: Family, user: str) -> None:
    """Refuse ``latent`` for ``user`` (a model or VAE of ``family``) when it
    is in a space of another scale."""
    space = latent.extra.get("space")
    if space is None or math.isclose(space[1], family.vae_scaling_factor, rel_tol=1e-6):
        return
    raise StageError(f"the latent is in {space[0]}'s latent space (VAE scale {space[1]}), but {user} is "
                     f"{family.name}'s (scale {family.vae_scaling_factor})",
                     "decode and sample with the VAE and model of one family (load_vae family=... names "
                     "a separate VAE's)")
