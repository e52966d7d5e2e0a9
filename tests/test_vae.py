"""load_vae: a VAE file (original layout, diffusers layout, diffusers folder) that decodes as the
checkpoint's own VAE does; a VAE of no known family refused; the scaling factor's family chosen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdflow.registry import default_registry
from sdflow.testing import Executor, RunError, run_recipe
from sdflow_diffusion.models.ldm_layout import vae_to_original
from sdflow_diffusion.settings import DiffusionSettings
from sdflow_diffusion.testing import save_single_file, tiny_components

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

RECIPE = """\
sdflow 1
ckpt = load_checkpoint(name="tiny-sd1.safetensors")
{vae_line}
positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
negative = clip_text_encode(clip=ckpt.clip, text="blurry")
latent = empty_latent(width=32, height=32, batch=1)
denoised = sample(model=ckpt.model, positive=positive, negative=negative, latent=latent, seed=3, steps=2, cfg=5.0)
image = vae_decode(vae={vae}, latent=denoised)
save_image(image=image, prefix="out")
"""
SHARED = Executor()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """tiny-sd1 with a VAE of seed 0; the same VAE alone in three layouts, another (seed 1), an SD3-like one."""
    root = tmp_path_factory.mktemp("models")
    sd1 = tiny_components("sd1", seed=0)
    save_single_file(sd1, root / "checkpoints" / "tiny-sd1.safetensors")
    vaes = root / "vae"
    vaes.mkdir()
    state = {k: v.contiguous() for k, v in sd1["vae"].state_dict().items()}
    original = vae_to_original(state, sd1["vae"].config)
    save_file(original, str(vaes / "same.safetensors"))
    save_file({"first_stage_model." + k: v for k, v in original.items()}, str(vaes / "prefixed.safetensors"))
    save_file(state, str(vaes / "diffusers.safetensors"))
    sd1["vae"].save_pretrained(vaes / "folder", safe_serialization=True)
    other = tiny_components("sd1", seed=1)["vae"]
    save_file(vae_to_original(other.state_dict(), other.config), str(vaes / "other.safetensors"))
    wide = dict(original, **{"decoder.conv_in.weight": torch.zeros(16, 16, 3, 3)})
    save_file(wide, str(vaes / "sixteen.safetensors"))
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(vaes / "lora.safetensors"))
    return root


def run(models, tmp_path, vae_line="", vae="ckpt.vae", out="out"):
    settings = {"diffusion": DiffusionSettings(device="cpu", models_dirs=(models,))}
    result = run_recipe(RECIPE.format(vae_line=vae_line, vae=vae), default_registry(), tmp_path / out,
                        settings=settings, executor=SHARED)
    (png,) = result.files
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("name", ["same.safetensors", "prefixed.safetensors", "diffusers.safetensors", "folder"])
def test_a_vae_file_decodes_as_the_checkpoints_own(name, models, tmp_path, capsys):
    own = run(models, tmp_path, out="own")
    loaded = run(models, tmp_path, f'v = load_vae(name="{name}", family="sd1-tiny")', vae="v", out="v")
    assert np.array_equal(loaded, own)
    assert "warning" not in capsys.readouterr().err


def test_another_vae_decodes_otherwise_and_auto_warns_that_it_guessed(models, tmp_path, capsys):
    own = run(models, tmp_path, out="own")
    other = run(models, tmp_path, 'v = load_vae(name="other.safetensors")', vae="v", out="v")
    assert not np.array_equal(other, own)
    assert "fits SD 1.x/2.x and SDXL alike; it decodes latents as family 'sd1-tiny'" in capsys.readouterr().err


def test_a_diffusers_folder_says_its_own_family(models, tmp_path, capsys):
    """A folder's config carries the scaling factor: no guess, no warning."""
    from sdflow_diffusion.models.load import inspect_vae, vae_family

    checked = inspect_vae(models / "vae" / "folder", "folder")
    assert vae_family(checked, "auto", "folder") == ("sd1-tiny", False)
    assert set(checked.fits) >= {"sd1-tiny", "sdxl-tiny"}  # the same shapes
    renamed = models / "vae" / "my-sdxl_vae.safetensors"
    renamed.write_bytes((models / "vae" / "same.safetensors").read_bytes())
    assert vae_family(inspect_vae(renamed, renamed.name), "auto", renamed.name) == ("sdxl-tiny", False)


def errors(models, tmp_path, line) -> str:
    with pytest.raises(RunError) as caught:
        run(models, tmp_path, line, vae="v")
    return "\n".join(f"{d.message} {d.help}" for d in caught.value.diagnostics)


def test_wrong_vaes_are_refused_with_what_they_are(models, tmp_path):
    assert "'sixteen.safetensors' is a VAE of no family sdflow knows: its latents have 16 channels" in errors(
        models, tmp_path, 'v = load_vae(name="sixteen.safetensors")')
    assert "'lora.safetensors' is not a VAE" in errors(models, tmp_path, 'v = load_vae(name="lora.safetensors")')
    assert "is not one of family 'sdflow-tiny': its shapes are those of" in errors(
        models, tmp_path, 'v = load_vae(name="same.safetensors", family="sdflow-tiny")')


def test_a_latent_decoded_by_a_vae_of_another_scale_is_refused_naming_both():
    """An SD 1.x latent (scale 0.18215) given to an SDXL VAE (0.13025): an
    error, not a washed-out picture; and the same for a sampler."""
    import torch
    from sdflow_diffusion.handles import Latent
    from sdflow_diffusion.numerics.decode import decode
    from sdflow_diffusion.numerics.vae_encode import encode
    from sdflow_diffusion.testing import tiny_handles

    from sdflow.plugin import StageError

    _, _, sd1_vae = tiny_handles("sd1")
    _, _, xl_vae = tiny_handles("sdxl")
    latent = encode(sd1_vae, torch.rand((1, 32, 32, 3)))
    assert latent.extra["space"] == ("sd1-tiny", sd1_vae.family.vae_scaling_factor)
    decode(sd1_vae, latent)  # its own VAE: fine
    with pytest.raises(StageError, match=r"the latent is in sd1-tiny's latent space \(VAE scale 0.18215\), "
                                         r"but the VAE is sdxl-tiny's \(scale 0.13025\)"):
        decode(xl_vae, latent)
    decode(xl_vae, Latent(torch.zeros((1, 4, 4, 4))))  # an empty latent has no space: anything goes
