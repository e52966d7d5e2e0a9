"""ComfyUI's built-in nodes that sdflow has a stage for, as data: which
stage each is, its inputs by ComfyUI's names and sdflow's, the order of its
widget values in the UI format, its outputs by index, and the values whose
spelling differs.

Written from each node's ``INPUT_TYPES`` / schema and display name in
ComfyUI (nodes.py, comfy_extras/) and from docs/stages.md.  A spec string
lists inputs in ComfyUI's order, ``comfy>sdflow`` where the names differ;
in ``widgets`` a ``+`` after a name marks the extra value the UI stores
after a seed (control_after_generate: "fixed", "randomize", ...), ``-name``
a value the UI stores that no input stands for (LoadImage's upload button),
and ``!name`` an input sdflow has no place for (left out, with a note).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

CONTROL = "+"  # the UI's control_after_generate value, after a seed
EXTRA = "-"  # a UI value that stands for no input
DROPPED = "!"  # a ComfyUI input sdflow's stage has no argument for


@dataclass(frozen=True)
class NodeMap:
    """One ComfyUI node type as an sdflow stage."""

    stage: str
    outputs: tuple[str, ...]  # sdflow's output names, by ComfyUI's output index
    links: dict[str, str]  # ComfyUI input -> sdflow input port
    widgets: tuple[str, ...]  # ComfyUI's widget inputs in the UI's order (with CONTROL / EXTRA marks)
    params: dict[str, str]  # ComfyUI widget input -> sdflow parameter
    values: dict[str, Callable] = field(default_factory=dict)  # sdflow parameter -> value conversion
    dropped: frozenset[str] = frozenset()  # ComfyUI inputs left out
    title: str = ""  # ComfyUI's display name: a title that is this (or the type) was not set by the user
    fixed: dict = field(default_factory=dict)  # sdflow arguments written for every such node
    note: str = ""  # said in the recipe's header when the workflow has such a node


def _renames(spec: str) -> tuple[list[str], dict[str, str], set[str]]:
    order, names, dropped = [], {}, set()
    for item in spec.split():
        if item.startswith(DROPPED):
            dropped.add(item[1:])
            continue
        comfy, _, ours = item.partition(">")
        order.append(comfy)
        if not comfy.startswith(EXTRA) and comfy != CONTROL:
            names[comfy] = ours or comfy
    return order, names, dropped


def _node(stage: str, outputs: str, links: str = "", widgets: str = "", title: str = "",
          values: dict[str, Callable] | None = None) -> NodeMap:
    _, link_names, dropped_links = _renames(links)
    order, params, dropped_widgets = _renames(widgets.replace("+", " +"))
    return NodeMap(stage, tuple(outputs.split()), link_names, tuple(order), params, values or {},
                   frozenset(dropped_links | dropped_widgets), title)


def _switch(value):
    """KSamplerAdvanced's "enable"/"disable" as a boolean."""
    return {"enable": True, "disable": False}.get(value, value)


def _image_method(value):
    return "nearest" if value == "nearest-exact" else value


def _cond_area(value):
    return "mask_bounds" if value == "mask bounds" else value


_SAMPLER = "sampler_name>sampler scheduler"
_SCALE = {"method": _image_method}

NODES: dict[str, NodeMap] = {
    "CheckpointLoaderSimple": _node("load_checkpoint", "model clip vae", "", "ckpt_name>name", "Load Checkpoint"),
    "CLIPTextEncode": _node("clip_text_encode", "conditioning", "clip", "text", "CLIP Text Encode (Prompt)"),
    "CLIPTextEncodeSDXL": _node("clip_text_encode_sdxl", "conditioning", "clip",
                                "width height crop_w crop_h target_width target_height text_g text_l"),
    "CLIPTextEncodeSDXLRefiner": _node("clip_text_encode_sdxl_refiner", "conditioning", "clip",
                                       "ascore width height text"),
    "CLIPSetLastLayer": _node("clip_set_last_layer", "clip", "clip", "stop_at_clip_layer", "CLIP Set Last Layer"),
    "KSampler": _node("sample", "latent", "model positive negative latent_image>latent",
                      f"seed+ steps cfg {_SAMPLER} denoise", "KSampler"),
    "KSamplerAdvanced": _node("sample_advanced", "latent", "model positive negative latent_image>latent",
                              f"add_noise noise_seed>seed+ steps cfg {_SAMPLER} start_at_step end_at_step "
                              "return_with_leftover_noise", "KSampler (Advanced)",
                              {"add_noise": _switch, "return_with_leftover_noise": _switch}),
    "EmptyLatentImage": _node("empty_latent", "latent", "", "width height batch_size>batch", "Empty Latent Image"),
    "VAEDecode": _node("vae_decode", "image", "samples>latent vae", "", "VAE Decode"),
    "VAEEncode": _node("vae_encode", "latent", "pixels>image vae", "", "VAE Encode"),
    "VAEEncodeForInpaint": _node("vae_encode_for_inpaint", "latent", "pixels>image vae mask", "grow_mask_by",
                                 "VAE Encode (for Inpainting)"),
    "VAELoader": _node("load_vae", "vae", "", "vae_name>name", "Load VAE"),
    "LoraLoader": _node("load_lora", "model clip", "model clip", "lora_name>name strength_model strength_clip",
                        "Load LoRA"),
    "LoraLoaderModelOnly": _node("load_lora_model_only", "model", "model", "lora_name>name strength_model"),
    "ControlNetLoader": _node("load_controlnet", "control_net", "", "control_net_name>name",
                              "Load ControlNet Model"),
    "ControlNetApplyAdvanced": _node("apply_controlnet", "positive negative",
                                     "positive negative control_net image !vae",
                                     "strength start_percent end_percent", "Apply ControlNet"),
    "SaveImage": _node("save_image", "", "images>image", "filename_prefix>prefix", "Save Image"),
    "PreviewImage": NodeMap("save_image", (), {"images": "image"}, (), {}, title="Preview Image",
                            fixed={"prefix": "preview"},
                            note="sdflow has no previews: PreviewImage is a save_image with prefix \"preview\""),
    "LoadImage": _node("load_image", "image mask", "", "image>name -upload", "Load Image"),
    "LoadImageMask": _node("load_mask", "mask", "", "image>name channel -upload", "Load Image (as Mask)"),
    "ConditioningCombine": _node("conditioning_combine", "conditioning", "conditioning_1 conditioning_2", "",
                                 "Conditioning (Combine)"),
    "ConditioningConcat": _node("conditioning_concat", "conditioning", "conditioning_to conditioning_from", "",
                                "Conditioning (Concat)"),
    "ConditioningAverage": _node("conditioning_average", "conditioning", "conditioning_to conditioning_from",
                                 "conditioning_to_strength", "Conditioning (Average)"),
    "ConditioningSetArea": _node("conditioning_set_area", "conditioning", "conditioning",
                                 "width height x y strength", "Conditioning (Set Area)"),
    "ConditioningSetMask": _node("conditioning_set_mask", "conditioning", "conditioning mask",
                                 "strength set_cond_area", "Conditioning (Set Mask)", {"set_cond_area": _cond_area}),
    "ConditioningSetTimestepRange": _node("conditioning_set_timestep_range", "conditioning", "conditioning",
                                          "start end"),
    "ConditioningZeroOut": _node("conditioning_zero_out", "conditioning", "conditioning"),
    "LatentUpscale": _node("latent_upscale", "latent", "samples>latent", "upscale_method>method width height crop",
                           "Upscale Latent"),
    "LatentUpscaleBy": _node("latent_upscale", "latent", "samples>latent", "upscale_method>method scale_by>factor",
                             "Upscale Latent By"),
    "LatentComposite": _node("latent_composite", "latent", "samples_to>destination samples_from>source",
                             "x y feather", "Latent Composite"),
    "LatentCompositeMasked": _node("latent_composite", "latent", "destination source mask", "x y resize_source"),
    "LatentCrop": _node("latent_crop", "latent", "samples>latent", "width height x y", "Crop Latent"),
    "LatentBatch": _node("latent_batch", "latent", "samples1>latent1 samples2>latent2"),
    "LatentFromBatch": _node("latent_from_batch", "latent", "samples>latent", "batch_index length",
                             "Latent From Batch"),
    "RepeatLatentBatch": _node("repeat_latent_batch", "latent", "samples>latent", "amount", "Repeat Latent Batch"),
    "SetLatentNoiseMask": _node("set_latent_noise_mask", "latent", "samples>latent mask", "",
                                "Set Latent Noise Mask"),
    "FreeU": _node("freeu", "model", "model", "b1 b2 s1 s2"),
    "ImageScale": _node("image_scale", "image", "image", "upscale_method>method width height crop",
                        "Upscale Image", _SCALE),
    "ImageScaleBy": _node("image_scale", "image", "image", "upscale_method>method scale_by>factor",
                          "Upscale Image By", _SCALE),
    "ImageScaleToTotalPixels": _node("image_scale", "image", "image", "upscale_method>method megapixels",
                                     "Scale Image to Total Pixels", _SCALE),
    "ImageCrop": _node("image_crop", "image", "image", "width height x y", "Image Crop"),
    "ImageBatch": _node("image_batch", "image", "image1 image2", "", "Batch Images"),
    "ImageFromBatch": _node("image_from_batch", "image", "image", "batch_index length"),
    "ImagePadForOutpaint": _node("image_pad_for_outpaint", "image mask", "image",
                                 "left top right bottom feathering", "Pad Image for Outpainting"),
    "ImageCompositeMasked": _node("image_composite", "image", "destination source mask", "x y resize_source"),
    "ImageToMask": _node("image_to_mask", "mask", "image", "channel", "Convert Image to Mask"),
    "MaskToImage": _node("mask_to_image", "image", "mask", "", "Convert Mask to Image"),
    "InvertMask": _node("invert_mask", "mask", "mask"),
    "SolidMask": _node("solid_mask", "mask", "", "value width height"),
    "ThresholdMask": _node("threshold_mask", "mask", "mask", "value"),
    "GrowMask": _node("grow_mask", "mask", "mask", "expand>pixels tapered_corners"),
    "FeatherMask": _node("feather_mask_edges", "mask", "mask", "left top right bottom"),
    "MaskComposite": _node("mask_composite", "mask", "destination source", "x y operation"),
}

# Nodes that hold one value for others' widgets: followed through, their value written in.
PRIMITIVES = frozenset({"PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline",
                        "PrimitiveBoolean"})
# UI-only nodes: notes, and the two the frontend resolves itself.
NOTES = frozenset({"Note", "MarkdownNote"})
REROUTE, PRIMITIVE_NODE = "Reroute", "PrimitiveNode"
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
