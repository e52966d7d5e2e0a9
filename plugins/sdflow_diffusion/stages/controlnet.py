"""load_controlnet and apply_controlnet: a hint image (edges, a pose, a scribble) that guides sampling."""

from __future__ import annotations

from pydantic import Field

from sdflow.plugin import ComfyNode, Params, Port, stage

_CONTROL_NET = Port("CONTROL_NET", "the ControlNet")


class LoadControlNet(Params):
    name: str = Field(min_length=1, description="ControlNet file: a name looked up in models/controlnet, or a path "
                                                "(.safetensors in the original or diffusers layout, or a "
                                                "diffusers ControlNet folder)")


@stage(params=LoadControlNet, outputs={"control_net": _CONTROL_NET},
       comfyui=ComfyNode("ControlNetLoader", widgets="control_net_name>name", title="Load ControlNet Model"))
def load_controlnet(ctx, params: LoadControlNet) -> dict:
    """Load a ControlNet (SD 1.x, SD 2.x or SDXL). ComfyUI: ControlNetLoader.

    A single .safetensors in the original layout (control_v11p_sd15_canny) or in diffusers' keys, or a
    diffusers folder; its family is told by its shapes, and a file whose tensors do not all fit that
    family's ControlNet is refused before it is used."""
    from sdflow_diffusion.models.controlnet import inspect_controlnet, load_controlnet as load
    from sdflow_diffusion.models.device import dtype_name

    checked = inspect_controlnet(ctx.file_path(params.name) or _find(ctx, params.name), params.name)
    handle = load(checked, params.name, ctx.settings)
    ctx.record(controlnet_family=checked.family, controlnet_dtype=dtype_name(handle.dtype))
    return {"control_net": handle}


@load_controlnet.identifies
def _controlnet_file(ctx, params: LoadControlNet) -> None:
    """The ControlNet's SHA-256 (of a folder: of the two files a load reads), once its header is checked."""
    from sdflow_diffusion.models.controlnet import inspect_controlnet

    checked = inspect_controlnet(_find(ctx, params.name), params.name)
    ctx.identify_file(params.name, checked.path, files=checked.files)


class ApplyControlNet(Params):
    strength: float = Field(1.0, ge=0.0, le=10.0, description="how strongly the hint guides the image "
                                                              "(0: not at all)")
    start_percent: float = Field(0.0, ge=0.0, le=1.0, description="where in the schedule the ControlNet starts "
                                                                  "to guide (0: the first step)")
    end_percent: float = Field(1.0, ge=0.0, le=1.0, description="where it stops (1: the end)")


@stage(params=ApplyControlNet,
       inputs={"positive": Port("CONDITIONING", "the prompt"), "negative": Port("CONDITIONING", "the negative prompt"),
               "control_net": _CONTROL_NET,
               "image": Port("IMAGE", "the hint: a canny, depth, pose or scribble image made for this ControlNet")},
       outputs={"positive": Port("CONDITIONING", "the prompt, guided by the ControlNet"),
                "negative": Port("CONDITIONING", "the negative prompt, guided by the ControlNet")},
                comfyui=ComfyNode("ControlNetApplyAdvanced", inputs="positive negative control_net image !vae",
                                  widgets="strength start_percent end_percent", title="Apply ControlNet"))
def apply_controlnet(ctx, params: ApplyControlNet, positive, negative, control_net, image) -> dict:
    """Guide sampling with a ControlNet and a hint image, on the prompt and the negative.
    ComfyUI: ControlNetApplyAdvanced.

    Every entry of both conditionings gets the ControlNet; several apply_controlnet stages stack
    (their residuals add up). At each step inside start_percent..end_percent (counted in noise levels,
    as ComfyUI counts them) the hint is resized to the image being sampled as ComfyUI does
    (nearest-exact; a hint of another aspect ratio has its middle cut out, not stretched) and fed in
    [0, 1]; the residuals are multiplied by strength. Strength 0 leaves the conditioning as it was. A
    ControlNet of another family than the prompts' (an SDXL ControlNet with SD 1.5 prompts) is refused."""
    from dataclasses import replace

    from sdflow_diffusion.handles import Conditioning
    from sdflow_diffusion.models.controlnet import Control, check_width

    if params.strength == 0:
        return {"positive": positive, "negative": negative}
    for conditioning in (positive, negative):
        for entry in conditioning.entries:
            check_width(control_net, entry.embeds.shape[-1], "the prompts were encoded for a model that takes")
    control = Control(control_net, image, params.strength, params.start_percent, params.end_percent)
    return {name: Conditioning.of([replace(e, control=(*e.control, control)) for e in conditioning.entries])
            for name, conditioning in (("positive", positive), ("negative", negative))}


def _find(ctx, name: str):
    from sdflow_diffusion.models.lookup import find_model

    return find_model("controlnet", name, ctx.settings, ctx.recipe_dir)
