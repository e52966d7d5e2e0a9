"""ComfyUI's KSampler, in sdflow's own code: schedule, start, sampler, one denoiser.

The run, step by step, as ComfyUI makes it:

1. the model's noise table (:class:`NoiseTable`, from the family's betas and
   zero-terminal-SNR flag) and the named schedule's sigmas, with ``denoise``,
   the sampler's dropped penultimate sigma, and the advanced sampler's
   ``start_at_step``/``end_at_step`` applied (:func:`sigmas_for`);
2. the starting noise, drawn on the CPU from the seed (image ``i`` of a batch
   from ``seed + i``, so one image of a batch equals a run of one), scaled to
   the first sigma and added to the input latent (:func:`start_noise`);
   a noise mask and an inpainting U-Net's channels become denoiser hooks
   (:mod:`sdflow_diffusion.numerics.inpaint`);
3. the sampler (:mod:`sdflow_diffusion.numerics.samplers`) over the sigmas,
   asking the :class:`Denoiser` (the U-Net, guidance and every hook) for a
   clean-latent estimate at each of its model calls, and drawing the noise
   of ancestral and SDE steps from per-image CPU generators or Brownian
   trees seeded like the starting noise.
"""

from __future__ import annotations

import math

import torch

from sdflow_diffusion.handles import Conditioning, Latent, ModelHandle
from sdflow_diffusion.numerics.denoiser import Denoiser, DenoiserHook, image_seeds, initial_noise, start_noise
from sdflow_diffusion.numerics.inpaint import sampler_hooks
from sdflow_diffusion.numerics.schedules import NoiseTable, schedule
from sdflow_diffusion.numerics.space import check_space, tagged


def sigmas_for(table: NoiseTable, scheduler: str, steps: int, denoise: float = 1.0,
               discard_penultimate: bool = False, start_at_step: int | None = None,
               end_at_step: int | None = None, full_denoise_at_end: bool = False) -> torch.Tensor:
    """The sigmas to sample at, as ComfyUI's KSampler and KSamplerAdvanced
    cut them: the schedule (``denoise`` < 1 takes the tail of a longer one),
    then up to ``end_at_step`` (its last sigma set to 0 when
    ``full_denoise_at_end``), then from ``start_at_step``.  Empty when
    nothing is left to sample."""
    sigmas = schedule(table, scheduler, steps, denoise, discard_penultimate)
    if end_at_step is not None and end_at_step < len(sigmas) - 1:
        sigmas = sigmas[: end_at_step + 1].clone()
        if full_denoise_at_end:
            sigmas[-1] = 0
    if start_at_step is not None:
        sigmas = sigmas[start_at_step:] if start_at_step < len(sigmas) - 1 else sigmas[:0]
    return sigmas


@torch.no_grad()
def ksample(model: ModelHandle, positive: Conditioning, negative: Conditioning, latent: Latent, *,
            seed: int, steps: int, cfg: float, sampler: str, scheduler: str, denoise: float = 1.0,
            start_at_step: int | None = None, end_at_step: int | None = None, add_noise: bool = True,
            full_denoise_at_end: bool = False, options: dict | None = None,
            hooks: tuple[DenoiserHook, ...] = (), progress=None) -> Latent:
    """Denoise ``latent`` as ComfyUI's KSampler (Advanced) does; ``options``
    are the sampler's own (eta, s_noise ...)."""
    from sdflow_diffusion.numerics.samplers import SAMPLERS, brownian_noise, gaussian_noise

    check_space(latent, model.family, "the model")
    info = SAMPLERS[sampler]
    table = NoiseTable.from_scheduler_config(model.family.scheduler_config)
    sigmas = sigmas_for(table, scheduler, steps, denoise, info.discard_penultimate,
                        start_at_step, end_at_step, full_denoise_at_end)
    start = latent.samples.to(model.device, torch.float32)
    if len(sigmas) < 2:  # nothing to sample: the latent as it came
        return Latent(latent.samples.clone(), latent.noise_mask, dict(latent.extra))
    batch_index = latent.extra.get("batch_index")
    noise, _generators = initial_noise(start.shape, seed, batch_index)
    noise = noise.to(model.device) if add_noise else torch.zeros_like(start)
    x = start_noise(table, sigmas, noise, start)
    guided = not math.isclose(cfg, 1.0)
    hooks = sampler_hooks(model, latent, start, noise, seed, info.inpaint_fresh_noise) + tuple(hooks)
    denoiser = Denoiser(model, table, positive, negative, x.shape, cfg, guided, hooks)
    seeds = image_seeds(seed, x.shape[0], batch_index)
    noise_sampler = None
    if info.brownian:
        noise_sampler = brownian_noise(x, sigmas, seeds)
    elif info.stochastic:
        noise_sampler = gaussian_noise(x, seeds)
    step = (lambda i: progress.step()) if progress is not None else None
    x = info.function(denoiser, x, sigmas, noise=noise_sampler, step=step, **(options or {}))
    return Latent(x.float().cpu(), latent.noise_mask, tagged(latent.extra, model.family))
