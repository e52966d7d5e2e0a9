"""ComfyUI's KSampler as the sample stages run it, on tiny models: the loop, not the maths.

The samplers' maths and the schedules are compared with ComfyUI's own numbers
in tests/test_samplers.py and tests/test_schedules.py; here the stage's whole
path (noise table from the family, schedule, starting noise, guidance, the
sampler) on real tiny diffusers U-Nets: every name runs, a run is
reproducible, cfg 1 skips the negative, progress and interrupts, the
advanced sampler's step ranges, and image i of a batch drawn from seed + i.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from sdflow.plugin import Interrupted
from sdflow_diffusion.handles import Latent
from sdflow_diffusion.numerics.encode import encode_text
from sdflow_diffusion.numerics.ksampling import sigmas_for
from sdflow_diffusion.numerics.sampler_table import COMFY_SAMPLERS
from sdflow_diffusion.numerics.sampling import empty_latent, sample, sample_advanced
from sdflow_diffusion.numerics.schedules import NoiseTable, schedule
from sdflow_diffusion.stages.sample import Sample, SampleAdvanced
from sdflow_diffusion.testing import StepCounter as Steps, tiny_handles

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@functools.cache
def tiny(kind: str):
    model, clip, _ = tiny_handles(kind)
    return model, encode_text(clip, "a red circle"), encode_text(clip, "blurry")


def run(kind="sd1", latent=None, progress=None, **params):
    model, positive, negative = tiny(kind)
    latent = latent if latent is not None else empty_latent(32, 32, 1)
    return sample(model, positive, negative, latent, Sample(**{"steps": 4, "cfg": 5.0, "seed": 3, **params}),
                  progress=progress).samples


@pytest.mark.parametrize("sampler", COMFY_SAMPLERS)
@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_every_comfyui_sampler_runs_and_repeats_itself(kind, sampler):
    first = run(kind, sampler=sampler, scheduler="karras")
    assert first.shape == (1, 4, 4, 4) and torch.isfinite(first).all()
    assert torch.equal(first, run(kind, sampler=sampler, scheduler="karras"))


@pytest.mark.parametrize("kind", ["sdxl", "sdxl-refiner"])
def test_sdxl_families_sample_through_the_same_loop(kind):
    assert torch.isfinite(run(kind, sampler="dpmpp_2m_sde", scheduler="normal")).all()


def test_the_seed_and_every_option_matter():
    base = run(sampler="euler_ancestral")
    assert not torch.equal(base, run(sampler="euler_ancestral", seed=4))
    assert not torch.equal(base, run(sampler="euler_ancestral", eta=0.5))
    assert not torch.equal(base, run(sampler="euler_ancestral", s_noise=0.5))
    assert not torch.equal(base, run(sampler="euler_ancestral", scheduler="simple"))


def test_cfg_one_never_runs_the_negative():
    model, positive, _ = tiny("sd1")
    _, _, other = tiny("sd2")  # another model's prompt: it would fail if it were used
    out = sample(model, positive, other, empty_latent(32, 32, 1), Sample(steps=3, cfg=1.0, seed=3))
    assert torch.equal(out.samples, run(steps=3, cfg=1.0))


def test_a_clean_latent_at_denoise_zero_comes_back_as_it_was():
    start = Latent(torch.randn(1, 4, 4, 4))
    assert torch.equal(run(latent=start, denoise=0.0), start.samples)


@pytest.mark.parametrize(("sampler", "denoise"), [("euler", 1.0), ("heun", 1.0), ("dpm_2", 1.0),
                                                  ("dpmpp_sde", 1.0), ("uni_pc", 0.5), ("dpmpp_2m", 0.5)])
def test_progress_counts_each_step_once(sampler, denoise):
    start = empty_latent(32, 32, 1) if denoise == 1 else Latent(torch.randn(1, 4, 4, 4))
    progress = Steps()
    run(sampler=sampler, denoise=denoise, latent=start, progress=progress)
    assert progress.count == 4


def test_an_interrupt_stops_sampling():
    progress = Steps(stop_after=2)
    with pytest.raises(Interrupted):
        run(progress=progress)
    assert progress.count == 2


def test_two_advanced_halves_make_the_whole_run():
    """KSamplerAdvanced: steps 0-6 with the noise left, then 6-10 without
    adding noise, is the ten-step run, bit for bit, for a one-step sampler.
    (A multistep one, dpmpp_2m say, starts its second half without the
    history of the first, in ComfyUI as here, so it differs a little.)"""
    model, positive, negative = tiny("sd1")
    latent = empty_latent(32, 32, 1)
    first = sample_advanced(model, positive, negative, latent, SampleAdvanced(
        seed=3, steps=10, cfg=5.0, sampler="heun", end_at_step=6, return_with_leftover_noise=True))
    second = sample_advanced(model, positive, negative, first, SampleAdvanced(
        seed=3, steps=10, cfg=5.0, sampler="heun", start_at_step=6, add_noise=False))
    assert torch.equal(second.samples, run(steps=10, sampler="heun"))


def test_step_ranges_cut_the_schedule_as_comfyui_does():
    table = NoiseTable.from_betas()
    full = schedule(table, "normal", 10)
    assert torch.equal(sigmas_for(table, "normal", 10, end_at_step=6), full[:7])
    ended = sigmas_for(table, "normal", 10, end_at_step=6, full_denoise_at_end=True)
    assert torch.equal(ended[:-1], full[:6]) and ended[-1] == 0
    assert torch.equal(sigmas_for(table, "normal", 10, start_at_step=6), full[6:])
    assert sigmas_for(table, "normal", 10, start_at_step=10).numel() == 0
    assert torch.equal(sigmas_for(table, "normal", 10, end_at_step=10000), full)


def test_image_i_of_a_batch_is_a_run_with_seed_plus_i():
    batch = run(sampler="euler_ancestral", latent=empty_latent(32, 32, 2))
    for i in range(2):
        single = run(sampler="euler_ancestral", seed=3 + i)
        # The noise is the same; the U-Net's kernels block their sums
        # differently for a batch of 4 inputs than of 2, so the last bits
        # may differ (see tests/test_parity.py).
        assert torch.allclose(batch[i], single[0], atol=1e-3, rtol=1e-4)


def test_the_start_is_the_noise_scaled_for_the_top_of_the_table():
    """txt2img: noise * sqrt(1 + sigma_max^2), so the U-Net's first input has
    the unit variance it was trained on."""
    table = NoiseTable.from_betas()
    sigmas = schedule(table, "normal", 4)
    from sdflow_diffusion.numerics.denoiser import start_noise

    noise = torch.randn(1, 4, 4, 4)
    start = start_noise(table, sigmas, noise, torch.zeros_like(noise))
    assert torch.allclose(start, noise * math.sqrt(1 + float(sigmas[0]) ** 2))
    lower = start_noise(table, sigmas[1:], noise, torch.zeros_like(noise))
    assert torch.allclose(lower, noise * float(sigmas[1]))
