"""Model patches: FreeU."""

from __future__ import annotations

from pydantic import Field

from sdflow.plugin import ComfyNode, Params, Port, stage


class FreeU(Params):
    b1: float = Field(1.1, ge=0.0, le=10.0, description="how much the first up stage's backbone features are "
                                                         "amplified")
    b2: float = Field(1.2, ge=0.0, le=10.0, description="the same for the second up stage")
    s1: float = Field(0.9, ge=0.0, le=10.0, description="how much the first up stage's skip features keep their "
                                                         "low frequencies")
    s2: float = Field(0.2, ge=0.0, le=10.0, description="the same for the second up stage")


@stage(params=FreeU, inputs={"model": Port("MODEL", "the U-Net")},
       outputs={"model": Port("MODEL", "the same U-Net, with FreeU while it runs")},
       comfyui=ComfyNode("FreeU", inputs="model", widgets="b1 b2 s1 s2"))
def freeu(ctx, params: FreeU, model) -> dict:
    """Reweigh the U-Net's backbone and skip features (FreeU), for more detail at no cost.
    ComfyUI: FreeU.

    As diffusers and the paper's code apply it: b1 and s1 in the first up block, b2 and s2 in the
    second. ComfyUI picks the blocks by channel count instead (for SD 1.5 its b1 covers both
    1280-channel up blocks), so the same numbers give other images than ComfyUI's. The paper's
    values: SD 1.x b1=1.5 b2=1.6 s1=0.9 s2=0.2; SD 2.x b1=1.4 b2=1.6; SDXL b1=1.3 b2=1.4."""
    from dataclasses import replace

    from sdflow_diffusion.models.patches import FreeUPatch

    patch = FreeUPatch(params.s1, params.s2, params.b1, params.b2)
    return {"model": replace(model, patches=(*model.patches, patch))}
