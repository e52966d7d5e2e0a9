"""clip_set_last_layer: stop the text encoder early ("clip skip")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sdflow.plugin import ComfyNode, Params, Port, stage


class ClipSetLastLayer(Params):
    stop_at_clip_layer: int = Field(
        -1, ge=-24, le=-1, description="the layer whose output conditions the model: -1 the last, -2 the one "
        "before (A1111's clip skip 2), ...")


@stage(
    params=ClipSetLastLayer,
    inputs={"clip": Port("CLIP", "the text encoder")},
    outputs={"clip": Port("CLIP", "the same text encoder, stopping at that layer")},
    comfyui=ComfyNode("CLIPSetLastLayer", inputs="clip", widgets="stop_at_clip_layer", title="CLIP Set Last Layer"),
)
def clip_set_last_layer(ctx, params: ClipSetLastLayer, clip) -> dict:
    """Make prompts encode with an earlier layer of CLIP (A1111's "clip skip": -2 is clip skip 2).
    ComfyUI: CLIPSetLastLayer.

    As ComfyUI: for SD 1.x and 2.x the layer's output goes through CLIP's final layer norm
    (as A1111 does too); for SDXL's two encoders it is taken raw, as their default (-2) is, so
    -1 there is not the default. A layer beyond an encoder's depth means its last. diffusers'
    SD 2.x encoder ends at its penultimate layer (ComfyUI's default for SD 2.x), so -1 is
    served by -2 there, with a warning. The checkpoint's encoder is shared, not changed."""
    from dataclasses import replace

    from sdflow_diffusion.numerics.encode import missing_layer

    layer = params.stop_at_clip_layer
    for spec, encoder in zip(clip.family.architecture.text_encoders, clip.encoders):
        if missing_layer(spec, encoder, layer):
            ctx.warn(f"the {clip.family.name} text encoder ends at the layer before its last (as diffusers keeps "
                     f"SD 2.x's), so layer {layer} is read as the last layer it has: -2 in ComfyUI's count")
            break
    return {"clip": replace(clip, last_layer=layer)}


_SIZE = {"ge": 0, "le": 16384}


class ClipTextEncodeSdxl(Params):
    text_g: str = Field(description="the prompt for the large text encoder (OpenCLIP ViT-bigG)")
    text_l: str = Field(description="the prompt for the small text encoder (CLIP ViT-L)")
    width: int = Field(1024, **_SIZE, description="the original image width SDXL is told of")
    height: int = Field(1024, **_SIZE, description="the original image height SDXL is told of")
    crop_w: int = Field(0, **_SIZE, description="pixels cropped off the left of the original")
    crop_h: int = Field(0, **_SIZE, description="pixels cropped off the top of the original")
    target_width: int = Field(1024, **_SIZE, description="the width of the image to draw, as SDXL is told")
    target_height: int = Field(1024, **_SIZE, description="the height of the image to draw, as SDXL is told")
    convention: Literal["comfy", "a1111"] = Field("comfy", description="how weights and long prompts are read "
                                                                       "(see clip_text_encode)")


@stage(
    params=ClipTextEncodeSdxl,
    inputs={"clip": Port("CLIP", "an SDXL base model's text encoders")},
    outputs={"conditioning": Port("CONDITIONING", "the encoded prompts, with the sizes")},
    comfyui=ComfyNode("CLIPTextEncodeSDXL", inputs="clip",
                      widgets="width height crop_w crop_h target_width target_height text_g text_l"),
)
def clip_text_encode_sdxl(ctx, params: ClipTextEncodeSdxl, clip) -> dict:
    """Encode SDXL's two prompts separately, with the size and crop SDXL is conditioned on.
    ComfyUI: CLIPTextEncodeSDXL.

    text_l goes to the small encoder, text_g to the large one; the one with fewer 75-token chunks is
    padded with chunks of the empty prompt, as ComfyUI does. width/height say how large the
    original picture was (small values make SDXL draw as if upscaling), crop_w/crop_h how much was
    cropped off (0, 0 gives centred subjects), target_width/target_height the size it should look
    like. clip_text_encode gives SDXL the image's own size and no crop."""
    from dataclasses import replace

    from sdflow_diffusion.numerics.encode import encode_text

    if clip.family.architecture.added_conditions != "text_time":
        raise _not_sdxl_base(clip)
    encoded = encode_text(clip, [params.text_l, params.text_g], params.convention)
    return {"conditioning": replace(encoded, original_size=(params.height, params.width),
                                    crop=(params.crop_h, params.crop_w),
                                    target_size=(params.target_height, params.target_width))}


class ClipTextEncodeSdxlRefiner(Params):
    text: str = Field(description="the prompt")
    ascore: float = Field(6.0, ge=0.0, le=1000.0, description="the aesthetic score the refiner is told of "
                                                               "(6 for a prompt, 2.5 for a negative, diffusers')")
    width: int = Field(1024, **_SIZE, description="the original image width the refiner is told of")
    height: int = Field(1024, **_SIZE, description="the original image height the refiner is told of")
    convention: Literal["comfy", "a1111"] = Field("comfy", description="how weights and long prompts are read "
                                                                       "(see clip_text_encode)")


@stage(
    params=ClipTextEncodeSdxlRefiner,
    inputs={"clip": Port("CLIP", "the SDXL refiner's text encoder")},
    outputs={"conditioning": Port("CONDITIONING", "the encoded prompt, with its score and size")},
    comfyui=ComfyNode("CLIPTextEncodeSDXLRefiner", inputs="clip", widgets="ascore width height text"),
)
def clip_text_encode_sdxl_refiner(ctx, params: ClipTextEncodeSdxlRefiner, clip) -> dict:
    """Encode a prompt for the SDXL refiner with the aesthetic score and size it is conditioned on.
    ComfyUI: CLIPTextEncodeSDXLRefiner.

    clip_text_encode gives the refiner the image's own size and diffusers' scores: 6 for the prompt,
    2.5 for the negative."""
    from dataclasses import replace

    from sdflow_diffusion.numerics.encode import encode_text

    if clip.family.architecture.added_conditions != "text_time_aesthetic":
        from sdflow.plugin import StageError

        raise StageError(f"clip_text_encode_sdxl_refiner takes the SDXL refiner's clip, not {clip.family.name}'s",
                         "use clip_text_encode for other models")
    encoded = encode_text(clip, params.text, params.convention)
    return {"conditioning": replace(encoded, original_size=(params.height, params.width),
                                    aesthetic_score=params.ascore)}


def _not_sdxl_base(clip):
    from sdflow.plugin import StageError

    return StageError(f"clip_text_encode_sdxl takes an SDXL base model's clip, not {clip.family.name}'s "
                      f"({clip.family.description})", "use clip_text_encode for other models")
