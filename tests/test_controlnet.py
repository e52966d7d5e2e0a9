"""load_controlnet and apply_controlnet: tiny ControlNets made from tiny U-Nets (their zero
convolutions randomized, else every ControlNet would do nothing), saved in each layout, applied
through recipes; the image of diffusers' StableDiffusionControlNetPipeline, bit for bit."""

from __future__ import annotations

import functools
from dataclasses import replace

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdflow.plugin import StageError
from sdflow.registry import default_registry
from sdflow.testing import Executor, RunError, run_recipe
from sdflow_diffusion import testing
from sdflow_diffusion.handles import Conditioning
from sdflow_diffusion.models.controlnet import (Control, ControlNetHandle, _broadcast, inspect_controlnet,
                                                load_controlnet)
from sdflow_diffusion.models.families import family_handle
from sdflow_diffusion.models.ldm_layout import unet_to_original
from sdflow_diffusion.numerics.decode import decode
from sdflow_diffusion.numerics.denoiser import UNetCall, add_control
from sdflow_diffusion.numerics.encode import encode_text
from sdflow_diffusion.numerics.sampling import empty_latent, make_scheduler, sample
from sdflow_diffusion.settings import DiffusionSettings
from sdflow_diffusion.stages.sample import Sample
from sdflow_diffusion.testing import TINY_FAMILY, save_single_file, tiny_components, tiny_handles

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

PROMPT, NEGATIVE, SIZE, STEPS = "a red circle on a blue background", "blurry", 32, 3
RECIPE = """\
sdflow 1
param strength = 1.0
ckpt = load_checkpoint(name="tiny-sd1.safetensors")
positive = clip_text_encode(clip=ckpt.clip, text="a red circle on a blue background")
negative = clip_text_encode(clip=ckpt.clip, text="blurry")
hint = load_image(name="{hint}")
{controls}
latent = empty_latent(width=32, height=32, batch=1)
denoised = sample(model=ckpt.model, positive={positive}, negative={negative}, latent=latent, seed=3, steps=3,
                  cfg=5.0, sampler="euler")
image = vae_decode(vae=ckpt.vae, latent=denoised)
save_image(image=image, prefix="out")
"""


@functools.cache
def tiny(kind: str):
    """(components, handles) of a tiny model of ``kind``."""
    components = tiny_components(kind, seed=0)
    return components, tiny_handles(kind, components=components)


def tiny_controlnet(kind: str, seed: int) -> diffusers.ControlNetModel:
    """A ControlNet copied from the tiny U-Net of ``kind``, its hint encoder and zero
    convolutions drawn from a generator seeded ``seed``."""
    return testing.tiny_controlnet(tiny(kind)[0]["unet"], seed)


def original_layout(net: diffusers.ControlNetModel, unet_config) -> dict[str, torch.Tensor]:
    """``net`` in the original layout, under ``control_model.`` as some files have it."""
    state, unet = {}, {}
    blocks = len(net.controlnet_cond_embedding.blocks)
    for key, value in net.state_dict().items():
        name = key.split(".")
        if key.startswith("controlnet_down_blocks."):
            state[f"zero_convs.{name[1]}.0.{name[2]}"] = value
        elif key.startswith("controlnet_mid_block."):
            state[f"middle_block_out.0.{name[1]}"] = value
        elif key.startswith("controlnet_cond_embedding."):
            index = {"conv_in": 0, "conv_out": 2 * blocks + 2}.get(name[1])
            index = 2 * int(name[2]) + 2 if index is None else index
            state[f"input_hint_block.{index}.{name[-1]}"] = value
        else:
            unet[key] = value
    state.update(unet_to_original(unet, unet_config))
    return {"control_model." + k: v.contiguous() for k, v in state.items()}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_single_file(tiny("sd1")[0], root / "checkpoints" / "tiny-sd1.safetensors")
    nets = root / "controlnet"
    first, second = tiny_controlnet("sd1", 1), tiny_controlnet("sd1", 2)
    first.save_pretrained(nets / "first", safe_serialization=True)
    save_file({k: v.contiguous() for k, v in first.state_dict().items()}, str(nets / "first-diffusers.safetensors"))
    save_file(original_layout(first, tiny("sd1")[0]["unet"].config), str(nets / "first-original.safetensors"))
    save_file({k: v.contiguous() for k, v in second.state_dict().items()}, str(nets / "second.safetensors"))
    xl = tiny_controlnet("sdxl", 3)
    save_file({k: v.contiguous() for k, v in xl.state_dict().items()}, str(nets / "xl.safetensors"))
    save_file(original_layout(xl, tiny("sdxl")[0]["unet"].config), str(nets / "xl-original.safetensors"))
    hints = root / "hints"
    hints.mkdir()
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    pixels[8:24, 4:14] = 255  # a white bar: an edge map
    Image.fromarray(pixels).save(hints / "bar.png")
    wide = np.zeros((SIZE, 2 * SIZE, 3), np.uint8)
    wide[:, SIZE // 2:SIZE // 2 + SIZE] = pixels  # the same bar in the middle of a wider picture
    wide[:, :SIZE // 2] = 90
    Image.fromarray(wide).save(hints / "wide.png")
    return root, {"first": first, "second": second, "xl": xl}


SHARED = Executor()


def run(models, tmp_path, controls="", hint="bar.png", strength=None, out="out", positive="positive",
        negative="negative"):
    root, _ = models
    settings = {"diffusion": DiffusionSettings(device="cpu", models_dirs=(root,))}
    text = RECIPE.format(hint=hint, controls=controls, positive=positive, negative=negative)
    result = run_recipe(text, default_registry(), tmp_path / out, settings=settings, executor=SHARED,
                        overrides=None if strength is None else {"strength": str(strength)},
                        recipe_dir=root / "hints")
    (png,) = [p for p in result.files if p.suffix == ".png"]
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))


def apply(name="first", strength="strength", start=0.0, end=1.0, src="", label="cn"):
    positive, negative = (f"{src}.positive", f"{src}.negative") if src else ("positive", "negative")
    return (f'{label}_net = load_controlnet(name="{name}")\n'
            f"{label} = apply_controlnet(positive={positive}, negative={negative}, control_net={label}_net, "
            f"image=hint.image, strength={strength}, start_percent={start}, end_percent={end})")


ON = dict(positive="cn.positive", negative="cn.negative")


def load(models, name) -> ControlNetHandle:
    root, _ = models
    path = root / "controlnet" / name
    return load_controlnet(inspect_controlnet(path, name), name, DiffusionSettings(device="cpu"))


@pytest.mark.parametrize("name", ["first", "first-diffusers.safetensors", "first-original.safetensors"])
def test_every_layout_loads_the_same_weights(models, name):
    handle = load(models, name)
    expected = models[1]["first"].state_dict()
    loaded = handle.net.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert handle.family.name == "sd1-tiny"


def test_an_sdxl_controlnet_in_the_original_layout_loads_with_its_added_embedding(models):
    handle = load(models, "xl-original.safetensors")
    expected = models[1]["xl"].state_dict()
    assert handle.family.name == "sdxl-tiny"
    assert all(torch.equal(handle.net.state_dict()[k], expected[k]) for k in expected)


def test_strength_zero_is_no_controlnet_and_strength_one_changes_the_image(models, tmp_path):
    plain = run(models, tmp_path, out="a")
    assert np.array_equal(run(models, tmp_path, apply(), strength=0.0, out="b", **ON), plain)
    changed = run(models, tmp_path, apply(), out="c", **ON)
    assert np.abs(changed.astype(int) - plain).mean() > 3


def test_a_range_that_excludes_every_step_is_no_controlnet(models, tmp_path):
    plain = run(models, tmp_path, out="a")
    assert np.array_equal(run(models, tmp_path, apply(start=1.0, end=1.0), out="b", **ON), plain)
    partly = run(models, tmp_path, apply(start=0.0, end=0.5), out="c", **ON)
    whole = run(models, tmp_path, apply(), out="d", **ON)
    assert not np.array_equal(partly, plain) and not np.array_equal(partly, whole)


def test_every_layout_draws_the_same(models, tmp_path):
    images = [run(models, tmp_path, apply(name), out=name, **ON)
              for name in ("first", "first-diffusers.safetensors", "first-original.safetensors")]
    assert all(np.array_equal(images[0], image) for image in images[1:])


def test_a_hint_of_another_aspect_ratio_has_its_middle_cut_out(models, tmp_path):
    square = run(models, tmp_path, apply(), out="a", **ON)
    assert np.array_equal(run(models, tmp_path, apply(), hint="wide.png", out="b", **ON), square)


def test_two_stacked_controlnets_both_guide(models, tmp_path):
    stacked = apply() + "\n" + apply("second.safetensors", src="cn", label="two")
    both = run(models, tmp_path, stacked, out="a", positive="two.positive", negative="two.negative")
    first = run(models, tmp_path, apply(), out="b", **ON)
    assert not np.array_equal(both, first)


def test_stacked_residuals_are_the_sum_of_each_controlnets_own():
    _, (model, clip, _) = tiny("sd1")
    family = family_handle(TINY_FAMILY["sd1"])
    hint = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    nets = [tiny_controlnet("sd1", seed) for seed in (1, 2)]
    controls = [Control(ControlNetHandle(net, family, f"net{i}", model.device, model.dtype), hint, s, 0.0, 1.0)
                for i, (net, s) in enumerate(zip(nets, (0.7, 1.3)))]
    sample_in = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(1))
    context = torch.cat([encode_text(clip, NEGATIVE).embeds, encode_text(clip, PROMPT).embeds])
    call = UNetCall(sample=sample_in, timestep=torch.tensor([500.0, 500.0]), context=context, added=None,
                    sigma=torch.tensor(3.0), areas=[None, None])
    add_control(call, tuple(controls))
    with torch.no_grad():
        by_hand = [net(sample_in, call.timestep, encoder_hidden_states=context,
                       controlnet_cond=hint.movedim(-1, 1).expand(2, -1, -1, -1), conditioning_scale=s,
                       return_dict=False) for net, s in zip(nets, (0.7, 1.3))]
    down = call.extra["down_block_additional_residuals"]
    assert all(torch.equal(d, a + b) for d, a, b in zip(down, by_hand[0][0], by_hand[1][0], strict=True))
    assert torch.equal(call.extra["mid_block_additional_residual"], by_hand[0][1] + by_hand[1][1])


def test_the_image_is_diffusers_controlnet_pipelines_bit_for_bit(models):
    """diffusers:euler against StableDiffusionControlNetPipeline (start 0, end 1: the pipeline counts
    its range in steps, sdflow in noise levels as ComfyUI; the whole schedule is the same in both)."""
    components, (model, clip, vae) = tiny("sd1")
    net = models[1]["first"]
    with Image.open(models[0] / "hints" / "bar.png") as picture:
        picture = picture.convert("RGB")
    hint = torch.from_numpy(np.asarray(picture).astype(np.float32) / 255.0)[None]
    control = Control(ControlNetHandle(net, model.family, "first", model.device, model.dtype), hint, 0.8, 0.0, 1.0)
    positive, negative = (Conditioning.of([Conditioning(c.embeds, control=(control,))])
                          for c in (encode_text(clip, PROMPT), encode_text(clip, NEGATIVE)))
    params = Sample(seed=42, steps=STEPS, cfg=7.5, sampler="diffusers:euler", scheduler="normal")
    mine = decode(vae, sample(model, positive, negative, empty_latent(SIZE, SIZE, 1), params))
    pipe = diffusers.StableDiffusionControlNetPipeline(
        **{k: components[k] for k in ("vae", "text_encoder", "tokenizer", "unet")}, controlnet=net,
        scheduler=make_scheduler(model.family, "diffusers:euler", "normal"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, picture, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                  guidance_scale=7.5, controlnet_conditioning_scale=0.8,
                  generator=torch.Generator("cpu").manual_seed(42), output_type="np").images
    theirs = torch.from_numpy(theirs)
    assert torch.equal(mine, theirs), f"max difference {(mine - theirs).abs().max().item()}"


def test_the_sdxl_image_is_diffusers_xl_controlnet_pipelines_bit_for_bit():
    """SDXL's added conditions (pooled text, size and crop) reach the ControlNet as the pipeline gives them."""
    components, (model, clip, vae) = tiny("sdxl")
    net = tiny_controlnet("sdxl", 3)
    hint = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    control = Control(ControlNetHandle(net, model.family, "xl", model.device, model.dtype), hint, 1.0, 0.0, 1.0)
    positive, negative = (replace(encode_text(clip, text), control=(control,)) for text in (PROMPT, NEGATIVE))
    params = Sample(seed=42, steps=STEPS, cfg=7.5, sampler="diffusers:euler", scheduler="normal")
    mine = decode(vae, sample(model, positive, negative, empty_latent(SIZE, SIZE, 1), params))
    parts = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet")
    pipe = diffusers.StableDiffusionXLControlNetPipeline(
        **{k: components[k] for k in parts}, controlnet=net, add_watermarker=False,
        scheduler=make_scheduler(model.family, "diffusers:euler", "normal"))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, image=hint.movedim(-1, 1), negative_prompt=NEGATIVE, height=SIZE, width=SIZE,
                  num_inference_steps=STEPS, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(42),
                  output_type="np").images
    theirs = torch.from_numpy(theirs)
    assert torch.equal(mine, theirs), f"max difference {(mine - theirs).abs().max().item()}"


def test_the_diffusers_engine_refuses_a_controlnet_on_one_prompt_only():
    """The diffusers loop runs the prompt and the negative in one batch, as the pipelines do."""
    _, (model, clip, _) = tiny("sd1")
    control = Control(ControlNetHandle(tiny_controlnet("sd1", 1), model.family, "first", model.device, model.dtype),
                      torch.zeros(1, SIZE, SIZE, 3), 1.0, 0.0, 1.0)
    positive = replace(encode_text(clip, PROMPT), control=(control,))
    params = Sample(seed=1, steps=1, cfg=5.0, sampler="diffusers:euler", scheduler="normal")
    with pytest.raises(StageError, match="different ControlNets"):
        sample(model, positive, encode_text(clip, NEGATIVE), empty_latent(SIZE, SIZE, 1), params)


def test_an_sdxl_controlnet_shallower_than_its_unet_loads_from_a_single_file(tmp_path):
    """SDXL's "mid" and "small" ControlNets have fewer transformer blocks than the U-Net: read off the file."""
    config = {**tiny("sdxl")[0]["unet"].config, "transformer_layers_per_block": [1, 1]}
    with torch.random.fork_rng(devices=[]):
        net = diffusers.ControlNetModel.from_unet(diffusers.UNet2DConditionModel.from_config(config))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "mid.safetensors"))
    handle = load_controlnet(inspect_controlnet(tmp_path / "mid.safetensors", "mid.safetensors"), "mid.safetensors",
                             DiffusionSettings(device="cpu"))
    assert handle.family.name == "sdxl-tiny" and handle.net.config.transformer_layers_per_block == [1, 1]
    assert all(torch.equal(handle.net.state_dict()[k], v) for k, v in net.state_dict().items())


def test_a_file_with_a_tensor_of_the_wrong_shape_is_refused_naming_it(models, tmp_path):
    state = {k: v.contiguous() for k, v in models[1]["first"].state_dict().items()}
    state["controlnet_mid_block.weight"] = state["controlnet_mid_block.weight"][:8].contiguous()
    save_file(state, str(tmp_path / "cut.safetensors"))
    expected = (r"does not fit family sd1-tiny's ControlNet: 1 tensor differs, "
                r"e.g. controlnet_mid_block.weight is \[8, 64, 1, 1\], expected \[64, 64, 1, 1\]")
    with pytest.raises(StageError, match=expected):
        load_controlnet(inspect_controlnet(tmp_path / "cut.safetensors", "cut.safetensors"), "cut.safetensors",
                        DiffusionSettings(device="cpu"))


def test_several_hint_images_are_spread_over_the_batch_as_comfyui_does():
    hints = torch.arange(3.0).reshape(3, 1, 1, 1)
    assert _broadcast(hints[:1], 4, 2).flatten().tolist() == [0, 0, 0, 0]
    assert _broadcast(hints[:2], 4, 2).flatten().tolist() == [0, 1, 0, 1]  # one per image, for each prompt
    assert _broadcast(hints, 4, 2).flatten().tolist() == [0, 1, 0, 1]  # more hints than images: the first
    assert _broadcast(hints[:2], 6, 2).flatten().tolist() == [0, 1, 0, 0, 1, 0]  # fewer: repeated


def test_an_sdxl_controlnet_on_sd1_prompts_is_refused_naming_both(models, tmp_path):
    with pytest.raises(RunError) as caught:
        run(models, tmp_path, apply("xl.safetensors"), **ON)
    text = "\n".join(f"{d.message} {d.help}" for d in caught.value.diagnostics)
    assert "ControlNet 'xl.safetensors'" in text and "sdxl-tiny" in text and "48 features" in text
    assert "32 features" in text and "made for the checkpoint's family" in text


def test_an_sdxl_controlnet_at_sample_time_with_sd1_prompts_is_refused(models):
    _, (model, clip, _) = tiny("sd1")
    handle = load(models, "xl.safetensors")
    control = Control(handle, torch.zeros(1, SIZE, SIZE, 3), 1.0, 0.0, 1.0)
    positive = Conditioning.of([Conditioning(encode_text(clip, PROMPT).embeds, control=(control,))])
    params = Sample(seed=1, steps=1, cfg=1.0, sampler="euler", scheduler="normal")
    with pytest.raises(StageError, match="sdxl-tiny.*48 features.*32 features"):
        sample(model, positive, positive, empty_latent(SIZE, SIZE, 1), params)


def test_an_sdxl_controlnet_guides_an_sdxl_model():
    _, (model, clip, _) = tiny("sdxl")
    handle = ControlNetHandle(tiny_controlnet("sdxl", 3), model.family, "xl", model.device, model.dtype)
    hint = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    params = Sample(seed=1, steps=2, cfg=5.0, sampler="euler", scheduler="normal")
    prompts = [encode_text(clip, PROMPT), encode_text(clip, NEGATIVE)]
    plain = sample(model, *prompts, empty_latent(SIZE, SIZE, 1), params).samples
    control = Control(handle, hint, 1.0, 0.0, 1.0)
    guided = [replace(c, control=(control,)) for c in prompts]
    changed = sample(model, *guided, empty_latent(SIZE, SIZE, 1), params).samples
    assert (changed - plain).abs().mean() > 1e-3


def test_a_file_that_is_not_a_controlnet_is_refused(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(StageError, match="'lora.safetensors' is not a ControlNet"):
        inspect_controlnet(path, "lora.safetensors")


def test_a_missing_controlnet_names_the_folder_looked_in(models, tmp_path):
    with pytest.raises(RunError) as caught:
        run(models, tmp_path, apply("nothere.safetensors"), **ON)
    assert "ControlNet 'nothere.safetensors' not found" in caught.value.diagnostics[0].message
