"""sdflow's built-in diffusion stages: ComfyUI's default workflow.

An ordinary sdflow plugin, found through the ``sdflow`` entry-point group
like any third-party one.  Declaring the stages imports only pydantic: torch
and diffusers are imported by the code that runs them.
"""

from __future__ import annotations

from sdflow import Port, hookimpl

from sdflow_diffusion import params

__version__ = "0.1.0"

# Run functions are named, not imported: declaring stages must not import torch.
_RUN = "sdflow_diffusion.stages:"

PORT_TYPES = {
    "MODEL": "the denoising U-Net, with its noise schedule settings",
    "CLIP": "the text encoder(s) and tokenizer(s)",
    "VAE": "the autoencoder between pixels and latents",
    "CONDITIONING": "encoded prompt embeddings that guide sampling",
    "LATENT": "a batch of latent images",
    "IMAGE": "a batch of RGB images",
    "MASK": "a batch of single-channel masks, 1 where to repaint",
}


@hookimpl
def sdflow_port_types(registry):
    for name, doc in PORT_TYPES.items():
        registry.add_port_type(name, doc)


@hookimpl
def sdflow_stage_types(registry):
    registry.add_stage(
        "load_checkpoint",
        run=_RUN + "load_checkpoint",
        identify=_RUN + "identify_checkpoint",
        params=params.LoadCheckpoint,
        outputs={
            "model": Port("MODEL", "the U-Net"),
            "clip": Port("CLIP", "the text encoder"),
            "vae": Port("VAE", "the autoencoder"),
        },
        doc="Load a Stable Diffusion checkpoint (SD 1.x, SD 2.x or SDXL): "
        "a single .safetensors file or a diffusers folder. ComfyUI: CheckpointLoaderSimple.",
    )
    registry.add_stage(
        "clip_text_encode",
        run=_RUN + "clip_text_encode",
        params=params.ClipTextEncode,
        inputs={"clip": Port("CLIP", "the text encoder")},
        outputs={"conditioning": Port("CONDITIONING", "the encoded prompt")},
        doc="Encode a prompt with CLIP. ComfyUI: CLIPTextEncode.",
    )
    registry.add_stage(
        "empty_latent",
        run=_RUN + "empty_latent",
        params=params.EmptyLatent,
        outputs={"latent": Port("LATENT", "an all-zero latent batch")},
        doc="A blank latent batch to draw on, of the given image size. ComfyUI: EmptyLatentImage.",
    )
    registry.add_stage(
        "sample",
        run=_RUN + "sample",
        params=params.Sample,
        inputs={
            "model": Port("MODEL", "the U-Net"),
            "positive": Port("CONDITIONING", "what to draw"),
            "negative": Port("CONDITIONING", "what to steer away from"),
            "latent": Port("LATENT", "the latent to start from"),
        },
        outputs={"latent": Port("LATENT", "the denoised latent")},
        doc="Denoise a latent with the U-Net, guided by the prompts. ComfyUI: KSampler.",
    )
    registry.add_stage(
        "vae_decode",
        run=_RUN + "vae_decode",
        params=params.VaeDecode,
        inputs={"vae": Port("VAE", "the autoencoder"), "latent": Port("LATENT", "the latent")},
        outputs={"image": Port("IMAGE", "the decoded images")},
        doc="Decode latents into images with the VAE. ComfyUI: VAEDecode.",
    )
    registry.add_stage(
        "save_image",
        run=_RUN + "save_image",
        params=params.SaveImage,
        inputs={"image": Port("IMAGE", "the images to save")},
        output=True,
        doc="Write each image as a PNG into the output folder, never overwriting. "
        "ComfyUI: SaveImage.",
    )
