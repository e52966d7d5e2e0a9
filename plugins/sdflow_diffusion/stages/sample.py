"""sample and sample_advanced: ComfyUI's KSampler and KSamplerAdvanced, with its numbers."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sdflow.plugin import ComfyNode, Params, Port, stage
from sdflow_diffusion.numerics import sampler_table

# ComfyUI's sampler names run sdflow's implementation of ComfyUI's samplers;
# "diffusers:<name>" runs a diffusers scheduler (sampler_table.py says which).
Sampler = Literal[sampler_table.sampler_names()]  # type: ignore[valid-type]
Scheduler = Literal[sampler_table.COMFY_SCHEDULES]  # type: ignore[valid-type]

MAX_SEED = 2**64 - 1

_INPUTS = {
    "model": Port("MODEL", "the U-Net"),
    "positive": Port("CONDITIONING", "what to draw"),
    "negative": Port("CONDITIONING", "what to steer away from"),
    "latent": Port("LATENT", "the latent to start from"),
}
_OUTPUTS = {"latent": Port("LATENT", "the denoised latent")}


class _Core(Params):
    """What both sampling stages take, in ComfyUI's order."""

    seed: int = Field(0, ge=0, le=MAX_SEED, description="noise seed; image i of a batch uses seed + i")
    steps: int = Field(20, ge=1, le=10000, description="denoising steps")
    cfg: float = Field(8.0, ge=0.0, le=100.0,
                       description="classifier-free guidance scale (at 1 the negative is not run)")
    sampler: Sampler = Field(
        "euler",
        description="sampling method: ComfyUI's names give ComfyUI's numbers; "
        "'diffusers:<name>' uses a diffusers scheduler over the family's own timestep spacing",
    )
    scheduler: Scheduler = Field("normal", description="noise schedule, by ComfyUI's name")

    @field_validator("scheduler")
    @classmethod
    def _pair_runs(cls, scheduler: str, info: ValidationInfo) -> str:
        """Not every engine has every pair: say so at check time, not after
        the model has loaded."""
        sampler = info.data.get("sampler", "euler")
        reason = sampler_table.supported(sampler, scheduler)
        if reason is not None:
            raise ValueError(reason)
        return scheduler


class _Options(Params):
    """The options of ComfyUI's custom-sampler nodes that sample takes."""

    eta: float | None = Field(None, ge=0.0, le=100.0,
                              description="ancestral and SDE samplers: how much fresh noise each step adds (1 if not given)")
    s_noise: float | None = Field(None, ge=0.0, le=100.0,
                                  description="the scale of the sampler's fresh noise (1 if not given)")

    @model_validator(mode="after")
    def _options_fit(self):
        for option in ("eta", "s_noise"):
            if getattr(self, option) is not None and option not in sampler_table.SAMPLER_OPTIONS.get(self.sampler, ()):
                takes = [s for s, options in sampler_table.SAMPLER_OPTIONS.items() if option in options]
                raise ValueError(f"sampler '{self.sampler}' has no {option}; the samplers that do: {', '.join(takes)}")
        return self

    def sampler_options(self) -> dict[str, float]:
        return {k: v for k, v in (("eta", self.eta), ("s_noise", self.s_noise)) if v is not None}


class _Denoise(Params):
    denoise: float = Field(1.0, ge=0.0, le=1.0, description="share of the schedule to run (img2img below 1)")


class _Range(Params):
    add_noise: bool = Field(True, description="add the seed's noise to the latent first (off: go on from a "
                                              "latent that has its noise, e.g. another sampler's leftover)")
    start_at_step: int = Field(0, ge=0, le=10000, description="the first step of the schedule to run")
    end_at_step: int = Field(10000, ge=0, le=10000, description="the step to stop at (past the end: run to the end)")
    return_with_leftover_noise: bool = Field(
        False, description="stop at end_at_step with the noise left (for another sampler to finish); "
                           "off: the last step goes all the way to a clean latent")


class Sample(_Options, _Denoise, _Core):
    pass


class SampleAdvanced(_Options, _Range, _Core):
    @model_validator(mode="after")
    def _diffusers_ends_noisy(self):
        """The diffusers engine splits a schedule as the SDXL pipelines'
        denoising_end does: a part that stops early keeps its noise."""
        if self.sampler.startswith(sampler_table.DIFFUSERS) and not self.return_with_leftover_noise \
                and self.end_at_step < self.steps:
            raise ValueError(f"the diffusers engine ('{self.sampler}') stops a schedule early with its noise left, "
                             f"as the pipelines' denoising_end does, and cannot end clean at step "
                             f"{self.end_at_step} of {self.steps}: set return_with_leftover_noise=true, or use "
                             f"ComfyUI's '{self.sampler.removeprefix(sampler_table.DIFFUSERS)}'")
        return self


def _comfyuis_sampler(params) -> bool:
    """ComfyUI's KSampler runs ComfyUI's samplers, not diffusers' engine."""
    return not params.sampler.startswith(sampler_table.DIFFUSERS)


_SWITCH = {"enable": True, "disable": False}  # how ComfyUI's KSampler (Advanced) spells a boolean


# 0.2: ComfyUI's names give ComfyUI's numbers (diffusers' are "diffusers:<name>").
@stage(params=Sample, inputs=_INPUTS, outputs=_OUTPUTS, version="0.2.0",
       comfyui=ComfyNode("KSampler", inputs="model positive negative latent_image>latent",
                         widgets="seed+ steps cfg sampler_name>sampler scheduler denoise", title="KSampler",
                         when=_comfyuis_sampler))
def sample(ctx, params: Sample, model, positive, negative, latent) -> dict:
    """Denoise a latent with the U-Net, guided by the prompts. ComfyUI: KSampler."""
    from sdflow_diffusion.numerics.sampling import sample as run_sampler

    with ctx.progress(params.steps, "steps") as progress:
        with _compile_warmup(ctx, progress) as counted:
            denoised = run_sampler(model, positive, negative, latent, params, progress=counted)
    _record_seeds(ctx, params, latent)
    return {"latent": denoised}


@stage(params=SampleAdvanced, inputs=_INPUTS, outputs=_OUTPUTS,
       comfyui=ComfyNode("KSamplerAdvanced", inputs="model positive negative latent_image>latent",
                         widgets="add_noise noise_seed>seed+ steps cfg sampler_name>sampler scheduler "
                                 "start_at_step end_at_step return_with_leftover_noise",
                         title="KSampler (Advanced)", when=_comfyuis_sampler,
                         values={"add_noise": _SWITCH, "return_with_leftover_noise": _SWITCH}))
def sample_advanced(ctx, params: SampleAdvanced, model, positive, negative, latent) -> dict:
    """Run part of a schedule: from start_at_step to end_at_step, with or without adding noise,
    ending clean or with the noise left for another sampler (a refiner, a second pass).
    ComfyUI: KSamplerAdvanced."""
    from sdflow_diffusion.numerics.sampling import sample_advanced as run_sampler

    end = min(params.end_at_step, params.steps)
    with ctx.progress(max(end - params.start_at_step, 0), "steps") as progress:
        with _compile_warmup(ctx, progress) as counted:
            denoised = run_sampler(model, positive, negative, latent, params, progress=counted)
    _record_seeds(ctx, params, latent)
    return {"latent": denoised}


@contextmanager
def _compile_warmup(ctx, progress):
    """With --compile, the sampler's progress timed step by step, and a
    ``compile_warmup`` event (``--json``) after it: the first step's
    seconds, which in a process's first sampling of a model include
    compiling the U-Net, beside the median of the other steps'."""
    if not ctx.settings.compile:
        yield progress
        return
    timed = _StepTimes(progress)
    yield timed
    if timed.seconds:
        later = sorted(timed.seconds[1:])
        ctx.emit("compile_warmup", first_step_seconds=round(timed.seconds[0], 3),
                 step_seconds=round(later[len(later) // 2], 4) if later else None, steps=len(timed.seconds))


class _StepTimes:
    """A progress counter that also keeps each step's seconds."""

    def __init__(self, progress) -> None:
        self.progress, self.seconds, self._last = progress, [], time.perf_counter()

    def step(self, n: int = 1) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now
        self.progress.step(n)


def _record_seeds(ctx, params, latent) -> None:
    """Each image's seed, for the images saved downstream (save_image)."""
    from sdflow_diffusion.numerics.denoiser import image_seeds

    ctx.record(seeds=image_seeds(params.seed, latent.samples.shape[0], latent.extra.get("batch_index")))
