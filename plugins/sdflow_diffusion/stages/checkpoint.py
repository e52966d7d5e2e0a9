"""load_checkpoint: a Stable Diffusion checkpoint, found by name, loaded once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from sdflow.plugin import ComfyNode, Params, Port, stage


class LoadCheckpoint(Params):
    name: str = Field(
        min_length=1,
        description="checkpoint file: a name looked up in models/checkpoints, or a path",
    )
    prediction: Literal["auto", "epsilon", "v_prediction"] = Field(
        "auto",
        description="what the model predicts; auto reads it from the file "
        "(SD 2.x: v_prediction unless its name says 512 or base)",
    )


@stage(
    params=LoadCheckpoint,
    outputs={
        "model": Port("MODEL", "the U-Net"),
        "clip": Port("CLIP", "the text encoder"),
        "vae": Port("VAE", "the autoencoder"),
    },
    comfyui=ComfyNode("CheckpointLoaderSimple", widgets="ckpt_name>name", title="Load Checkpoint"),
)
def load_checkpoint(ctx, params: LoadCheckpoint) -> dict:
    """Load a Stable Diffusion checkpoint (SD 1.x, SD 2.x, SDXL or the SDXL refiner): a single
    .safetensors file or a diffusers folder. ComfyUI: CheckpointLoaderSimple."""
    from sdflow_diffusion.models.device import dtype_name, resolve_device
    from sdflow_diffusion.models.load import load_checkpoint as load
    from sdflow_diffusion.models.run_options import apply_process_options

    path = ctx.file_path(params.name) or _find(ctx, params.name)
    apply_process_options(ctx.settings, resolve_device(ctx.settings)[0], ctx.warn)  # before a model loads
    model, clip, vae = load(path, ctx.settings, params.prediction)
    ctx.record(device=str(model.device), dtype=dtype_name(model.dtype), vae_dtype=dtype_name(vae.dtype),
               **ctx.settings.pixel_options())
    return {"model": model, "clip": clip, "vae": vae}


@load_checkpoint.identifies
def _checkpoint_file(ctx, params: LoadCheckpoint) -> None:
    """The checkpoint's SHA-256, under the name the recipe gave: part of the
    cache key and of the metadata of every image made with it.

    What the name found is checked first, cheaply: nothing is hashed that is
    not a model (a FIFO, a device, a folder of other files, a broken file, a
    pickle not allowed), and of a diffusers folder only the files a load
    reads are (a stray file in it, however large, is never read)."""
    from sdflow_diffusion.models.diffusers_layout import DiffusersFolder
    from sdflow_diffusion.models.load import inspect_checkpoint

    checked = inspect_checkpoint(_find(ctx, params.name), ctx.settings)
    files = checked.files if isinstance(checked, DiffusersFolder) else None
    ctx.identify_file(params.name, Path(checked), files=files)


def _find(ctx, name: str):
    from sdflow_diffusion.models.lookup import find_checkpoint

    return find_checkpoint(name, ctx.settings, ctx.recipe_dir)
