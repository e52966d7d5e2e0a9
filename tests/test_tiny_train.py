"""sdflow-tiny's family config, its file's loading, and its training script."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from sdflow_diffusion.models.load import load_checkpoint
from sdflow_diffusion.models.lookup import shipped_models
from sdflow_diffusion.models.families import detect_family, expected_shapes, family_dir
from sdflow_diffusion.models.files import header_shapes, safetensors_header
from training.tiny import model as tiny_model

from sdflow_diffusion.settings import DiffusionSettings

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


def test_the_shipped_family_is_the_training_scripts_architecture(tmp_path):
    shipped = family_dir("sdflow-tiny")
    scaling = json.loads((shipped / "vae" / "config.json").read_text())["scaling_factor"]
    written = tiny_model.write_family(tmp_path / "sdflow-tiny", scaling)
    for path in sorted(written.rglob("*.json")):
        relative = path.relative_to(written)
        assert json.loads(path.read_text()) == json.loads((shipped / relative).read_text()), relative
    assert json.loads((shipped / "family.json").read_text())["vae_scaling_factor"] == scaling


def test_sdflow_tiny_is_told_apart_from_the_other_sd1_families_by_shape():
    assert detect_family(expected_shapes("sdflow-tiny")) == "sdflow-tiny"
    assert detect_family(expected_shapes("sd1-tiny")) == "sd1-tiny"
    assert detect_family(expected_shapes("sd15")) == "sd15"


def test_the_shipped_file_loads_as_a_users_sd1_file_does():
    path = shipped_models()["sdflow-tiny.safetensors"]
    shapes, _ = header_shapes(safetensors_header(path))
    assert detect_family(shapes) == "sdflow-tiny"
    model, clip, vae = load_checkpoint(path, DiffusionSettings(device="cpu"))
    family = model.family
    assert (family.name, family.kind, family.prediction_type) == ("sdflow-tiny", "sd1", "v_prediction")
    assert family.scheduler_config["rescale_betas_zero_snr"] is True
    assert family.scheduler_config["timestep_spacing"] == "trailing"
    # Stored in fp16, run in fp32 on the CPU: the U-Net and the text encoder kept in fp16 (--weight-dtype
    # auto), the VAE loaded in fp32; with --weight-dtype run every part is loaded in fp32.
    assert (model.dtype, clip.dtype, vae.dtype) == (torch.float32,) * 3
    for module, dtype in ((model.unet, torch.float16), (clip.encoders[0], torch.float16), (vae.vae, torch.float32)):
        assert {p.dtype for p in module.parameters()} == {dtype}
    model, clip, vae = load_checkpoint(path, DiffusionSettings(device="cpu", weight_dtype="run"))
    for module in (model.unet, clip.encoders[0], vae.vae):
        assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_a_short_training_run_writes_a_loadable_reproducible_file(tmp_path):
    from training.tiny.train import main

    arguments = ["--vae-steps", "2", "--unet-steps", "2", "--pictures", "64", "--save-every", "1"]
    main(["--out", str(tmp_path / "a"), *arguments])
    main(["--out", str(tmp_path / "b"), *arguments])
    first, second = tmp_path / "a" / "sdflow-tiny.safetensors", tmp_path / "b" / "sdflow-tiny.safetensors"
    # The same weights (the header's key order is not fixed: compare tensors).
    a, b = load_file(str(first)), load_file(str(second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "checkpoints" / "sdflow-tiny-step00001.safetensors").is_file()
    shapes, metadata = header_shapes(safetensors_header(first))
    assert detect_family(shapes) == "sdflow-tiny"
    assert metadata["modelspec.prediction_type"] == "v"
    log = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert log["unet"]["steps"] == 2 and log["latents"]["scaling_factor"] > 0
