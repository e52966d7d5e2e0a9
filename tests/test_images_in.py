"""Images in: img2img, inpainting (a noise mask, an inpainting checkpoint), batches.

The numerics against their references on tiny random models (diffusers'
VAE encoder and inpaint pipeline, bit for bit on the CPU), then what a user
sees: the example recipes run through the CLI on sdflow-tiny, their effect
measured with the project's scorer (``training.tiny.score``).
"""

from __future__ import annotations

import functools

import diffusers
import numpy as np
import pytest
import torch
from sdflow_diffusion.handles import Latent
from sdflow_diffusion.numerics.decode import decode
from sdflow_diffusion.numerics.encode import encode_text
from sdflow_diffusion.numerics.sampler_table import DIFFUSERS
from sdflow_diffusion.numerics.sampling import make_scheduler, sample
from sdflow_diffusion.numerics.vae_encode import encode, encode_for_inpaint, grow
from sdflow_diffusion.stages.sample import Sample
from sdflow_diffusion.testing import make_pipeline, tiny_components, tiny_handles

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

PROMPT, NEGATIVE, SEED, SIZE = "a red circle on a blue background", "blurry", 42, 32


@functools.cache
def tiny(family: str = "sd1-tiny"):
    """(components, handles) of a tiny SD 1.x model of ``family`` (the plain
    one or its inpainting variant), CPU, float32."""
    from sdflow_diffusion.models.families import family_handle

    components = tiny_components("sd1", seed=3, family=family)
    model, clip, vae = tiny_handles("sd1", components=components)
    family_of = family_handle(family)
    model = type(model)(model.unet, family_of, model.device, model.dtype)
    return components, (model, clip, type(vae)(vae.vae, family_of, vae.device, vae.dtype))


def picture(batch: int = 1, seed: int = 0) -> torch.Tensor:
    """An IMAGE batch of smooth random pictures, SIZE x SIZE."""
    coarse = torch.rand((batch, 3, 4, 4), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear").movedim(1, -1)


def right_half(batch: int = 1) -> torch.Tensor:
    mask = torch.zeros((batch, SIZE, SIZE))
    mask[:, :, SIZE // 2:] = 1.0
    return mask


def run(family, latent, *, sampler="euler", denoise=1.0, steps=4, seed=SEED, cfg=7.5):
    _, (model, clip, _) = tiny(family)
    params = Sample(seed=seed, steps=steps, cfg=cfg, sampler=sampler, denoise=denoise)
    return sample(model, encode_text(clip, PROMPT), encode_text(clip, NEGATIVE), latent, params)


# -- the VAE encoder ------------------------------------------------------------------------------

def test_vae_encode_is_diffusers_encoder_mean_in_the_unets_space():
    components, (_, _, vae) = tiny()
    image = picture(2)
    pipe = make_pipeline(components, "StableDiffusionImg2ImgPipeline")
    pixels = pipe.image_processor.preprocess(image.movedim(-1, 1))  # their [-1, 1] mapping
    with torch.no_grad():
        expected = components["vae"].encode(pixels).latent_dist.mode() * components["vae"].config.scaling_factor
    assert torch.equal(encode(vae, image).samples, expected)


def test_vae_encode_crops_to_a_multiple_of_eight_centred():
    _, (_, _, vae) = tiny()
    image = picture()
    wider = torch.nn.functional.pad(image.movedim(-1, 1), (3, 4, 2, 3), value=0.25).movedim(1, -1)
    assert wider.shape[1:3] == (SIZE + 5, SIZE + 7)
    assert torch.equal(encode(vae, wider).samples, encode(vae, image).samples)


def test_vae_encode_for_inpaint_greys_the_mask_and_keeps_it_grown():
    _, (_, _, vae) = tiny()
    image, mask = picture(), torch.zeros((1, SIZE, SIZE))
    mask[0, 10, 20] = 1.0
    latent = encode_for_inpaint(vae, image, mask, grow_mask_by=3)
    greyed = image.clone()
    greyed[0, 10, 20] = 0.5
    assert torch.equal(latent.samples, encode(vae, greyed).samples)
    expected = torch.zeros((1, 1, SIZE, SIZE))
    expected[0, 0, 9:12, 19:22] = 1.0
    assert torch.equal(latent.noise_mask, expected)
    # An even size grows one more pixel up and left, as ComfyUI's padding does.
    assert grow(expected[:, :, ::1] * 0 + (torch.arange(SIZE) == 20).float().expand(1, 1, SIZE, SIZE),
                2)[0, 0, 0].nonzero().flatten().tolist() == [20, 21]


# -- the noise mask ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "heun", "ddim",
                                     "diffusers:euler", "diffusers:dpmpp_2m"])
def test_a_noise_mask_resamples_only_the_masked_region(sampler):
    """The kept latent columns come out as they went in; the repainted ones
    change.  Not bit for bit with ComfyUI's samplers, as in ComfyUI: the
    last step computes the clean latent as ``x + (x - denoised) / sigma *
    (0 - sigma)``, which rounds (the kept region is ``denoised`` there); the
    diffusers engine puts the latent itself back after the last step."""
    _, (_, _, vae) = tiny()
    start = encode(vae, picture())
    out = run("sd1-tiny", Latent(start.samples, noise_mask=right_half()[:, None]), sampler=sampler)
    kept, repainted = slice(0, SIZE // 16), slice(SIZE // 16, None)
    if sampler.startswith(DIFFUSERS):
        assert torch.equal(out.samples[..., kept], start.samples[..., kept])
    assert torch.allclose(out.samples[..., kept], start.samples[..., kept], rtol=0, atol=1e-5)
    assert (out.samples[..., repainted] - start.samples[..., repainted]).abs().mean() > 0.1
    assert out.noise_mask is not None  # carried on, as ComfyUI does


def test_the_noise_mask_blend_is_diffusers_inpaint_pipeline():
    """An ordinary U-Net with a noise mask, ``diffusers:euler`` at denoise
    0.75, is StableDiffusionInpaintPipeline at strength 0.75, bit for bit
    (given the image's latent, so neither draws from the VAE's distribution)."""
    components, (model, _, vae) = tiny()
    start, mask = encode(vae, picture()), right_half()
    mine = decode(vae, run("sd1-tiny", Latent(start.samples, noise_mask=mask[:, None]),
                           sampler=DIFFUSERS + "euler", denoise=0.75, steps=3))
    pipe = make_pipeline({**components, "scheduler": make_scheduler(model.family, "diffusers:euler", "normal")},
                         "StableDiffusionInpaintPipeline")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, image=start.samples.clone(), mask_image=mask[:, None], height=SIZE, width=SIZE,
                  masked_image_latents=start.samples.clone(),  # unused by a 4-channel U-Net
                  strength=0.75, num_inference_steps=4, guidance_scale=7.5, negative_prompt=NEGATIVE,
                  generator=[torch.Generator("cpu").manual_seed(SEED)], output_type="np").images
    assert torch.equal(mine, torch.from_numpy(theirs))


# -- inpainting checkpoints --------------------------------------------------------------------------

def test_an_inpainting_unet_gets_the_mask_and_masked_image_as_diffusers_gives_them():
    components, (model, _, vae) = tiny("sd1-inpaint-tiny")
    assert model.unet.config.in_channels == 9
    image, mask = picture(), right_half()
    latent = encode_for_inpaint(vae, image, mask, grow_mask_by=0)
    mine = decode(vae, run("sd1-inpaint-tiny", latent, sampler=DIFFUSERS + "euler", denoise=0.75, steps=3))
    pipe = make_pipeline({**components, "scheduler": make_scheduler(model.family, "diffusers:euler", "normal")},
                         "StableDiffusionInpaintPipeline")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, image=latent.samples.clone(), mask_image=mask[:, None], height=SIZE, width=SIZE,
                  masked_image_latents=latent.samples.clone(), strength=0.75, num_inference_steps=4,
                  guidance_scale=7.5, negative_prompt=NEGATIVE,
                  generator=[torch.Generator("cpu").manual_seed(SEED)], output_type="np").images
    assert torch.equal(mine, torch.from_numpy(theirs))


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_an_inpainting_checkpoint_keeps_the_unmasked_region_with_comfyuis_samplers(sampler):
    _, (_, _, vae) = tiny("sd1-inpaint-tiny")
    latent = encode_for_inpaint(vae, picture(), right_half(), grow_mask_by=0)
    out = run("sd1-inpaint-tiny", latent, sampler=sampler)
    assert torch.allclose(out.samples[..., :SIZE // 16], latent.samples[..., :SIZE // 16], rtol=0, atol=1e-5)
    assert not torch.equal(out.samples, latent.samples)


# -- batches ---------------------------------------------------------------------------------------

def test_a_picked_image_of_a_batch_keeps_its_seed():
    """A latent that says it is image 2 of a batch is drawn with seed + 2."""
    start = torch.zeros((1, 4, SIZE // 8, SIZE // 8))
    picked = run("sd1-tiny", Latent(start, extra={"batch_index": [2]}), seed=SEED)
    single = run("sd1-tiny", Latent(start), seed=SEED + 2)
    assert torch.equal(picked.samples, single.samples)
