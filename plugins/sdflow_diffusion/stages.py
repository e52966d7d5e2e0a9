"""The run functions of the built-in stages: thin glue from the executor's
calling convention to the modules that do the work.

Imported only when a recipe runs (the declarations name these functions as
``"sdflow_diffusion.stages:NAME"``), so checking a recipe never imports torch.
"""

from __future__ import annotations

import platform

from sdflow.execute import RunContext


def identify_checkpoint(ctx: RunContext, params) -> dict[str, str]:
    """The checkpoint's name and SHA-256: part of the cache key and of the
    metadata of every image made with it."""
    from sdflow_diffusion.checkpoint import find_checkpoint

    path = find_checkpoint(params.name, ctx.options)
    return {params.name: ctx.file_identity(path)}


def load_checkpoint(ctx: RunContext, params) -> dict:
    from sdflow_diffusion.checkpoint import find_checkpoint
    from sdflow_diffusion.checkpoint import load_checkpoint as load

    model, clip, vae = load(find_checkpoint(params.name, ctx.options), ctx.options, params.prediction)
    return {"model": model, "clip": clip, "vae": vae}


def clip_text_encode(ctx: RunContext, params, clip) -> dict:
    from sdflow_diffusion.encode import encode_text

    return {"conditioning": encode_text(clip, params.text)}


def empty_latent(ctx: RunContext, params) -> dict:
    from sdflow_diffusion.sampling import empty_latent as make

    return {"latent": make(params.width, params.height, params.batch)}


def sample(ctx: RunContext, params, model, positive, negative, latent) -> dict:
    from sdflow_diffusion.sampling import sample as run_sampler

    with ctx.progress(params.steps, "steps") as progress:
        denoised = run_sampler(
            model, positive, negative, latent,
            seed=params.seed, steps=params.steps, cfg=params.cfg, sampler=params.sampler,
            scheduler=params.scheduler, denoise=params.denoise, progress=progress,
        )
    return {"latent": denoised}


def vae_decode(ctx: RunContext, params, vae, latent) -> dict:
    from sdflow_diffusion.decode import decode

    return {"image": decode(vae, latent)}


def save_image(ctx: RunContext, params, image) -> dict:
    from sdflow_diffusion.decode import to_pil
    from sdflow_diffusion.save import save_pngs

    paths = save_pngs(to_pil(image), ctx.options.output_dir, params.prefix, _metadata(ctx))
    for path in paths:
        ctx.file_written(path)
    return {}


def _metadata(ctx: RunContext) -> dict[str, object]:
    """What a PNG carries to reproduce it: the recipe, its resolved params,
    each model's name and SHA-256, and the versions that ran it."""
    import diffusers
    import torch

    import sdflow

    recipe = ctx.graph.recipe
    return {
        "recipe": recipe.source,
        "recipe_file": recipe.file,
        "params": dict(ctx.graph.params),
        "models": ctx.upstream_identities(),
        "versions": {
            "sdflow": sdflow.__version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "run": ctx.options.fingerprint(),
    }
