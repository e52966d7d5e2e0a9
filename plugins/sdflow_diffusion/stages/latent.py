"""empty_latent: a blank latent batch to draw on."""

from __future__ import annotations

from pydantic import Field

from sdflow.plugin import Params, Port, stage


class EmptyLatent(Params):
    width: int = Field(512, ge=16, le=16384, multiple_of=8, description="image width in pixels")
    height: int = Field(512, ge=16, le=16384, multiple_of=8, description="image height in pixels")
    batch: int = Field(1, ge=1, le=4096, description="images drawn at once")


@stage(params=EmptyLatent, outputs={"latent": Port("LATENT", "an all-zero latent batch")})
def empty_latent(ctx, params: EmptyLatent) -> dict:
    """A blank latent batch to draw on, of the given image size. ComfyUI: EmptyLatentImage."""
    from sdflow_diffusion.numerics.sampling import empty_latent as make

    return {"latent": make(params.width, params.height, params.batch)}
