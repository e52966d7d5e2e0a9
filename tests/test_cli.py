"""The ``sdflow`` command as a user runs it: a subprocess from the repository root.

Exit codes: 0 clean, 1 diagnostics, 2 a mistake on the command line.
"""

from __future__ import annotations

from pathlib import Path

import sdflow
from cli import sdflow_cli

ROOT = Path(__file__).resolve().parent.parent
TXT2IMG = "examples/txt2img.sdflow"


# sdflow stages -------------------------------------------------------------------------


def test_stages_lists_the_built_in_stages():
    result = sdflow_cli("stages")
    assert (result.returncode, result.stderr) == (0, "")
    rows = result.stdout.splitlines()
    assert [row.split()[0] for row in rows] == [
        "apply_controlnet", "clip_set_last_layer", "clip_text_encode", "clip_text_encode_sdxl",
        "clip_text_encode_sdxl_refiner", "conditioning_average", "conditioning_combine", "conditioning_concat",
        "conditioning_set_area", "conditioning_set_mask", "conditioning_set_timestep_range",
        "conditioning_zero_out", "empty_latent", "feather_mask", "feather_mask_edges", "freeu", "grow_mask",
        "image_batch", "image_composite", "image_crop", "image_from_batch", "image_pad_for_outpaint", "image_scale",
        "image_to_mask", "invert_mask", "latent_batch", "latent_composite", "latent_crop", "latent_from_batch",
        "latent_upscale", "load_checkpoint", "load_controlnet", "load_image", "load_lora", "load_lora_model_only",
        "load_mask", "load_vae", "mask_composite", "mask_from_rect", "mask_to_image", "repeat_latent_batch",
        "sample", "sample_advanced", "save_image", "set_latent_noise_mask", "solid_mask", "threshold_mask",
        "vae_decode", "vae_encode", "vae_encode_for_inpaint",
    ]
    assert all(row.endswith("  [diffusion]") for row in rows)
    width = max(len(row.split()[0]) for row in rows) + 2  # names in one column
    assert "sample".ljust(width) + "Denoise a latent with the U-Net, guided by the prompts  [diffusion]" in rows


def test_stages_sample_shows_ports_and_params_with_types_defaults_and_ranges():
    result = sdflow_cli("stages", "sample")
    assert (result.returncode, result.stderr) == (0, "")
    text = result.stdout
    assert text.startswith("sample  (stage diffusion.sample, plugin diffusion, version 0.2.0)\n")
    assert (
        "inputs:\n"
        "  model: MODEL  the U-Net\n"
        "  positive: CONDITIONING  what to draw\n"
        "  negative: CONDITIONING  what to steer away from\n"
        "  latent: LATENT  the latent to start from\n"
        "\n"
        "outputs:\n"
        "  latent: LATENT  the denoised latent\n"
    ) in text
    assert "  seed: int = 0  [>= 0, <= 18446744073709551615]\n" in text
    assert "  steps: int = 20  [>= 1, <= 10000]\n      denoising steps\n" in text
    assert "  cfg: float = 8.0  [>= 0.0, <= 100.0]\n" in text
    assert "  denoise: float = 1.0  [>= 0.0, <= 1.0]\n" in text
    assert '  sampler: one of "euler", "euler_ancestral", "heun", "heunpp2", "dpm_2", ' in text
    assert '"uni_pc_bh2", "diffusers:euler", "diffusers:euler_ancestral", ' in text
    assert (
        '  scheduler: one of "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", '
        '"normal", "linear_quadratic", "kl_optimal" = "normal"\n'
    ) in text
    assert "  eta: float or none = None  [>= 0.0, <= 100.0]\n" in text


def test_stages_of_an_output_stage_and_a_required_param():
    save = sdflow_cli("stages", "save_image").stdout
    assert save.startswith("save_image  (output stage diffusion.save_image, plugin diffusion, version 0.1.0)\n")
    assert "outputs:\n  (none)\n" in save
    load = sdflow_cli("stages", "load_checkpoint").stdout
    assert "inputs:\n  (none)\n" in load
    assert "  name: str (required)  [min length 1]\n" in load


def test_stages_with_a_near_miss_suggests_the_stage():
    result = sdflow_cli("stages", "sampel")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "sdflow: error: unknown stage type 'sampel'; did you mean 'sample'?\n"


def test_stages_with_an_unknown_name_is_a_usage_error():
    result = sdflow_cli("stages", "nosuch")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "sdflow: error: unknown stage type 'nosuch'; run 'sdflow stages' to list them\n"
    )


# sdflow plugins ------------------------------------------------------------------------


def test_plugins_shows_name_version_and_what_each_adds():
    result = sdflow_cli("plugins")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "diffusion 0.1.0  (sdflow_diffusion)\n"
        "  port types: MODEL, CLIP, VAE, CONDITIONING, LATENT, IMAGE, MASK, CONTROL_NET\n"
        "  stages: apply_controlnet, clip_set_last_layer, clip_text_encode, clip_text_encode_sdxl, "
        "clip_text_encode_sdxl_refiner, conditioning_average, conditioning_combine, conditioning_concat, "
        "conditioning_set_area, conditioning_set_mask, conditioning_set_timestep_range, conditioning_zero_out, "
        "empty_latent, feather_mask, feather_mask_edges, freeu, grow_mask, image_batch, image_composite, image_crop, "
        "image_from_batch, image_pad_for_outpaint, image_scale, image_to_mask, invert_mask, latent_batch, "
        "latent_composite, latent_crop, latent_from_batch, latent_upscale, load_checkpoint, load_controlnet, "
        "load_image, load_lora, load_lora_model_only, load_mask, load_vae, mask_composite, mask_from_rect, "
        "mask_to_image, repeat_latent_batch, sample, sample_advanced, save_image, set_latent_noise_mask, solid_mask, "
        "threshold_mask, vae_decode, vae_encode, vae_encode_for_inpaint\n"
        "  importers (sdflow import): comfyui, a1111\n"
        "  exporters (sdflow export --format): comfyui-api, comfyui-ui\n"
        "  settings:\n"
        "    --device / $SDFLOW_DEVICE (default 'auto'): where models run: auto is CUDA when there is a GPU, else the CPU\n"
    ) + result.stdout.split("else the CPU\n", 1)[1]
    assert "    --models-dir / $SDFLOW_MODELS: where model names are looked up" in result.stdout
    settings = [line.split(" / ")[0].strip() for line in result.stdout.split("  settings:\n", 1)[1].splitlines()
                if line.startswith("    --")]
    assert settings == ["--device", "--dtype", "--models-dir", "--allow-pickle", "--inputs", "--deterministic",
                        "--compile", "--channels-last", "--vae-tiling", "--weight-dtype", "--lowvram"]


# sdflow graph --------------------------------------------------------------------------


def test_graph_prints_dot():
    result = sdflow_cli("graph", TXT2IMG)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[:3] == ["digraph recipe {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];']
    assert lines[-1] == "}"
    assert '  "ckpt" [label="ckpt\\nload_checkpoint"];' in lines
    assert '  "save_image#1" [label="save_image", peripheries=2];' in lines
    edges = [line for line in lines if " -> " in line and line.startswith('  "')]
    assert edges == [
        '  "ckpt" -> "positive" [label="clip -> clip\\nCLIP"];',
        '  "ckpt" -> "negative" [label="clip -> clip\\nCLIP"];',
        '  "ckpt" -> "denoised" [label="model -> model\\nMODEL"];',
        '  "positive" -> "denoised" [label="conditioning -> positive\\nCONDITIONING"];',
        '  "negative" -> "denoised" [label="conditioning -> negative\\nCONDITIONING"];',
        '  "latent" -> "denoised" [label="latent -> latent\\nLATENT"];',
        '  "ckpt" -> "image" [label="vae -> vae\\nVAE"];',
        '  "denoised" -> "image" [label="latent -> latent\\nLATENT"];',
        '  "image" -> "save_image#1" [label="image -> image\\nIMAGE"];',
    ]


def test_graph_prints_mermaid():
    result = sdflow_cli("graph", "--format", "mermaid", TXT2IMG)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "flowchart LR\n"
        '  n0["ckpt<br/>load_checkpoint"]\n'
        '  n1["positive<br/>clip_text_encode"]\n'
        '  n2["negative<br/>clip_text_encode"]\n'
        '  n3["latent<br/>empty_latent"]\n'
        '  n4["denoised<br/>sample"]\n'
        '  n5["image<br/>vae_decode"]\n'
        '  n6[["save_image"]]\n'
        '  n0 -->|"clip → clip : CLIP"| n1\n'
        '  n0 -->|"clip → clip : CLIP"| n2\n'
        '  n0 -->|"model → model : MODEL"| n4\n'
        '  n1 -->|"conditioning → positive : CONDITIONING"| n4\n'
        '  n2 -->|"conditioning → negative : CONDITIONING"| n4\n'
        '  n3 -->|"latent → latent : LATENT"| n4\n'
        '  n0 -->|"vae → vae : VAE"| n5\n'
        '  n4 -->|"latent → latent : LATENT"| n5\n'
        '  n5 -->|"image → image : IMAGE"| n6\n'
    )


def test_graph_of_a_broken_recipe_prints_its_diagnostics_and_no_graph(tmp_path):
    (tmp_path / "broken.sdflow").write_text(
        "sdflow 1\nckpt = load_checkpoint(name=\"sd15.safetensors\")\n"
        "image = vae_decode(vae=ckpt.clip)\nsave_image(image=image)\n"
    )
    result = sdflow_cli("graph", "broken.sdflow", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert "broken.sdflow:3:24: E300 'vae' expects VAE, but ckpt.clip is CLIP\n" in result.stderr


def test_graph_in_an_unknown_format_is_a_usage_error():
    result = sdflow_cli("graph", "--format", "svg", TXT2IMG)
    assert result.returncode == 2
    assert "invalid choice: 'svg'" in result.stderr


# sdflow check and --set ---------------------------------------------------------------


def test_check_a_clean_recipe():
    result = sdflow_cli("check", TXT2IMG)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", f"{TXT2IMG}: ok\n")


def test_set_overrides_a_param():
    result = sdflow_cli("check", TXT2IMG, "--set", "steps=30", "--set", "prompt=a green square")
    assert (result.returncode, result.stderr) == (0, f"{TXT2IMG}: ok\n")


def test_set_is_checked_against_the_stage_it_reaches():
    result = sdflow_cli("check", TXT2IMG, "--set", "steps=0")
    assert result.returncode == 1
    assert result.stderr.startswith(f"{TXT2IMG}:29:11: E402 'steps' must be at least 1, got 0\n")


def test_set_with_a_value_of_the_wrong_type_is_a_usage_error():
    result = sdflow_cli("check", TXT2IMG, "--set", "steps=abc")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "sdflow: error: --set steps=abc: 'steps' is an integer, like its default\n"


def test_set_of_an_unknown_param_is_a_usage_error():
    result = sdflow_cli("check", TXT2IMG, "--set", "nosuch=1")
    assert result.returncode == 2
    assert result.stderr == (
        "sdflow: error: --set nosuch=...: the recipe has no param 'nosuch'; "
        "the recipe's params are 'checkpoint', 'prompt', 'negative_prompt', 'size', 'seed', 'steps' or 'cfg'\n"
    )


def test_set_of_a_misspelled_param_suggests_the_param():
    result = sdflow_cli("check", TXT2IMG, "--set", "step=30")
    assert result.returncode == 2
    assert result.stderr == (
        "sdflow: error: --set step=...: the recipe has no param 'step'; did you mean 'steps'?\n"
    )


def test_set_without_a_value_is_a_usage_error():
    result = sdflow_cli("check", TXT2IMG, "--set", "steps")
    assert (result.returncode, result.stderr) == (2, "sdflow: error: --set steps: write --set name=value\n")


def test_check_of_a_missing_file_is_a_usage_error():
    result = sdflow_cli("check", "examples/nowhere.sdflow")
    assert (result.returncode, result.stderr) == (
        2, "sdflow: error: examples/nowhere.sdflow: no such file\n"
    )


# the command itself --------------------------------------------------------------------


def test_version():
    result = sdflow_cli("--version")
    assert (result.returncode, result.stdout) == (0, f"sdflow {sdflow.__version__}\n")


def test_no_command_prints_help_and_is_a_usage_error():
    result = sdflow_cli()
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("usage: sdflow")
