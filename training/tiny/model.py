"""The architecture of sdflow-tiny: SD 1.x's three components, shrunk.

The same classes a real SD 1.5 checkpoint loads into (CLIPTextModel with
CLIP's full 49408-token vocabulary, AutoencoderKL with an 8x factor,
UNet2DConditionModel), so that the trained model is saved in the original
single-file layout and loads through the code that loads a user's file.
Sizes were chosen by measured cost on two CPU cores (see
plugins/sdflow_diffusion/models/tiny/MODEL_CARD.md):

* VAE 64x64x3 -> 4x8x8, channels 16, 32, 64, 64 (0.98M parameters);
* text encoder width 64, 2 layers (3.27M, 3.16M of them the embedding);
* U-Net channels 64, 128, cross-attention at the lower level and in the
  middle (3.92M).

The scheduler is v-prediction on SD's scaled-linear betas rescaled to zero
terminal SNR, with trailing timesteps: on so small a latent, epsilon
prediction left the shape's position at chance.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

FAMILY = "sdflow-tiny"
IMAGE_SIZE = 64
LATENT_SIZE = 8
DIFFUSERS_VERSION = "0.42.1"  # what the shipped configs were written with

TEXT_ENCODER: dict[str, Any] = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "hidden_act": "quick_gelu",
    "projection_dim": 64,
    "max_position_embeddings": 77,
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": DIFFUSERS_VERSION,
    "act_fn": "silu",
    "attention_head_dim": 4,  # diffusers' name for the number of heads
    "block_out_channels": [64, 128],
    "center_input_sample": False,
    "cross_attention_dim": 64,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "sample_size": LATENT_SIZE,
    "use_linear_projection": False,
    "upcast_attention": False,
}

VAE: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": DIFFUSERS_VERSION,
    "act_fn": "silu",
    "block_out_channels": [16, 32, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "sample_size": IMAGE_SIZE,
    "scaling_factor": 1.0,  # replaced by 1 / std of the trained VAE's latents
    "force_upcast": False,
}

SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "prediction_type": "v_prediction",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "timestep_spacing": "trailing",
    "steps_offset": 1,
    "rescale_betas_zero_snr": True,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
}

MODEL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": DIFFUSERS_VERSION,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "safety_checker": [None, None],
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
}


def family_info(scaling_factor: float) -> dict[str, Any]:
    return {
        "kind": "sd1",
        "description": "sdflow-tiny, trained on synthetic shapes (64 px)",
        "prediction_type": "v_prediction",
        "vae_scaling_factor": scaling_factor,
        # Left out of the formats an unknown file's error lists: a model
        # sdflow ships, not a kind of file users bring.
        "tiny": True,
    }


def write_family(folder: Path, scaling_factor: float) -> Path:
    """Write the family's config tree (as ``families/sd15/``) into ``folder``."""
    folder = Path(folder)
    vae = dict(VAE, scaling_factor=scaling_factor)
    files = {"model_index.json": MODEL_INDEX, "family.json": family_info(scaling_factor),
             "text_encoder/config.json": TEXT_ENCODER, "unet/config.json": UNET,
             "vae/config.json": vae, "scheduler/scheduler_config.json": SCHEDULER}
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return folder


def build_vae():
    import diffusers

    return diffusers.AutoencoderKL.from_config(copy.deepcopy(VAE))


def build_text_encoder():
    import transformers

    return transformers.CLIPTextModel(transformers.CLIPTextConfig(**TEXT_ENCODER))


def build_unet():
    import diffusers

    return diffusers.UNet2DConditionModel.from_config(copy.deepcopy(UNET))


def noise_schedule():
    """The training side of :data:`SCHEDULER`: a DDPMScheduler with the same
    betas (rescaled to zero terminal SNR) and prediction type."""
    import diffusers

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
            "rescale_betas_zero_snr", "timestep_spacing", "steps_offset")
    return diffusers.DDPMScheduler(**{k: SCHEDULER[k] for k in keys})
