"""clip_text_encode: a prompt, encoded by a checkpoint's CLIP."""

from __future__ import annotations

from pydantic import Field

from sdflow.plugin import Params, Port, stage


class ClipTextEncode(Params):
    text: str = Field(description="the prompt; longer than 77 tokens is encoded in chunks")


@stage(
    params=ClipTextEncode,
    inputs={"clip": Port("CLIP", "the text encoder")},
    outputs={"conditioning": Port("CONDITIONING", "the encoded prompt")},
)
def clip_text_encode(ctx, params: ClipTextEncode, clip) -> dict:
    """Encode a prompt with CLIP. ComfyUI: CLIPTextEncode."""
    from sdflow_diffusion.numerics.encode import encode_text

    return {"conditioning": encode_text(clip, params.text)}
