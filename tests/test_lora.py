"""load_lora and load_lora_model_only: LoRA files in each layout, written by the tests from the
same random low-rank weights, applied to tiny checkpoints through recipes; the base model is
never changed; diffusers' load_lora_weights + fuse_lora gives the same image."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdflow.plugin import StageError
from sdflow.registry import default_registry
from sdflow.testing import Executor, RunError, run_recipe
from sdflow_diffusion.models.ldm_layout import unet_to_original
from sdflow_diffusion.models.lora import lora_patch, read_lora
from sdflow_diffusion.models.patches import applied
from sdflow_diffusion.settings import DiffusionSettings
from sdflow_diffusion.testing import save_single_file, tiny_components, tiny_handles

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

RANK = 4
RECIPE = """\
sdflow 1
param strength = 1.0
ckpt = load_checkpoint(name="{checkpoint}")
{loras}
positive = clip_text_encode(clip={clip}, text="a red circle on a blue background")
negative = clip_text_encode(clip={clip}, text="blurry")
latent = empty_latent(width=32, height=32, batch=1)
denoised = sample(model={model}, positive=positive, negative=negative, latent=latent, seed=3, steps=3, cfg=5.0,
                  sampler="{sampler}")
image = vae_decode(vae=ckpt.vae, latent=denoised)
save_image(image=image, prefix="out")
"""


def low_rank(components, seed: int, parts=("unet", "text_encoder")):
    """(part, module name, down, up) for every Linear and Conv2d of ``parts``:
    a 3x3 convolution gets a 3x3 down and a 1x1 up, as kohya's LoCon makes them."""
    generator = torch.Generator().manual_seed(seed)
    found = []
    for part in parts:
        for name, module in components[part].named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                shape = module.weight.shape
                down = torch.randn(RANK, *shape[1:], generator=generator) * 0.1
                up = torch.randn(shape[0], RANK, *([1, 1] if len(shape) == 4 else []), generator=generator) * 0.1
                found.append((part, name, down, up))
    return found


def kohya(weights, unet_config=None) -> dict:
    """kohya's layout, alpha = rank / 2 (a scale of 0.5); the U-Net by its original-layout
    names when ``unet_config`` is given (as sd-scripts saves SDXL LoRAs), else by diffusers'."""
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_" if unet_config else "lora_te_",
                "text_encoder_2": "lora_te2_"}
    state = {}
    for part, name, down, up in weights:
        if part == "unet" and unet_config is not None:
            name = next(iter(unet_to_original({name + ".weight": None}, unet_config))).removesuffix(".weight")
        if part != "unet":
            name = "text_model." + name.removeprefix("text_model.")
        key = prefixes[part] + name.replace(".", "_")
        state |= {key + ".lora_down.weight": down, key + ".lora_up.weight": up,
                  key + ".alpha": torch.tensor(RANK / 2)}
    return state


def peft(weights) -> dict:
    """diffusers/PEFT's layout of the same change: no alpha (a scale of 1), so B is halved
    (exactly: a power of two)."""
    state = {}
    for part, name, down, up in weights:
        if part != "unet":
            name = "text_model." + name.removeprefix("text_model.")
        state |= {f"{part}.{name}.lora_A.weight": down, f"{part}.{name}.lora_B.weight": up * 0.5}
    return state


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    sd1 = tiny_components("sd1", seed=0)
    save_single_file(sd1, root / "checkpoints" / "tiny-sd1.safetensors")
    sdxl = tiny_components("sdxl", seed=0)
    save_single_file(sdxl, root / "checkpoints" / "tiny-sdxl.safetensors")
    loras = root / "loras"
    loras.mkdir()
    weights = low_rank(sd1, seed=1)
    save_file(kohya(weights), str(loras / "kohya.safetensors"))
    save_file(peft(weights), str(loras / "peft.safetensors"))
    save_file(kohya(low_rank(sd1, seed=2)), str(loras / "second.safetensors"))
    save_file(kohya(weights) | {"lora_unet_nowhere.lora_down.weight":
              torch.zeros(RANK, 4), "lora_unet_nowhere.lora_up.weight": torch.zeros(4, RANK)},
              str(loras / "partly.safetensors"))
    xl_weights = low_rank(sdxl, seed=3, parts=("unet", "text_encoder", "text_encoder_2"))
    save_file(kohya(xl_weights, sdxl["unet"].config), str(loras / "xl-kohya.safetensors"))
    save_file(peft(xl_weights), str(loras / "xl-peft.safetensors"))
    save_file({"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": torch.zeros(RANK, 7, 3, 3),
               "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": torch.zeros(32, RANK, 1, 1)},
              str(loras / "misshapen.safetensors"))
    save_file({"foo.bar.lora_down.weight": torch.zeros(RANK, 4), "foo.bar.lora_up.weight": torch.zeros(4, RANK)},
              str(loras / "alien.safetensors"))
    save_file({"model.diffusion_model.conv_in.weight": torch.zeros(4, 4)}, str(loras / "checkpoint.safetensors"))
    return root


SHARED = Executor()  # the checkpoints load once for the module: a LoRA never changes them


def run(models, tmp_path, loras="", clip="ckpt.clip", model="ckpt.model", checkpoint="tiny-sd1.safetensors",
        sampler="euler", executor=SHARED, strength=None, out="out"):
    text = RECIPE.format(checkpoint=checkpoint, loras=loras, clip=clip, model=model, sampler=sampler)
    settings = {"diffusion": DiffusionSettings(device="cpu", models_dirs=(models,))}
    result = run_recipe(text, default_registry(), tmp_path / out, settings=settings, executor=executor,
                        overrides=None if strength is None else {"strength": str(strength)})
    (png,) = [p for p in result.files if p.suffix == ".png"]
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))


def one_lora(name, strength="strength", clip_strength=None):
    clip_strength = strength if clip_strength is None else clip_strength
    return (f'lora = load_lora(model=ckpt.model, clip=ckpt.clip, name="{name}", strength_model={strength}, '
            f"strength_clip={clip_strength})")


ON = dict(model="lora.model", clip="lora.clip")


def test_strength_zero_is_no_lora_and_strength_one_changes_the_image(models, tmp_path):
    plain = run(models, tmp_path, out="a")
    assert np.array_equal(run(models, tmp_path, one_lora("kohya.safetensors"), strength=0.0, out="b", **ON), plain)
    changed = run(models, tmp_path, one_lora("kohya.safetensors"), out="c", **ON)
    assert np.abs(changed.astype(int) - plain).mean() > 5


def test_kohya_and_peft_layouts_of_the_same_weights_draw_the_same(models, tmp_path):
    kohya_image = run(models, tmp_path, one_lora("kohya.safetensors"), out="a", **ON)
    assert np.array_equal(run(models, tmp_path, one_lora("peft.safetensors"), out="b", **ON), kohya_image)


def test_sdxl_kohya_original_names_and_peft_draw_the_same(models, tmp_path):
    args = dict(checkpoint="tiny-sdxl.safetensors", **ON)
    plain = run(models, tmp_path, out="p", checkpoint="tiny-sdxl.safetensors")
    kohya_image = run(models, tmp_path, one_lora("xl-kohya.safetensors"), out="a", **args)
    assert np.array_equal(run(models, tmp_path, one_lora("xl-peft.safetensors"), out="b", **args), kohya_image)
    assert not np.array_equal(kohya_image, plain)


def test_a_sweep_in_one_process_equals_fresh_runs_and_leaves_the_model_as_it_was(models, tmp_path):
    executor = Executor()
    sweep = [run(models, tmp_path, one_lora("kohya.safetensors"), executor=executor, strength=s, out=f"s{s}", **ON)
             for s in (0.0, 0.5, 1.0)]
    fresh = [run(models, tmp_path, one_lora("kohya.safetensors"), executor=Executor(), strength=s, out=f"f{s}", **ON)
             for s in (0.0, 0.5, 1.0)]
    assert all(np.array_equal(a, b) for a, b in zip(sweep, fresh))
    assert not np.array_equal(sweep[1], sweep[2])
    assert np.array_equal(run(models, tmp_path, executor=executor, out="plain"), sweep[0])  # the cached base


def test_the_base_weights_are_bit_identical_after_a_lora_run():
    model, clip, _ = tiny_handles("sd1")
    layout, tensors = read_lora_dict(kohya(low_rank({"unet": model.unet, "text_encoder": clip.encoders[0]}, 1)))
    before = digest(model.unet, *clip.encoders)
    patched = replace(model, patches=(lora_patch(layout, tensors, "x", model, 0.7, print),
                                      lora_patch(layout, tensors, "x", model, -1.3, print)))
    with applied(patched):
        assert digest(model.unet, *clip.encoders) != before
    with applied(replace(clip, patches=(lora_patch(layout, tensors, "x", clip, 0.7, print),))):
        pass
    assert digest(model.unet, *clip.encoders) == before


def test_two_loras_stack(models, tmp_path):
    stacked = (one_lora("kohya.safetensors") + "\n" + 'two = load_lora(model=lora.model, clip=lora.clip, '
               'name="second.safetensors", strength_model=1.0, strength_clip=1.0)')
    both = run(models, tmp_path, stacked, model="two.model", clip="two.clip", out="a")
    first = run(models, tmp_path, one_lora("kohya.safetensors"), out="b", **ON)
    assert not np.array_equal(both, first)
    # in the other order: the same changes, summed in another order (float addition is not associative)
    other = ('lora = load_lora(model=ckpt.model, clip=ckpt.clip, name="second.safetensors", strength_model=1.0, '
             'strength_clip=1.0)\ntwo = load_lora(model=lora.model, clip=lora.clip, name="kohya.safetensors", '
             'strength_model=strength, strength_clip=strength)')
    swapped = run(models, tmp_path, other, model="two.model", clip="two.clip", out="c")
    assert np.abs(swapped.astype(int) - both).max() <= 1


def test_model_only_changes_the_unet_alone(models, tmp_path):
    only = 'lora = load_lora_model_only(model=ckpt.model, name="kohya.safetensors", strength_model=1.0)'
    mine = run(models, tmp_path, only, model="lora.model", out="a")
    assert np.array_equal(mine, run(models, tmp_path, one_lora("kohya.safetensors", "1.0", "0.0"), out="b", **ON))


def run_error(models, tmp_path, loras, **kwargs) -> str:
    with pytest.raises(RunError) as caught:
        run(models, tmp_path, loras, **kwargs)
    return "\n".join(f"{d.message} {d.help}" for d in caught.value.diagnostics)


def test_an_sdxl_lora_on_an_sd1_model_names_both_families(models, tmp_path):
    message = run_error(models, tmp_path, one_lora("xl-kohya.safetensors"), **ON)
    assert "'xl-kohya.safetensors' is a LoRA for Stable Diffusion XL (sdxl-tiny)" in message
    assert "the model is Stable Diffusion 1.x ('sd1-tiny', cross-attention width 32)" in message
    clip_only = run_error(models, tmp_path, one_lora("xl-kohya.safetensors", "0.0", "1.0"), **ON)
    assert "a model with two text encoders (SDXL)" in clip_only


def test_keys_that_match_nothing_are_an_error_and_some_a_warning(models, tmp_path, capsys):
    assert "'alien.safetensors' is not a LoRA for this model: none of its 1 U-Net weights" in run_error(
        models, tmp_path, one_lora("alien.safetensors"), **ON)
    assert "not a LoRA: none of its 1 keys is in a LoRA layout" in run_error(
        models, tmp_path, one_lora("checkpoint.safetensors"), **ON)
    run(models, tmp_path, one_lora("partly.safetensors"), out="w", **ON)
    total = sum(1 for _ in low_rank(tiny_components("sd1"), 1, parts=("unet",))) + 1
    assert f"1 of {total} LoRA weights match nothing in the model: 'lora_unet_nowhere'" in capsys.readouterr().err


def test_a_weight_of_another_shape_names_the_key_and_both_shapes(models, tmp_path):
    message = run_error(models, tmp_path, one_lora("misshapen.safetensors"), **ON)
    assert "'lora_unet_down_blocks_0_resnets_0_conv1' changes a weight of 32 x 63" in message
    assert "'down_blocks.0.resnets.0.conv1' is 32 x 32 x 3 x 3 (32 x 288)" in message


def test_loha_and_lokr_apply_their_formulas():
    """A LoHa whose second product is all ones, and a LoKr whose first factor is [[1]],
    change the weights exactly as the LoRA of their other product does."""
    model, _, _ = tiny_handles("sd1")
    name, module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", None
    key = "lora_unet_" + name.replace(".", "_")
    generator = torch.Generator().manual_seed(5)
    down, up = torch.randn(RANK, 32, generator=generator), torch.randn(32, RANK, generator=generator)
    lora = {key + ".lora_down.weight": down, key + ".lora_up.weight": up}
    loha = {key + ".hada_w1_a": up, key + ".hada_w1_b": down, key + ".hada_w2_a": torch.ones(32, 1),
            key + ".hada_w2_b": torch.ones(1, 32)}
    lokr = {key + ".lokr_w1": torch.ones(1, 1), key + ".lokr_w2_a": up, key + ".lokr_w2_b": down}
    weights = []
    for state in (lora, loha, lokr):
        patch = lora_patch(*read_lora_dict(state), "x", model, 0.5, print)
        with applied(replace(model, patches=(patch,))):
            weights.append(model.unet.get_submodule(name).weight.clone())
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])
    assert not torch.equal(weights[0], model.unet.get_submodule(name).weight)


def test_a_pickle_is_refused_and_unsupported_formats_are_named(models, tmp_path):
    torch.save({"x": torch.zeros(1)}, models / "loras" / "old.pt")
    assert "pickle" in run_error(models, tmp_path, one_lora("old.pt"), **ON)
    tucker = models / "loras" / "tucker.safetensors"
    save_file({"lora_unet_conv_in.hada_t1": torch.zeros(1), "lora_unet_conv_in.hada_w1_a": torch.zeros(1)},
              str(tucker))
    assert "LoHa with Tucker decomposition" in run_error(models, tmp_path, one_lora("tucker.safetensors"), **ON)


def test_the_same_image_as_diffusers_load_lora_weights_and_fuse_lora():
    """diffusers applies a LoRA through peft (a test-only import here); fused at a
    scale, its weights are W + (B @ A) * (alpha / r * scale), as sdflow's."""
    pytest.importorskip("peft")
    import diffusers

    from sdflow_diffusion.numerics.decode import decode
    from sdflow_diffusion.numerics.encode import encode_text
    from sdflow_diffusion.numerics.sampling import empty_latent, make_scheduler, sample
    from sdflow_diffusion.stages.sample import Sample

    components = tiny_components("sd1", seed=0)
    model, clip, vae = tiny_handles("sd1", components=components)
    state = peft(low_rank(components, seed=1))
    layout, tensors = read_lora_dict(state)
    scale = 0.75
    model = replace(model, patches=(lora_patch(layout, tensors, "x", model, scale, print),))
    clip = replace(clip, patches=(lora_patch(layout, tensors, "x", clip, scale, print),))
    params = Sample(seed=3, steps=3, cfg=5.0, sampler="diffusers:euler")
    denoised = sample(model, encode_text(clip, "a red circle"), encode_text(clip, "blurry"), empty_latent(32, 32, 1),
                      params)
    mine = decode(vae, denoised)

    parts = {**components, "scheduler": make_scheduler(model.family, "euler", "normal")}
    pipe = diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights({k: v.clone() for k, v in state.items()})
    pipe.fuse_lora(lora_scale=scale)
    theirs = pipe("a red circle", negative_prompt="blurry", height=32, width=32, num_inference_steps=3,
                  guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(3), output_type="np").images
    difference = (mine - torch.from_numpy(theirs)).abs().max().item()
    assert difference == 0.0, f"max difference {difference}"


def read_lora_dict(state: dict):
    """:func:`read_lora` of a state dict, through a real file."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lora.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return read_lora(path, False, path.name)


def digest(*modules) -> str:
    hasher = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            hasher.update(name.encode())
            hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_patch_on_a_cuda_fp16_model_is_computed_there_and_undone_exactly():
    model, _, _ = tiny_handles("sd1")
    layout, tensors = read_lora_dict(kohya(low_rank({"unet": model.unet}, 1, parts=("unet",))))
    expected = {}
    with applied(replace(model, patches=(lora_patch(layout, tensors, "x", model, 1.0, print),))):
        expected = {k: v.clone() for k, v in model.unet.state_dict().items()}
    gpu = replace(model, unet=model.unet.to("cuda", torch.float16), device=torch.device("cuda"), dtype=torch.float16)
    before = digest(gpu.unet)
    with applied(replace(gpu, patches=(lora_patch(layout, tensors, "x", gpu, 1.0, print),))):
        for key, value in gpu.unet.state_dict().items():
            assert value.dtype == torch.float16 and value.is_cuda
            torch.testing.assert_close(value.float().cpu(), expected[key], rtol=2e-3, atol=2e-3)
    assert digest(gpu.unet) == before


def test_diffusers_older_attention_processor_names_find_their_modules():
    from sdflow_diffusion.models.lora import encoder_table, find_module, part_of, unet_table

    components = tiny_components("sd1")
    unet, encoder = unet_table(components["unet"]), encoder_table(components["text_encoder"])
    block = "down_blocks.0.attentions.0.transformer_blocks.0"
    cases = {f"unet.{block}.attn1.processor.to_out": (unet, f"{block}.attn1.to_out.0"),
             f"{block}.attn2.processor.to_k": (unet, f"{block}.attn2.to_k"),
             "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q": (unet, f"{block}.attn1.to_q"),
             "text_encoder.text_model.encoder.layers.1.self_attn.to_q": (encoder, "encoder.layers.1.self_attn.q_proj"),
             "text_encoder.text_model.encoder.layers.0.mlp.fc1": (encoder, "encoder.layers.0.mlp.fc1")}
    for group, (table, module) in cases.items():
        assert find_module(table, part_of(group)[1]) == module, group
