"""Loading checkpoints offline: the tokenizer, family detection, tiny models
saved as users' files are and loaded back exactly, where a name is looked
up, and what a user is told about a file that cannot load."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from sdflow.plugin import StageError  # noqa: E402
from sdflow_diffusion.settings import DiffusionSettings  # noqa: E402
from sdflow_diffusion.models.load import load_checkpoint  # noqa: E402
from sdflow_diffusion.models.lookup import find_checkpoint, find_model  # noqa: E402
from sdflow_diffusion.models.families import FAMILIES_DIR, detect_family, expected_shapes  # noqa: E402
from sdflow_diffusion.models.ldm_layout import to_original  # noqa: E402
from sdflow_diffusion.testing import (  # noqa: E402
    TINY_FAMILY, save_diffusers, save_single_file, tiny_checkpoint, tiny_components)
from sdflow_diffusion.models.tokenizer import clip_tokenizer  # noqa: E402

CPU = DiffusionSettings(device="cpu")
KINDS = ("sd1", "sd2", "sdxl", "sdxl-refiner")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """kind -> (components, single file, diffusers folder), saved once."""
    folder = tmp_path_factory.mktemp("tiny")
    made = {}
    for kind in KINDS:
        components = tiny_components(kind, seed=1)
        made[kind] = (components, save_single_file(components, folder / f"tiny-{kind}.safetensors"),
                      save_diffusers(components, folder / f"tiny-{kind}"))
    return made


def weights_of(model, clip, vae):
    return [model.unet, vae.vae, *clip.encoders]


def assert_same_weights(originals, loaded):
    assert len(originals) == len(loaded)
    for original, copy in zip(originals, loaded):
        mine, theirs = original.state_dict(), copy.state_dict()
        assert mine.keys() == theirs.keys(), type(original).__name__
        different = [key for key in mine if not torch.equal(mine[key], theirs[key])]
        assert different == [], f"{type(original).__name__}: {different[:5]}"


def originals(components):
    return [components[n] for n in ("unet", "vae", "text_encoder", "text_encoder_2") if n in components]


# The tokenizer ---------------------------------------------------------------

def test_tokenizer_matches_stable_diffusion_offline():
    tokenizer = clip_tokenizer()
    assert tokenizer("a photograph of an astronaut riding a horse").input_ids == [
        49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert (len(tokenizer), tokenizer.model_max_length, tokenizer.pad_token_id) == (49408, 77, 49407)
    padded = clip_tokenizer("!")("a horse", padding="max_length", max_length=77).input_ids
    assert padded[:5] == [49406, 320, 4558, 49407, 0] and len(padded) == 77
    assert clip_tokenizer() is tokenizer  # built once per pad token


# Detection -------------------------------------------------------------------

@pytest.mark.parametrize("name, count, key, shape", [
    ("sd15", 1130, "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", (320, 768)),
    ("sd21-v", 1214, "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", (3072, 1024)),
    ("sdxl-base", 2513, "conditioner.embedders.1.model.text_projection", (1280, 1280)),
    ("sdxl-base", 2513, "model.diffusion_model.label_emb.0.0.weight", (1280, 2816)),
    ("sd15", 1130, "first_stage_model.decoder.mid.attn_1.q.weight", (512, 512, 1, 1)),
])
def test_real_families_expect_the_real_files_tensors(name, count, key, shape):
    # Counts of the public SD 1.5 / 2.1 / SDXL files, less their unused extras.
    shapes = expected_shapes(name)
    assert len(shapes) == count and shapes[key] == shape


@pytest.mark.parametrize("name", ["sd15", "sdxl-base", "sdxl-refiner", "sd15-inpaint", "sdxl-inpaint",
                                  "sd1-tiny", "sd2-tiny", "sdxl-tiny", "sdxl-refiner-tiny", "sd1-inpaint-tiny"])
def test_each_family_is_told_apart_by_shape(name):
    assert detect_family(expected_shapes(name)) == name


def test_the_refiner_expects_the_refiner_files_tensors():
    # Stability's sd_xl_refiner.yaml: 384 channels (time embedding 4 x 384), ADM input 2560,
    # context 1280 from OpenCLIP bigG alone, under conditioner.embedders.0.
    shapes = expected_shapes("sdxl-refiner")
    assert shapes["model.diffusion_model.label_emb.0.0.weight"] == (1536, 2560)
    assert shapes["model.diffusion_model.input_blocks.4.1.transformer_blocks.3.attn2.to_k.weight"] == (768, 1280)
    assert shapes["conditioner.embedders.0.model.text_projection"] == (1280, 1280)
    assert not any(key.startswith("conditioner.embedders.1.") for key in shapes)


def test_detection_reads_meta_tensors_too():
    from sdflow_diffusion.models.families import build_components, family_dir

    state = to_original(build_components(family_dir("sdxl-base"), "sdxl", meta=True))
    assert next(iter(state.values())).is_meta
    assert detect_family(state) == "sdxl-base"


def test_sd2_shapes_are_v_prediction_unless_told_otherwise():
    shapes = dict(expected_shapes("sd2-base"))
    shapes["cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight"] = (3072, 1024)  # unused layer
    shapes["model_ema.decay"] = ()
    assert detect_family(shapes) == "sd21-v"
    assert detect_family(shapes, "epsilon") == "sd2-base"


def test_a_different_architecture_is_named_with_what_differs():
    shapes = dict(expected_shapes("sd15"))
    shapes["model.diffusion_model.input_blocks.0.0.weight"] = (320, 8, 3, 3)  # an instruct-pix2pix model
    with pytest.raises(StageError) as err:
        detect_family(shapes)
    assert err.value.message == (
        "unsupported Stable Diffusion checkpoint: 1 tensor differs from sd15 (Stable Diffusion 1.x (512 px)), "
        "e.g. model.diffusion_model.input_blocks.0.0.weight is [320, 8, 3, 3], expected [320, 4, 3, 3]")
    assert "sdxl-base" in err.value.help and "tiny" not in err.value.help


# Distilled models: a U-Net config read off the file ------------------------------------------

DISTILLED = {
    # BK-SDM-like: SD 1.x with more layers per block and no middle block
    "sd1": dict(layers_per_block=2, mid_block_type=None),
    # SSD-1B-like: SDXL with up blocks deeper in some layers than their down blocks
    "sdxl": dict(layers_per_block=2, transformer_layers_per_block=[1, 2],
                 reverse_transformer_layers_per_block=[[2, 1, 3], [1, 1, 1]]),
}


@pytest.mark.parametrize("kind", sorted(DISTILLED))
def test_a_distilled_unet_loads_with_a_config_read_off_its_shapes(kind, tmp_path):
    import diffusers

    from sdflow_diffusion.models.families import family_dir, read_json
    from sdflow_diffusion.numerics.encode import encode_text
    from sdflow_diffusion.numerics.sampling import empty_latent, sample
    from sdflow_diffusion.stages.sample import Sample

    components = tiny_components(kind, seed=3)
    config = {**read_json(family_dir(TINY_FAMILY[kind]) / "unet" / "config.json"), **DISTILLED[kind]}
    torch.manual_seed(0)
    components["unet"] = diffusers.UNet2DConditionModel.from_config(config).eval()
    path = save_single_file(components, tmp_path / f"distilled-{kind}.safetensors")
    model, clip, vae = load_checkpoint(path, CPU)
    assert model.family.name == TINY_FAMILY[kind]
    assert_same_weights(originals(components), weights_of(model, clip, vae))
    for key in DISTILLED[kind]:
        assert model.unet.config[key] == components["unet"].config[key], key
    latent = sample(model, encode_text(clip, "a cat"), encode_text(clip, ""), empty_latent(32, 32, 1),
                    Sample(seed=1, steps=2, cfg=5.0))
    assert latent.samples.shape == (1, 4, 4, 4) and torch.isfinite(latent.samples).all()


@pytest.mark.parametrize("name", ["sd15", "sd21-v", "sdxl-base", "sd1-tiny", "sdxl-tiny"])
def test_the_config_read_off_a_familys_own_shapes_builds_its_unet(name):
    """Read off a family's own shapes, the inferred config gives that very
    U-Net back, tensor for tensor: how distilled files are proved."""
    from sdflow_diffusion.models.families import _inferred_unet

    shapes = dict(expected_shapes(name))
    assert _inferred_unet(name, shapes) is not None


def test_a_unet_that_is_no_distillation_is_still_refused(tiny, tmp_path):
    from safetensors import safe_open

    with safe_open(str(tiny["sd1"][1]), framework="pt") as handle:
        state = {k: handle.get_tensor(k) for k in handle.keys()}
    del state["model.diffusion_model.output_blocks.1.0.in_layers.0.weight"]  # a layer half gone
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(StageError, match="unsupported Stable Diffusion checkpoint: 1 tensor differs from sd1-tiny"):
        load_checkpoint(path, CPU)


def test_a_checkpoint_without_its_vae_says_so():
    shapes = {k: v for k, v in expected_shapes("sdxl-base").items() if not k.startswith("first_stage_model.")}
    with pytest.raises(StageError, match=r"it has no VAE \(first_stage_model\.\*\) weights"):
        detect_family(shapes)


# Round trips -----------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_single_file_round_trip_is_exact(tiny, kind):
    components, path, _ = tiny[kind]
    model, clip, vae = load_checkpoint(path, CPU)
    assert_same_weights(originals(components), weights_of(model, clip, vae))
    assert model.family.name == TINY_FAMILY[kind] == clip.family.name == vae.family.name
    assert [t.pad_token for t in clip.tokenizers] == [t.pad_token for t in
                                                      (components.get("tokenizer"), components.get("tokenizer_2"))
                                                      if t is not None]
    assert model.family.prediction_type == ("v_prediction" if kind == "sd2" else "epsilon")


@pytest.mark.parametrize("kind", KINDS)
def test_diffusers_folder_round_trip_is_exact(tiny, kind):
    components, _, folder = tiny[kind]
    model, clip, vae = load_checkpoint(folder, CPU)
    assert_same_weights(originals(components), weights_of(model, clip, vae))
    assert model.family.name == TINY_FAMILY[kind]


def test_a_diffusers_folder_without_tokenizers_uses_the_shipped_one(tmp_path):
    folder = tiny_checkpoint(tmp_path, "sdxl", layout="diffusers")
    for name in ("tokenizer", "tokenizer_2"):
        for file in (folder / name).iterdir():
            file.unlink()
        (folder / name).rmdir()
    _, clip, _ = load_checkpoint(folder, CPU)
    assert [t.pad_token_id for t in clip.tokenizers] == [49407, 0]


def test_saved_file_is_detected_as_its_tiny_family(tiny):
    from safetensors import safe_open

    for kind in KINDS:
        with safe_open(str(tiny[kind][1]), framework="pt") as handle:
            shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
        assert detect_family(shapes) == TINY_FAMILY[kind]


def test_tiny_components_are_deterministic_and_leave_the_global_seed_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first, second, other = tiny_components("sd1", 5), tiny_components("sd1", 5), tiny_components("sd1", 6)
    assert torch.equal(torch.rand(3), expected)
    assert_same_weights(originals(first), originals(second))
    assert not torch.equal(first["unet"].conv_in.weight, other["unet"].conv_in.weight)


def test_extras_in_real_files_are_ignored(tmp_path):
    state = to_original(tiny_components("sd1"))
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["alphas_cumprod"] = torch.ones(1000)
    path = tmp_path / "with-extras.safetensors"
    save_file(state, str(path))
    model, _, _ = load_checkpoint(path, CPU)
    assert model.family.name == "sd1-tiny"


# Prediction type --------------------------------------------------------------

def test_prediction_comes_from_the_recipe_the_file_or_the_sd2_name(tiny, tmp_path):
    components, path, _ = tiny["sd2"]
    assert load_checkpoint(path, CPU, "epsilon")[0].family.prediction_type == "epsilon"
    named = save_single_file(components, tmp_path / "v2-1_512-ema-pruned.safetensors")
    assert load_checkpoint(named, CPU)[0].family.prediction_type == "epsilon"
    sd1 = tiny["sd1"][0]
    marked = save_single_file(sd1, tmp_path / "a.safetensors", metadata={"modelspec.prediction_type": "v"})
    family = load_checkpoint(marked, CPU)[0].family
    assert (family.prediction_type, family.scheduler_config["prediction_type"]) == ("v_prediction",) * 2
    state = to_original(tiny["sdxl"][0]) | {"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}
    save_file(state, str(tmp_path / "vpred.safetensors"))
    family = load_checkpoint(tmp_path / "vpred.safetensors", CPU)[0].family
    assert family.prediction_type == "v_prediction" and family.scheduler_config["rescale_betas_zero_snr"]


def test_bf16_loads_in_bf16_and_leaves_the_shipped_configs_alone(tiny):
    before = {p: p.read_bytes() for p in FAMILIES_DIR.rglob("*.json")}
    model, clip, vae = load_checkpoint(tiny["sdxl"][1], DiffusionSettings(device="cpu", dtype="bf16"))
    assert {model.unet.dtype, vae.vae.dtype, *(e.dtype for e in clip.encoders)} == {torch.bfloat16}
    assert vae.dtype == torch.bfloat16
    assert {p: p.read_bytes() for p in FAMILIES_DIR.rglob("*.json")} == before


def test_a_folder_saved_in_bf16_loads_in_the_runs_dtype(tmp_path):
    components = tiny_components("sd2")
    for name in ("unet", "vae", "text_encoder"):
        components[name].to(torch.bfloat16)
    folder = save_diffusers(components, tmp_path / "bf16")
    model, clip, vae = load_checkpoint(folder, CPU)
    assert (model.unet.dtype, clip.encoders[0].dtype, vae.vae.dtype) == (torch.float32,) * 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_on_cuda_keeps_the_sdxl_vae_in_fp32(tiny):
    model, clip, vae = load_checkpoint(tiny["sdxl"][1], DiffusionSettings(device="cuda", dtype="fp16"))
    assert (model.unet.dtype, clip.encoders[1].dtype, vae.vae.dtype) == (torch.float16, torch.float16, torch.float32)
    assert model.unet.device.type == "cuda" and vae.dtype == torch.float32
    _, _, sd1_vae = load_checkpoint(tiny["sd1"][1], DiffusionSettings(device="cuda", dtype="fp16"))
    assert sd1_vae.vae.dtype == torch.float16


# Where a name is looked up -----------------------------------------------------

def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_lookup_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second, env, recipe = (tmp_path / n for n in ("first", "second", "env", "recipe"))
    # --models-dir first second, then $SDFLOW_MODELS (as sdflow.settings.resolve orders them)
    settings = DiffusionSettings(models_dirs=(first, second, env))

    def find(name):
        return find_checkpoint(name, settings, recipe)

    touch(recipe / "models" / "checkpoints" / "m.safetensors")
    assert find("m.safetensors") == recipe / "models" / "checkpoints" / "m.safetensors"
    touch(env / "checkpoints" / "m.safetensors")
    assert find("m.safetensors") == env / "checkpoints" / "m.safetensors"
    touch(second / "models" / "checkpoints" / "m.safetensors")
    assert find("m.safetensors") == second / "models" / "checkpoints" / "m.safetensors"
    touch(first / "checkpoints" / "m.safetensors")
    assert find("m.safetensors") == first / "checkpoints" / "m.safetensors"
    touch(recipe / "m.safetensors")  # a path relative to the recipe is taken as it is
    assert find("m.safetensors") == recipe / "m.safetensors"
    touch(tmp_path / "m.safetensors")  # and relative to the working folder first
    assert find("m.safetensors") == tmp_path / "m.safetensors"
    assert find(str(env / "checkpoints" / "m.safetensors")) == env / "checkpoints" / "m.safetensors"
    touch(first / "checkpoints" / "SDXL" / "x.safetensors")  # subfolders, as ComfyUI allows
    assert find("SDXL/x.safetensors") == first / "checkpoints" / "SDXL" / "x.safetensors"


def test_a_comfyui_extra_model_paths_yaml_lists_folders_per_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yaml_file = tmp_path / "ComfyUI" / "extra_model_paths.yaml"
    yaml_file.parent.mkdir()
    yaml_file.write_text("a111:\n    base_path: ../webui/\n    checkpoints: models/Stable-diffusion\n"
                         "    loras: |\n        models/Lora\n        models/LyCORIS\n")
    settings = DiffusionSettings(models_dirs=(yaml_file,))
    lora = touch(tmp_path / "webui" / "models" / "LyCORIS" / "style.safetensors")
    ckpt = touch(tmp_path / "webui" / "models" / "Stable-diffusion" / "v15.safetensors")
    assert find_checkpoint("v15.safetensors", settings).resolve() == ckpt.resolve()
    assert find_model("loras", "style.safetensors", settings).resolve() == lora.resolve()
    with pytest.raises(StageError) as err:
        find_model("vae", "style.safetensors", settings)
    assert err.value.message == "VAE 'style.safetensors' not found"


def test_a_missing_name_suggests_near_misses_and_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SDFLOW_MODELS", raising=False)
    touch(tmp_path / "models" / "checkpoints" / "sd15.safetensors")
    touch(tmp_path / "models" / "checkpoints" / "notes.txt")
    with pytest.raises(StageError) as err:
        find_checkpoint("sd15.safetensor", DiffusionSettings(models_dirs=(tmp_path / "models",)))
    assert err.value.message == "checkpoint 'sd15.safetensor' not found"
    assert err.value.help.startswith("did you mean 'sd15.safetensors'? (looked in: ")
    assert str(tmp_path / "models" / "checkpoints") in err.value.help
    with pytest.raises(StageError) as err:
        find_checkpoint("x.safetensors", DiffusionSettings())
    assert err.value.help.startswith("no checkpoints were found there; pass --models-dir DIR or set SDFLOW_MODELS")


# Files that cannot load ----------------------------------------------------------

def load_error(path: Path, **options) -> StageError:
    with pytest.raises(StageError) as err:
        load_checkpoint(path, DiffusionSettings(device="cpu", **options))
    return err.value


def test_a_missing_file(tmp_path):
    assert load_error(tmp_path / "gone.safetensors").message == (
        f"checkpoint file '{tmp_path / 'gone.safetensors'}' does not exist")


def test_a_truncated_safetensors(tiny, tmp_path):
    data = tiny["sd1"][1].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    err = load_error(cut)
    assert err.message.startswith(f"cannot read 'cut.safetensors' ({len(data) // 2} bytes): "
                                  "not a valid safetensors file (")
    assert "download it again" in err.help


def test_random_bytes(tmp_path):
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(bytes(range(256)) * 20)
    assert load_error(noise).message.startswith("cannot read 'noise.safetensors' (5120 bytes): not a valid safetensors")


def test_a_safetensors_of_something_else(tmp_path):
    other = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(1), "lora_te_text.weight": torch.ones(2, 2)}, str(other))
    err = load_error(other)
    assert err.message == ("not a Stable Diffusion checkpoint: no model.diffusion_model.* keys; "
                           "found 2 keys like 'lora_te_text.weight', 'lora_unet_down.alpha'")


def test_a_folder_that_is_not_a_diffusers_model(tmp_path):
    assert "it has no model_index.json" in load_error(tmp_path).message


def test_a_pickle_is_refused_unless_allowed_and_then_loads_tensors_only(tiny, tmp_path):
    components = tiny["sd2"][0]
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": to_original(components), "global_step": 10}, ckpt)
    err = load_error(ckpt)
    assert err.message.startswith("'model.ckpt' is a pickle checkpoint (.ckpt), and loading a pickle can run")
    assert "--allow-pickle" in err.help and "weights_only=True" in err.help
    model, clip, vae = load_checkpoint(ckpt, DiffusionSettings(device="cpu", allow_pickle=True))
    assert_same_weights(originals(components), weights_of(model, clip, vae))


def test_a_pickle_holding_objects_is_refused_even_when_allowed(tmp_path):
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "callback": Path("x")}, ckpt)
    err = load_error(ckpt, allow_pickle=True)
    assert err.message.startswith("cannot load the pickle 'evil.ckpt' as plain tensors")


def test_loading_prints_nothing_and_needs_no_network(tiny):
    """A fresh process, HF_HUB_OFFLINE unset and sockets forbidden: a load
    stays offline and writes nothing to stdout or stderr."""
    code = ("import socket, sys\n"
            "def refuse(*a, **k): sys.stderr.write('network used\\n'); raise OSError('network used')\n"
            "socket.socket.connect = refuse; socket.getaddrinfo = refuse; socket.create_connection = refuse\n"
            "from sdflow_diffusion.settings import DiffusionSettings\n"
            "from sdflow_diffusion.models.load import load_checkpoint\n"
            f"for p in {[str(tiny['sdxl'][1]), str(tiny['sd2'][2])]!r}:\n"
            "    load_checkpoint(p, DiffusionSettings(device='cpu'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


@pytest.mark.parametrize("layout", ["single", "diffusers"])
def test_an_inpainting_checkpoint_is_its_familys_variant_and_samples(tmp_path, layout):
    from sdflow_diffusion.handles import Latent
    from sdflow_diffusion.numerics.encode import encode_text
    from sdflow_diffusion.numerics.sampling import empty_latent, sample
    from sdflow_diffusion.stages.sample import Sample
    from sdflow_diffusion.testing import save_diffusers

    assert detect_family(expected_shapes("sd2-inpaint"), "epsilon") == "sd2-inpaint"
    components = tiny_components("sd1", seed=2, family="sd1-inpaint-tiny")
    if layout == "single":
        path = save_single_file(components, tmp_path / "512-inpainting.safetensors")
    else:
        path = save_diffusers(components, tmp_path / "tiny-inpainting")
    model, clip, _ = load_checkpoint(path, CPU)
    assert (model.family.name, model.family.variant, model.unet.config.in_channels) == (
        "sd1-inpaint-tiny", "inpainting", 9)
    # Without a mask it draws everything (ComfyUI's all-ones mask and grey image).
    drawn = sample(model, encode_text(clip, "a cat"), encode_text(clip, ""), empty_latent(32, 32, 1),
                   Sample(steps=1))
    assert drawn.samples.shape == (1, 4, 4, 4) and drawn.samples.abs().sum() > 0
    masked = Latent(drawn.samples, noise_mask=torch.ones((1, 1, 32, 32)))
    assert sample(model, encode_text(clip, "a cat"), encode_text(clip, ""), masked, Sample(steps=1)).samples.shape \
        == (1, 4, 4, 4)
