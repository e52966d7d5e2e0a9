"""--weight-dtype: an fp16 (or fp8) checkpoint's U-Net and text encoders, and
a ControlNet's weights, kept as the file stores them in an fp32 run, each
layer's weights widened as it runs (the default on the CPU): the same images
bit for bit as weights widened when they load, half the weights' memory, and
a LoRA on top as exact as on wide weights, the narrow weights untouched by it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdflow.plugin import StageError
from sdflow.registry import default_registry
from sdflow.testing import Executor, run_recipe
from sdflow_diffusion.models.controlnet import inspect_controlnet, load_controlnet
from sdflow_diffusion.models.load import load_checkpoint
from sdflow_diffusion.models.lora import lora_patch, read_lora
from sdflow_diffusion.models.patches import applied
from sdflow_diffusion.models.storage import compute_in, keeps_file_dtype, runs_in
from sdflow_diffusion.settings import DiffusionSettings
from sdflow_diffusion.testing import save_single_file, tiny_components, tiny_controlnet

from cli import ROOT, sdflow_cli

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

RECIPE = """\
sdflow 1
ckpt = load_checkpoint(name="{checkpoint}")
{lora}
positive = clip_text_encode(clip={clip}, text="a red circle on a blue background")
negative = clip_text_encode(clip={clip}, text="blurry")
latent = empty_latent(width=32, height=32, batch=1)
denoised = sample(model={model}, positive=positive, negative=negative, latent=latent, seed=3, steps=3, cfg=5.0)
image = vae_decode(vae=ckpt.vae, latent=denoised)
save_image(image=image, prefix="out")
"""
LORA = ('lora = load_lora(model=ckpt.model, clip=ckpt.clip, name="lora.safetensors", strength_model=1.0, '
        'strength_clip=1.0)')
CONTROL = ('hint = load_image(name="hint.png")\nnet = load_controlnet(name="control.safetensors")\n'
           "cn = apply_controlnet(positive=positive, negative=negative, control_net=net, image=hint.image, "
           "strength=1.0)\n")
NARROW = ("unet", "text_encoder", "text_encoder_2")  # the parts kept as the file stores them; never the VAE


def save_as(components: dict, path: Path, dtype: torch.dtype) -> Path:
    """``components`` written as one file, the U-Net and text encoders in
    ``dtype``, the VAE in fp16 (a narrow VAE is read wide all the same)."""
    for name in ("unet", "vae", *NARROW):
        if name in components:
            components[name].to(torch.float16 if name == "vae" else dtype)
    return save_single_file(components, path)


def lora_of(unet, clip_encoder) -> dict:
    """A kohya LoRA (rank 4, scale 0.5) on every Linear of the U-Net and the text encoder."""
    generator = torch.Generator().manual_seed(1)
    state = {}
    for prefix, root in (("lora_unet_", unet), ("lora_te_", clip_encoder)):
        for name, module in root.named_modules():
            if isinstance(module, torch.nn.Linear):
                if root is clip_encoder:
                    name = "text_model." + name.removeprefix("text_model.")
                key = prefix + name.replace(".", "_")
                state[key + ".lora_down.weight"] = torch.randn(4, module.in_features, generator=generator) * 0.1
                state[key + ".lora_up.weight"] = torch.randn(module.out_features, 4, generator=generator) * 0.5
                state[key + ".alpha"] = torch.tensor(2.0)
    return state


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for kind in ("sd1", "sd2", "sdxl"):
        save_as(tiny_components(kind, seed=7), root / "checkpoints" / f"{kind}-fp16.safetensors", torch.float16)
    sd1 = tiny_components("sd1", seed=7)
    (root / "loras").mkdir()
    save_file(lora_of(sd1["unet"], sd1["text_encoder"]), str(root / "loras" / "lora.safetensors"))
    (root / "controlnet").mkdir()
    control = {key: value.half().contiguous() for key, value in tiny_controlnet(sd1["unet"], 5).state_dict().items()}
    save_file(control, str(root / "controlnet" / "control.safetensors"))
    hint = np.zeros((32, 32, 3), np.uint8)
    hint[8:24, 4:14] = 255
    Image.fromarray(hint).save(root / "hint.png")
    save_as(sd1, root / "checkpoints" / "sd1-fp8.safetensors", torch.float8_e4m3fn)
    return root


def draw(models: Path, tmp_path: Path, weight_dtype: str, checkpoint: str, lora: bool = False,
         control: bool = False) -> np.ndarray:
    text = RECIPE.format(checkpoint=checkpoint, lora=LORA if lora else "",
                         model="lora.model" if lora else "ckpt.model", clip="lora.clip" if lora else "ckpt.clip")
    if control:
        text = text.replace("latent = ", CONTROL + "latent = ").replace(
            "positive=positive, negative=negative, latent", "positive=cn.positive, negative=cn.negative, latent")
    settings = {"diffusion": DiffusionSettings(device="cpu", models_dirs=(models,), weight_dtype=weight_dtype)}
    out = tmp_path / f"{checkpoint}-{weight_dtype}-{lora}-{control}"
    result = run_recipe(text, default_registry(), out, settings=settings, executor=Executor(), recipe_dir=models)
    (png,) = [p for p in result.files if p.suffix == ".png"]
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))


def loaded(path: Path, weight_dtype: str) -> dict:
    model, clip, vae = load_checkpoint(path, DiffusionSettings(device="cpu", weight_dtype=weight_dtype))
    return {"unet": model.unet, "vae": vae.vae, **dict(zip(NARROW[1:], clip.encoders))}


def nbytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# The same pixels ------------------------------------------------------------------------------

@pytest.mark.parametrize("checkpoint", ["sd1-fp16", "sd2-fp16", "sdxl-fp16", "sd1-fp8"])
def test_narrow_weights_draw_the_same_pixels_as_widened_ones(models, tmp_path, checkpoint):
    name = checkpoint + ".safetensors"
    assert np.array_equal(draw(models, tmp_path, "file", name), draw(models, tmp_path, "run", name))


def test_the_default_recipe_keeps_the_shipped_fp16_weights_and_draws_the_same_png(tmp_path):
    """The user's path: sdflow-tiny is an fp16 file, so a CPU run keeps it
    so by default; --weight-dtype run widens it, and the PNG is the same."""
    recipe = ROOT / "examples" / "txt2img.sdflow"
    images = []
    for option in ([], ["--weight-dtype", "run"]):
        result = sdflow_cli("run", str(recipe), "--output", str(tmp_path / (option[-1] if option else "default")),
                            "--device", "cpu", *option)
        assert result.returncode == 0, result.stderr
        with Image.open(result.stdout.split()[-1]) as image:
            images.append(np.asarray(image))
    assert np.array_equal(*images)
    model, clip, vae = load_checkpoint(ROOT / "plugins/sdflow_diffusion/models/tiny/sdflow-tiny.safetensors",
                                       DiffusionSettings(device="cpu"))
    assert {p.dtype for p in model.unet.parameters()} == {torch.float16}
    assert {p.dtype for p in clip.encoders[0].parameters()} == {torch.float16}
    assert {p.dtype for p in vae.vae.parameters()} == {torch.float32}
    assert (model.dtype, clip.dtype, vae.dtype) == (torch.float32,) * 3  # what runs, and what images record


def test_a_lora_on_narrow_weights_draws_what_it_draws_on_wide_ones(models, tmp_path):
    with_lora = draw(models, tmp_path, "file", "sd1-fp16.safetensors", lora=True)
    assert np.array_equal(with_lora, draw(models, tmp_path, "run", "sd1-fp16.safetensors", lora=True))
    without = draw(models, tmp_path, "file", "sd1-fp16.safetensors")
    assert np.abs(with_lora.astype(int) - without).mean() > 1  # the LoRA is not lost on the narrow weights


def test_a_controlnet_kept_in_fp16_guides_as_a_widened_one_does(models, tmp_path):
    guided = draw(models, tmp_path, "file", "sd1-fp16.safetensors", control=True)
    assert np.array_equal(guided, draw(models, tmp_path, "run", "sd1-fp16.safetensors", control=True))
    assert np.abs(guided.astype(int) - draw(models, tmp_path, "file", "sd1-fp16.safetensors")).mean() > 1
    path = models / "controlnet" / "control.safetensors"
    narrow, wide = (load_controlnet(inspect_controlnet(path, path.name), path.name,
                                    DiffusionSettings(device="cpu", weight_dtype=which)) for which in ("file", "run"))
    assert {p.dtype for p in narrow.net.parameters()} == {torch.float16} and narrow.dtype == torch.float32
    assert nbytes(narrow.net) * 2 == nbytes(wide.net)


# Half the memory ------------------------------------------------------------------------------

def test_the_unet_and_text_encoders_take_half_the_memory_and_widen_to_the_same_weights(models):
    path = models / "checkpoints" / "sdxl-fp16.safetensors"
    narrow, wide = loaded(path, "file"), loaded(path, "run")
    for part in NARROW:
        assert nbytes(narrow[part]) * 2 == nbytes(wide[part]), part
        ours, theirs = dict(narrow[part].named_parameters()), dict(wide[part].named_parameters())
        assert ours.keys() == theirs.keys()
        assert all(ours[k].dtype == torch.float16 and torch.equal(ours[k].float(), theirs[k]) for k in ours), part
        assert {str(t.dtype) for t in narrow[part].buffers() if t.is_floating_point()} <= {"torch.float32"}
    assert nbytes(narrow["vae"]) == nbytes(wide["vae"])
    assert {p.dtype for p in narrow["vae"].parameters()} == {torch.float32}


def test_an_fp8_file_is_kept_in_fp8_a_quarter_of_fp32(models):
    path = models / "checkpoints" / "sd1-fp8.safetensors"
    narrow, wide = loaded(path, "file"), loaded(path, "run")
    assert {p.dtype for p in narrow["unet"].parameters()} == {torch.float8_e4m3fn}
    assert nbytes(narrow["unet"]) * 4 == nbytes(wide["unet"])
    assert all(torch.equal(a.float(), b) for a, b in zip(narrow["unet"].parameters(), wide["unet"].parameters()))


# A LoRA leaves the narrow weights as they were ---------------------------------------------------

def test_a_lora_changes_wide_copies_and_puts_the_narrow_weights_back(models):
    model, clip, _ = load_checkpoint(models / "checkpoints" / "sd1-fp16.safetensors",
                                     DiffusionSettings(device="cpu"))
    path = models / "loras" / "lora.safetensors"
    layout, tensors = read_lora(path, False, path.name)
    before = {name: param for name, param in model.unet.named_parameters()}
    copies = {name: param.detach().clone() for name, param in before.items()}
    patched = replace(model, patches=(lora_patch(layout, tensors, "x", model, 0.7, print),
                                      lora_patch(layout, tensors, "x", model, -1.3, print)))
    layer = model.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert layer.weight.dtype == torch.float16  # kept as the file stores it: the CPU's default
    with applied(patched):
        assert layer.weight.dtype == torch.float32  # changed in the run's dtype, not rounded to the file's
        assert not torch.equal(layer.weight.half().float(), layer.weight)
    after = dict(model.unet.named_parameters())
    assert all(after[name] is before[name] for name in before)  # the same narrow tensors, put back
    assert all(torch.equal(after[name], copies[name]) for name in before)


# The hooks ------------------------------------------------------------------------------------

def test_a_layer_whose_call_fails_puts_its_narrow_weights_back():
    wide = torch.nn.Linear(8, 4)
    with torch.no_grad():
        wide.weight.copy_(wide.weight.half().float())
        wide.bias.copy_(wide.bias.half().float())
    layer = compute_in(torch.nn.Sequential(torch.nn.Linear(8, 4)).half(), torch.float32)[0]
    layer.load_state_dict({k: v.half() for k, v in wide.state_dict().items()})
    weight = layer.weight
    with pytest.raises(RuntimeError):
        layer(torch.ones(2, 5))  # the wrong width: the call fails inside
    assert layer.weight is weight and weight.dtype == torch.float16
    x = torch.randn(3, 8)
    with torch.inference_mode():
        assert torch.equal(layer(x), wide(x))
    assert layer.weight is weight and runs_in(layer) == torch.float32


def test_which_runs_keep_the_files_dtype():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert keeps_file_dtype(DiffusionSettings(), cpu)
    assert not keeps_file_dtype(DiffusionSettings(), cuda)
    assert keeps_file_dtype(DiffusionSettings(weight_dtype="file"), cuda)
    assert not keeps_file_dtype(DiffusionSettings(weight_dtype="run"), cpu)
    assert not keeps_file_dtype(DiffusionSettings(compile=True), cpu)  # auto: the compiled U-Net runs wide
    with pytest.raises(StageError, match="--weight-dtype file cannot be combined with --compile"):
        keeps_file_dtype(DiffusionSettings(compile=True, weight_dtype="file"), cpu)
