"""load_vae: a VAE file that replaces a checkpoint's."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sdflow.plugin import ComfyNode, Params, Port, stage
from sdflow_diffusion.models.families import family_names

Family = Literal[("auto", *family_names())]  # type: ignore[valid-type]


class LoadVae(Params):
    name: str = Field(min_length=1, description="VAE file: a name looked up in models/vae, or a path "
                                                "(.safetensors, or a diffusers VAE folder)")
    family: Family = Field(
        "auto", description="the family whose latents it decodes (their scaling factor): auto tells it from "
                            "the file (shapes, config, metadata, an 'xl' in its name), else SD 1.x's, with a "
                            "warning; name it for an SDXL VAE whose file does not say, e.g. sdxl-base")


@stage(params=LoadVae, outputs={"vae": Port("VAE", "the autoencoder")},
       comfyui=ComfyNode("VAELoader", widgets="vae_name>name", title="Load VAE"))
def load_vae(ctx, params: LoadVae) -> dict:
    """Load a VAE from its own file, to use instead of the checkpoint's. ComfyUI: VAELoader.

    ComfyUI takes the latents' scaling factor from the model; sdflow keeps it with the VAE, so the
    file's family matters: SD 1.x/2.x and SDXL VAEs have the same shapes and differ only in that
    factor (0.18215 vs 0.13025). auto reads it from a diffusers folder's config, the file's ModelSpec
    metadata or an "xl" in its name, else uses SD 1.x's and warns; family= says it outright. A VAE of
    no known family (16 latent channels: SD3, Flux) is refused."""
    from sdflow_diffusion.models.device import dtype_name, resolve_device
    from sdflow_diffusion.models.load import inspect_vae, load_vae as load, vae_family
    from sdflow_diffusion.models.run_options import apply_process_options

    checked = inspect_vae(ctx.file_path(params.name) or _find(ctx, params.name), params.name)
    family, guessed = vae_family(checked, params.family, params.name)
    if guessed:
        ctx.warn(f"'{params.name}' fits SD 1.x/2.x and SDXL alike; it decodes latents as family '{family}' "
                 f"does (scaling factor of SD 1.x): for SDXL, say family=\"sdxl-base\"")
    apply_process_options(ctx.settings, resolve_device(ctx.settings)[0], ctx.warn)  # before a model loads
    vae = load(checked, family, ctx.settings)
    ctx.record(vae_family=family, vae_dtype=dtype_name(vae.dtype), **ctx.settings.pixel_options())
    return {"vae": vae}


@load_vae.identifies
def _vae_file(ctx, params: LoadVae) -> None:
    """The VAE's SHA-256 (of a folder: of the two files a load reads), once its header is checked."""
    from sdflow_diffusion.models.load import inspect_vae

    checked = inspect_vae(_find(ctx, params.name), params.name)
    ctx.identify_file(params.name, checked.path, files=checked.files)


def _find(ctx, name: str):
    from sdflow_diffusion.models.lookup import find_model

    return find_model("vae", name, ctx.settings, ctx.recipe_dir)
