"""load_lora and load_lora_model_only: a LoRA on a model, applied while it runs, never for good."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from sdflow.plugin import ComfyNode, Params, Port, StageError, stage

_MODEL = {"model": Port("MODEL", "the U-Net")}
_CLIP = {"clip": Port("CLIP", "the text encoder")}
_NAME = Field(min_length=1, description="LoRA file: a name looked up in models/loras, or a path (.safetensors; "
                                        "kohya, diffusers/PEFT, LyCORIS LoHa/LoKr)")


def _strength(part: str):
    return Field(1.0, ge=-100.0, le=100.0, description=f"how strongly the LoRA changes the {part} "
                                                       "(0: not at all; negative: the other way)")


class LoadLora(Params):
    name: str = _NAME
    strength_model: float = _strength("U-Net")
    strength_clip: float = _strength("text encoder")


class LoadLoraModelOnly(Params):
    name: str = _NAME
    strength_model: float = _strength("U-Net")


@stage(params=LoadLora, inputs={**_MODEL, **_CLIP}, outputs={**_MODEL, **_CLIP},
       comfyui=ComfyNode("LoraLoader", inputs="model clip", widgets="lora_name>name strength_model strength_clip",
                         title="Load LoRA"))
def load_lora(ctx, params: LoadLora, model, clip) -> dict:
    """Apply a LoRA to the U-Net and the text encoder, each at its own strength. ComfyUI: LoraLoader.

    The checkpoint is neither reloaded nor changed: the LoRA is added to the weights while
    sample (or clip_text_encode) runs and taken off after, bit for bit, so a sweep over strengths
    shares one loaded checkpoint. Several LoRAs stack, in recipe order. A LoRA of another family
    (an SDXL LoRA on an SD 1.5 model) is refused; a LoRA some of whose weights match nothing in
    the model is applied with a warning that counts them."""
    return _apply(ctx, params, model=model, clip=clip)


@stage(params=LoadLoraModelOnly, inputs=_MODEL, outputs=_MODEL,
       comfyui=ComfyNode("LoraLoaderModelOnly", inputs="model", widgets="lora_name>name strength_model"))
def load_lora_model_only(ctx, params: LoadLoraModelOnly, model) -> dict:
    """Apply a LoRA to the U-Net only (its text-encoder weights, if any, are left out).
    ComfyUI: LoraLoaderModelOnly."""
    return _apply(ctx, params, model=model)


@load_lora.identifies
def _lora_file(ctx, params: LoadLora) -> None:
    """The LoRA's SHA-256, in the cache key and the metadata; the file's header
    is checked first (a safetensors file in a LoRA layout), before anything loads."""
    from sdflow_diffusion.models.lora import inspect_lora

    path = _find(ctx, params.name)
    inspect_lora(path, ctx.settings.allow_pickle, params.name)
    ctx.identify_file(params.name, path)


load_lora_model_only.identifies(_lora_file)


def _apply(ctx, params, **handles) -> dict:
    """Each handle with the LoRA's patch for it appended (none at strength 0)."""
    from dataclasses import replace

    from sdflow_diffusion.models.lora import lora_patch, read_lora

    path = ctx.file_path(params.name) or _find(ctx, params.name)
    layout, tensors = read_lora(path, ctx.settings.allow_pickle, params.name)
    strengths = {"model": params.strength_model, "clip": getattr(params, "strength_clip", 0.0)}
    result, asked = {}, [port for port in handles if strengths[port] != 0]
    for port, handle in handles.items():
        patch = lora_patch(layout, tensors, params.name, handle, strengths[port], ctx.warn) if port in asked else None
        result[port] = handle if patch is None else replace(handle, patches=(*handle.patches, patch))
    if asked and all(result[port] is handles[port] for port in asked):
        parts = " or ".join("the U-Net" if port == "model" else "the text encoder" for port in asked)
        raise StageError(f"'{params.name}' has no weights for {parts}",
                         help="load_lora_model_only applies a LoRA's U-Net weights; use load_lora for a LoRA of "
                              "the text encoder" if "clip" not in handles else "is it the LoRA you meant?")
    return result


def _find(ctx, name: str) -> Path:
    from sdflow_diffusion.models.lookup import find_model

    return find_model("loras", name, ctx.settings, ctx.recipe_dir)
