"""sample: the KSampler, ComfyUI's sampler and schedule names."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from sdflow.plugin import Params, Port, stage
from sdflow_diffusion.numerics import sampler_table

# ComfyUI's names that a diffusers scheduler serves (sampler_table.py maps
# each to its diffusers class and options).
Sampler = Literal[tuple(sampler_table.SAMPLERS)]  # type: ignore[valid-type]
Scheduler = Literal[tuple(sampler_table.SCHEDULES)]  # type: ignore[valid-type]

MAX_SEED = 2**64 - 1


class Sample(Params):
    seed: int = Field(0, ge=0, le=MAX_SEED, description="initial noise seed; image i uses seed + i")
    steps: int = Field(20, ge=1, le=10000, description="denoising steps")
    cfg: float = Field(8.0, ge=0.0, le=100.0, description="classifier-free guidance scale")
    sampler: Sampler = Field("euler", description="sampling method, by ComfyUI's name")
    scheduler: Scheduler = Field("normal", description="noise schedule, by ComfyUI's name")
    denoise: float = Field(1.0, ge=0.0, le=1.0, description="share of the schedule to run")

    @field_validator("scheduler")
    @classmethod
    def _pair_runs(cls, scheduler: str, info: ValidationInfo) -> str:
        """Not every diffusers scheduler has every noise schedule: say so at
        check time, not after the model has loaded."""
        sampler = info.data.get("sampler", "euler")
        reason = sampler_table.supported(sampler, scheduler)
        if reason is not None:
            raise ValueError(reason)
        return scheduler


@stage(
    params=Sample,
    inputs={
        "model": Port("MODEL", "the U-Net"),
        "positive": Port("CONDITIONING", "what to draw"),
        "negative": Port("CONDITIONING", "what to steer away from"),
        "latent": Port("LATENT", "the latent to start from"),
    },
    outputs={"latent": Port("LATENT", "the denoised latent")},
)
def sample(ctx, params: Sample, model, positive, negative, latent) -> dict:
    """Denoise a latent with the U-Net, guided by the prompts. ComfyUI: KSampler."""
    from sdflow_diffusion.numerics.sampling import sample as run_sampler

    with ctx.progress(params.steps, "steps") as progress:
        denoised = run_sampler(model, positive, negative, latent, params, progress=progress)
    return {"latent": denoised}
