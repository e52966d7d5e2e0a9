"""The sample stage's work: ComfyUI's KSampler, or a diffusers scheduler's loop.

ComfyUI's sampler names go to :func:`sdflow_diffusion.numerics.ksampling.ksample`
(ComfyUI's schedules and samplers, its numbers).  ``diffusers:<name>`` runs
the loop below over a diffusers scheduler.

The diffusers loop is the one diffusers' Stable Diffusion pipelines run (set the
timesteps, scale the start by ``init_noise_sigma``, per step scale the
input, ask the U-Net, apply classifier-free guidance, ``scheduler.step``),
written out here so that it can start from any latent, stop part way
(``denoise``), report progress and be interrupted.  On the CPU in float32 it
gives the pipelines' numbers bit for bit (tests/test_parity.py).

Randomness.  Image ``i`` of a batch has its own CPU ``torch.Generator``
seeded with ``seed + i``.  It first draws that image's starting noise, then
every noise an ancestral or SDE sampler adds, always on the CPU, and the
noise is then moved to the device.  So a seed gives the same start on any
device, and image ``i`` of a batch gets exactly the noise a batch of one
gets with seed ``seed + i`` (diffusers' pipelines do the same with a list of
CPU generators); its pixels match up to the last bits, which kernels may
round differently for another batch size.

The latent stays float32 on the device between steps, and only the U-Net's
input is cast to the model's dtype (as ComfyUI does); the returned latent is
float32 on the CPU.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from sdflow.plugin import StageError
from sdflow_diffusion.handles import Conditioning, Family, Latent, ModelHandle
from sdflow_diffusion.models.patches import applied
from sdflow_diffusion.models.run_options import compile_errors, on_device
from sdflow_diffusion.numerics.denoiser import (
    UNetCall,
    add_control,
    image_seeds,
    initial_noise,
    unet_conditions,
)
from sdflow_diffusion.numerics.inpaint import diffusers_mask, inpaint_channels, keep_region
from sdflow_diffusion.numerics.sampler_table import scheduler_options, supported
from sdflow_diffusion.numerics.schedules import NoiseTable, check_length
from sdflow_diffusion.numerics.space import check_space, tagged

LATENT_CHANNELS = 4
LATENT_FACTOR = 8  # pixels per latent cell in every supported family


def empty_latent(width: int, height: int, batch: int) -> Latent:
    """An all-zero latent batch for images of ``width`` x ``height`` pixels."""
    shape = (batch, LATENT_CHANNELS, height // LATENT_FACTOR, width // LATENT_FACTOR)
    return Latent(samples=torch.zeros(shape, dtype=torch.float32))


def make_scheduler(family: Family, sampler: str, scheduler: str):
    """The diffusers scheduler for a ComfyUI (sampler, schedule) pair: the
    family's scheduler config (prediction type, betas, spacing...) with the
    sampler's class and the schedule's options on top."""
    import diffusers

    problem = supported(sampler, scheduler)
    if problem:
        raise StageError(problem, "choose another sampler or scheduler (sdflow stages sample)")
    class_name, options = scheduler_options(sampler, scheduler)
    cls = getattr(diffusers, class_name)
    accepted = inspect.signature(cls.__init__).parameters
    # The family's config was written for one class; each class takes its own keys.
    config = {k: v for k, v in {**family.scheduler_config, **options}.items() if k in accepted}
    return cls.from_config(config)


def sample(model: ModelHandle, positive: Conditioning, negative: Conditioning, latent: Latent, params,
           progress=None) -> Latent:
    """Denoise ``latent`` as ``params`` (the sample stage's) say: ComfyUI's
    KSampler for its names, the diffusers loop for ``diffusers:<name>``."""
    from sdflow_diffusion.numerics.ksampling import ksample
    from sdflow_diffusion.numerics.sampler_table import DIFFUSERS

    if params.sampler.startswith(DIFFUSERS):
        _one_plain_entry(positive, negative, params.sampler)
        with running(model, positive, negative):
            return diffusers_sample(model, positive, negative, latent, params, progress)
    with running(model, positive, negative):
        return ksample(model, positive, negative, latent, seed=params.seed, steps=params.steps, cfg=params.cfg,
                       sampler=params.sampler, scheduler=params.scheduler, denoise=params.denoise,
                       options=params.sampler_options(), progress=progress)


@contextmanager
def running(model: ModelHandle, positive: Conditioning, negative: Conditioning) -> Iterator[None]:
    """While sampling: the U-Net and the prompts' ControlNets on the device
    (kept on the CPU with --lowvram), the model's patches (a LoRA) applied,
    and a failure of --compile said as an error of its own."""
    nets = {id(net): net for cond in (positive, negative) for entry in cond.entries for control in entry.control
            if (net := getattr(getattr(control, "handle", None), "net", None)) is not None}
    with on_device(model.device, model.unet, *nets.values()), applied(model), compile_errors():
        yield


def _one_plain_entry(positive: Conditioning, negative: Conditioning, sampler: str) -> None:
    """The diffusers loop runs one prompt over the whole image and schedule."""
    for name, cond in (("positive", positive), ("negative", negative)):
        entries = cond.entries
        if len(entries) > 1 or entries[0].area is not None or entries[0].mask is not None \
                or (entries[0].start, entries[0].end) != (0.0, 1.0):
            raise StageError(f"the {name} conditioning is combined, or has an area, a mask or a timestep range, "
                             f"which the diffusers engine ('{sampler}') does not mix",
                             f"use ComfyUI's '{sampler.removeprefix('diffusers:')}', which does")


def sample_advanced(model: ModelHandle, positive: Conditioning, negative: Conditioning, latent: Latent,
                    params, progress=None) -> Latent:
    """ComfyUI's KSamplerAdvanced: part of a schedule, noise added or not,
    ending clean or with the noise left."""
    from sdflow_diffusion.numerics.ksampling import ksample
    from sdflow_diffusion.numerics.sampler_table import DIFFUSERS

    if params.sampler.startswith(DIFFUSERS):
        _one_plain_entry(positive, negative, params.sampler)
        with running(model, positive, negative):
            return diffusers_sample(model, positive, negative, latent, params, progress,
                                    window=(params.start_at_step, params.end_at_step, params.add_noise))
    with running(model, positive, negative):
        return ksample(model, positive, negative, latent, seed=params.seed, steps=params.steps, cfg=params.cfg,
                       sampler=params.sampler, scheduler=params.scheduler, start_at_step=params.start_at_step,
                       end_at_step=params.end_at_step, add_noise=params.add_noise,
                       full_denoise_at_end=not params.return_with_leftover_noise,
                       options=params.sampler_options(), progress=progress)


@torch.no_grad()
def diffusers_sample(model: ModelHandle, positive: Conditioning, negative: Conditioning, latent: Latent,
                     params, progress=None, window: tuple[int, int, bool] | None = None) -> Latent:
    """Denoise ``latent`` in ``params.steps`` steps guided by the prompts (KSampler).

    ``params`` is the sample stage's parameter object
    (:class:`sdflow_diffusion.stages.sample.Sample`): seed, steps, cfg,
    sampler, scheduler, denoise.

    ``denoise`` < 1 works as in ComfyUI: a schedule of ``int(steps / denoise)``
    steps of which the last ``steps`` run, starting from the latent with noise
    added at the first of them (img2img).  ``denoise`` 0 returns the latent.
    ``progress.step()`` is called once per step (it raises when interrupted).

    ``window`` (sample_advanced's start_at_step, end_at_step and add_noise)
    runs those steps of a ``steps``-step schedule instead, as the SDXL
    pipelines' denoising_end and denoising_start split one: noise is added
    only if asked (at the first step run), and a schedule stopped early
    returns its latent with the noise left.
    """
    seed, steps, cfg = params.seed, params.steps, params.cfg
    check_space(latent, model.family, "the model")
    sched = make_scheduler(model.family, params.sampler, params.scheduler)
    if window is None:
        if params.denoise <= 0:
            return Latent(latent.samples.clone(), latent.noise_mask, dict(latent.extra))
        timesteps, begin = _timesteps(sched, steps, params.denoise, model.device)
    else:
        timesteps, begin = _window(sched, steps, window[0], window[1], model.device)
        if not len(timesteps):
            return Latent(latent.samples.clone(), latent.noise_mask, dict(latent.extra))
    start = latent.samples.to(model.device, torch.float32)
    x, noise, generators = _noisy_start(sched, start, seed, timesteps, begin, latent.extra.get("batch_index"))
    if window is not None and not window[2]:
        # add_noise off: the latent is already noisy (a base's leftover, say).
        # As the pipelines, no noise is drawn from the sampler's generators
        # (the masked region's noise above came from generators of its own).
        x = start
        generators = [torch.Generator("cpu").manual_seed(s)
                      for s in image_seeds(seed, start.shape[0], latent.extra.get("batch_index"))]
    guided = cfg > 1  # as the pipelines: at cfg <= 1 the negative is not run
    context, added = unet_conditions(model, positive, negative, x.shape, guided)
    controls = _controls(positive, negative, guided, params.sampler)
    table = NoiseTable.from_scheduler_config(model.family.scheduler_config)
    step_args = _step_arguments(sched, generators)
    # Inpainting as diffusers' inpaint pipeline: an inpainting U-Net gets the
    # mask and masked image beside its input; an ordinary one has the kept
    # region put back, noised to the next timestep, after every step.
    channels = inpaint_channels(model, latent, start, diffusers=True)
    if channels is not None and guided:
        channels = torch.cat([channels] * 2)
    mask = None
    if latent.noise_mask is not None and channels is None:
        mask = diffusers_mask(latent.noise_mask, x.shape).to(x.device)
    for i, t in enumerate(timesteps):
        inputs = torch.cat([x] * 2) if guided else x
        inputs = sched.scale_model_input(inputs, t)
        call = UNetCall(sample=inputs.to(model.dtype), timestep=t, context=context, added=added,
                        sigma=table.sigma(t.cpu()), areas=[None] * (2 if guided else 1), table=table)
        add_control(call, controls)  # the pipeline's ControlNet call, on the latent alone
        if channels is not None:
            call.sample = torch.cat([call.sample, channels.to(model.dtype)], dim=1)
        prediction = model.unet(call.sample, t, encoder_hidden_states=context, added_cond_kwargs=added,
                                return_dict=False, **call.extra)[0].float()
        if guided:
            uncond, cond = prediction.chunk(2)
            prediction = uncond + cfg * (cond - uncond)
        x = sched.step(prediction, t, x, **step_args, return_dict=False)[0]
        if mask is not None:
            x = keep_region(x, mask, start, noise, sched, timesteps[i + 1] if i + 1 < len(timesteps) else None)
        # Second-order samplers take two scheduler steps per step.
        if progress is not None and ((i + 1) % sched.order == 0 or i == len(timesteps) - 1):
            progress.step()
    return Latent(x.float().cpu(), latent.noise_mask, tagged(latent.extra, model.family))


def _controls(positive: Conditioning, negative: Conditioning, guided: bool, sampler: str) -> tuple:
    """The ControlNets of the diffusers loop's one batch: the prompt's,
    which must be the negative's too (the pipelines apply one to both)."""
    control = positive.entries[0].control
    if guided and [id(c) for c in negative.entries[0].control] != [id(c) for c in control]:
        raise StageError(f"the positive and negative conditionings have different ControlNets, which the "
                         f"diffusers engine ('{sampler}') runs in one batch",
                         f"use ComfyUI's '{sampler.removeprefix('diffusers:')}', which runs them apart, "
                         "or apply the ControlNet to both")
    return control


def _timesteps(sched, steps: int, denoise: float, device) -> tuple[torch.Tensor, int]:
    """The timesteps to run for ``denoise`` and the scheduler index they begin at."""
    total = steps if denoise >= 1 else int(steps / denoise)
    check_length(total, steps, denoise)
    return _window(sched, total, total - steps, total, device)


def _window(sched, total: int, first: int, last: int, device) -> tuple[torch.Tensor, int]:
    """Steps ``first`` to ``last`` (exclusive, at most ``total``) of a
    ``total``-step schedule: their timesteps and the index they begin at."""
    try:
        sched.set_timesteps(total, device=device)
    except ValueError as err:  # e.g. more steps than the scheduler can place
        raise StageError(f"{type(sched).__name__} cannot make {total} steps: {err}") from None
    begin, end = first * sched.order, min(last, total) * sched.order
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(begin)
    return sched.timesteps[begin:end], begin


def _noisy_start(sched, start: torch.Tensor, seed: int, timesteps: torch.Tensor, begin: int,
                 batch_index: list[int] | None = None):
    """The latent the loop starts from, the noise, and the generators that drew it.

    From an empty latent over the whole schedule this is the pipelines'
    ``noise * init_noise_sigma``; otherwise the latent is noised to the first
    timestep by the scheduler (``add_noise``, as img2img does)."""
    noise, generators = initial_noise(start.shape, seed, batch_index)
    noise = noise.to(start.device)
    if begin == 0 and not start.any():
        return noise * sched.init_noise_sigma, noise, generators
    return sched.add_noise(start, noise, timesteps[:1].repeat(start.shape[0])), noise, generators


def _step_arguments(sched, generators) -> dict:
    """What the scheduler's step takes besides the prediction: the generators
    (ancestral and SDE samplers) and DDIM's eta = 0, as the pipelines pass them."""
    accepted = inspect.signature(sched.step).parameters
    arguments = {}
    if "generator" in accepted:
        arguments["generator"] = generators
    if "eta" in accepted:
        arguments["eta"] = 0.0
    return arguments
