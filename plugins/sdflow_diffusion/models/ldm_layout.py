"""diffusers weights -> the original Stable Diffusion single-file key layout.

The original layout (CompVis' ``ldm`` code, kept by Stability's SDXL code and
by every ``.safetensors`` in ComfyUI's ``models/checkpoints``) names blocks by
position: ``model.diffusion_model.input_blocks.4.1...`` where diffusers says
``unet.down_blocks.1.attentions.0...``.  diffusers converts that layout into
its own when loading; this module goes the other way, for two reasons:

* tests save tiny models exactly as users' files are laid out, and load them
  through the same code a user's file takes (:mod:`sdflow_diffusion.testing`);
* family detection derives, from each shipped config, the keys and shapes a
  checkpoint of that family must have (:mod:`sdflow_diffusion.models.families`).

Loading goes the same way, key by key: :func:`sources` names, for each
tensor of a component built from its config, where in a user's file it is
(:class:`Source`), so that the loader reads exactly those tensors, one at a
time, and no renamed copy of the file's state dict is ever made.

Everything here works on meta tensors too: only names and shapes are used,
apart from the few tensors that are reshaped (concatenated or transposed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sdflow_diffusion.models.architectures import TextEncoder, architecture, kind_of_folder

UNET = "model.diffusion_model."
VAE = "first_stage_model."

_UNET_RESNET = (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
                ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection."))
_VAE_RESNET = (("conv_shortcut.", "nin_shortcut."),)
_VAE_ATTENTION = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                  ("to_out.0.", "proj_out."))
_OPEN_CLIP_LAYER = (("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("self_attn.out_proj.", "attn.out_proj."),
                    ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj."))


def infer_kind(components: dict[str, Any]) -> str:
    """The kind whose text encoders ``components`` has (by subfolder name
    and the first encoder's activation)."""
    encoders = {name for name, part in components.items() if name.startswith("text_encoder") and part is not None}
    kind = kind_of_folder(encoders, lambda name: components[name].config.hidden_act)
    if kind is None:
        raise ValueError(f"no known kind of Stable Diffusion has text encoders {sorted(encoders)}")
    return kind


def to_original(components: dict[str, Any], kind: str | None = None) -> dict[str, Any]:
    """The state dict of a single-file checkpoint holding ``components``
    (a dict with unet, vae, text_encoder[, text_encoder_2])."""
    kind = kind or infer_kind(components)
    state: dict[str, Any] = {}
    state.update(_prefixed(UNET, unet_to_original(components["unet"].state_dict(), components["unet"].config)))
    state.update(_prefixed(VAE, vae_to_original(components["vae"].state_dict(), components["vae"].config)))
    for encoder in architecture(kind).text_encoders:
        weights = components[encoder.subfolder].state_dict()
        convert = open_clip_to_original if encoder.layout == "open_clip" else clip_to_original
        state.update(_prefixed(encoder.prefix, convert(weights)))
    return state


def _prefixed(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    return {prefix + key: value for key, value in state.items()}


def _rename(key: str, prefixes: dict[str, tuple[str, tuple]]) -> str:
    """Swap the longest matching block prefix, then the names inside it."""
    for old in sorted((p for p in prefixes if key.startswith(p)), key=len, reverse=True):
        new, inner = prefixes[old]
        rest = key[len(old):]
        for before, after in inner:
            if rest.startswith(before):
                rest = after + rest[len(before):]
                break
        return new + rest
    raise KeyError(f"no original-layout name for {key!r}")


def _per_block(value: Any, count: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


def unet_prefixes(config: Any) -> dict[str, tuple[str, tuple]]:
    """diffusers UNet block prefix -> (original prefix, renames inside it).

    Original input blocks count on: conv_in is 0, then each down block's
    layers, then its downsampler.  Output blocks hold the up blocks' layers,
    the last layer of each carrying the upsampler (at index 2 after an
    attention, else 1).
    """
    count = len(config["block_out_channels"])
    down_layers = _per_block(config["layers_per_block"], count)
    up_layers = list(reversed(down_layers))
    table = {"time_embedding.linear_1.": ("time_embed.0.", ()), "time_embedding.linear_2.": ("time_embed.2.", ()),
             "add_embedding.linear_1.": ("label_emb.0.0.", ()), "add_embedding.linear_2.": ("label_emb.0.2.", ()),
             "conv_in.": ("input_blocks.0.0.", ()), "conv_norm_out.": ("out.0.", ()), "conv_out.": ("out.2.", ()),
             "mid_block.resnets.0.": ("middle_block.0.", _UNET_RESNET),
             "mid_block.attentions.0.": ("middle_block.1.", ()),
             "mid_block.resnets.1.": ("middle_block.2.", _UNET_RESNET)}
    index = 1
    for block in range(count):
        for layer in range(down_layers[block]):
            table[f"down_blocks.{block}.resnets.{layer}."] = (f"input_blocks.{index}.0.", _UNET_RESNET)
            table[f"down_blocks.{block}.attentions.{layer}."] = (f"input_blocks.{index}.1.", ())
            index += 1
        if block < count - 1:
            table[f"down_blocks.{block}.downsamplers.0.conv."] = (f"input_blocks.{index}.0.op.", ())
            index += 1
    index = 0
    for block in range(count):
        has_attention = "CrossAttn" in config["up_block_types"][block]
        for layer in range(up_layers[block] + 1):
            table[f"up_blocks.{block}.resnets.{layer}."] = (f"output_blocks.{index}.0.", _UNET_RESNET)
            table[f"up_blocks.{block}.attentions.{layer}."] = (f"output_blocks.{index}.1.", ())
            index += 1
        if block < count - 1:
            slot = 2 if has_attention else 1
            table[f"up_blocks.{block}.upsamplers.0.conv."] = (f"output_blocks.{index - 1}.{slot}.conv.", ())
    return table


def unet_to_original(state: dict[str, Any], config: Any) -> dict[str, Any]:
    table = unet_prefixes(config)
    return {_rename(key, table): value for key, value in state.items()}


def vae_to_original(state: dict[str, Any], config: Any) -> dict[str, Any]:
    """The VAE keeps most names; its blocks are ``down.N.block.M``, its up
    blocks are numbered from the bottom, and its mid-block attention is
    stored as 1x1 convolutions rather than linear layers."""
    table = vae_prefixes(config)
    result = {}
    for key, value in state.items():
        new = _vae_key(key, table)
        if ".mid.attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # linear -> 1x1 convolution
        result[new] = value
    return result


def _vae_key(key: str, table: dict[str, tuple[str, tuple]]) -> str:
    return _rename(key, table).replace(".conv_shortcut.", ".nin_shortcut.")


def vae_prefixes(config: Any) -> dict[str, tuple[str, tuple]]:
    """diffusers VAE prefix -> (original prefix, renames inside it)."""
    count = len(config["block_out_channels"])
    table = {f"{part}.{name}.": (f"{part}.{name}.", ())
             for part in ("encoder", "decoder") for name in ("conv_in", "conv_out")}
    table.update({"quant_conv.": ("quant_conv.", ()), "post_quant_conv.": ("post_quant_conv.", ()),
                  "encoder.conv_norm_out.": ("encoder.norm_out.", ()),
                  "decoder.conv_norm_out.": ("decoder.norm_out.", ())})
    for part in ("encoder", "decoder"):
        table[f"{part}.mid_block.resnets.0."] = (f"{part}.mid.block_1.", _VAE_RESNET)
        table[f"{part}.mid_block.resnets.1."] = (f"{part}.mid.block_2.", _VAE_RESNET)
        table[f"{part}.mid_block.attentions.0."] = (f"{part}.mid.attn_1.", _VAE_ATTENTION)
    for block in range(count):
        up = count - 1 - block
        table[f"encoder.down_blocks.{block}.resnets."] = (f"encoder.down.{block}.block.", ())
        table[f"encoder.down_blocks.{block}.downsamplers.0.conv."] = (f"encoder.down.{block}.downsample.conv.", ())
        table[f"decoder.up_blocks.{block}.resnets."] = (f"decoder.up.{up}.block.", ())
        table[f"decoder.up_blocks.{block}.upsamplers.0.conv."] = (f"decoder.up.{up}.upsample.conv.", ())
    return table


def clip_to_original(state: dict[str, Any]) -> dict[str, Any]:
    """OpenAI CLIP (SD 1.x, SDXL's first encoder) keeps transformers' names
    under ``text_model.`` (which transformers 5 no longer nests the model in)."""
    return {"text_model." + key.removeprefix("text_model."): value for key, value in state.items()}


def open_clip_to_original(state: dict[str, Any]) -> dict[str, Any]:
    """OpenCLIP (SD 2.x, SDXL's second encoder): its own names, query, key and
    value in one ``in_proj`` matrix, and the projection stored transposed
    (OpenCLIP multiplies ``x @ text_projection``)."""
    import torch

    state = {key.removeprefix("text_model."): value for key, value in state.items()}
    result: dict[str, Any] = {}
    for key, value in state.items():
        if key == "embeddings.token_embedding.weight":
            result["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            result["positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            result["ln_final." + key.removeprefix("final_layer_norm.")] = value
        elif key == "text_projection.weight":
            result["text_projection"] = value.T.contiguous()
        elif key.startswith("encoder.layers."):
            layer, _, rest = key.removeprefix("encoder.layers.").partition(".")
            block = f"transformer.resblocks.{layer}."
            if rest.startswith("self_attn.q_proj."):
                kind = rest.rsplit(".", 1)[1]  # weight or bias
                parts = [state[f"encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                result[block + f"attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
            elif not rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                result[block + _rename(rest, {"": ("", _OPEN_CLIP_LAYER)})] = value
        else:
            raise KeyError(f"no original-layout name for text encoder key {key!r}")
    return result


# -- the way back: where each tensor of a component is in a single file --------------------------

@dataclass(frozen=True)
class Source:
    """Where one tensor of a diffusers component is in an original-layout
    file: its ``key``; the ``rows`` of it that are this tensor (OpenCLIP
    keeps query, key and value in one matrix), or None for all of it; and
    whether it is stored ``transposed`` (OpenCLIP's text projection).  A
    tensor stored with other unit dimensions (the VAE's attention, 1x1
    convolutions there and linear layers in diffusers) is reshaped by the
    loader."""

    key: str
    rows: tuple[int, int] | None = None
    transposed: bool = False


def sources(part: str, keys: Iterable[str], config: Any, kind: str | None = None, prefix: str | None = None,
            layout: str = "original") -> dict[str, Source]:
    """For each key of component ``part`` (unet, vae, text_encoder,
    text_encoder_2 of ``kind``), built from ``config`` (the U-Net's or the
    VAE's config; a text encoder's, for its width), where its tensor is in
    a single file whose ``part`` is under ``prefix`` (by default where a
    whole checkpoint keeps it), in the original ``layout`` or in diffusers'
    own (a VAE saved by diffusers: the same keys)."""
    if layout == "diffusers":
        return {key: Source((prefix or "") + key) for key in keys}
    if part == "unet":
        table = unet_prefixes(config)
        return {key: Source(_or(prefix, UNET) + _rename(key, table)) for key in keys}
    if part == "vae":
        table = vae_prefixes(config)
        return {key: Source(_or(prefix, VAE) + _vae_key(key, table)) for key in keys}
    encoder = encoder_of(kind, part)
    start = _or(prefix, encoder.prefix)
    if encoder.layout == "clip":
        return {key: Source(start + "text_model." + key.removeprefix("text_model.")) for key in keys}
    return {key: open_clip_source(key, start, config["hidden_size"]) for key in keys}


def _or(prefix: str | None, default: str) -> str:
    return default if prefix is None else prefix


def encoder_of(kind: str, subfolder: str) -> TextEncoder:
    return next(e for e in architecture(kind).text_encoders if e.subfolder == subfolder)


_OPEN_CLIP_NAMES = {"embeddings.token_embedding.weight": "token_embedding.weight",
                    "embeddings.position_embedding.weight": "positional_embedding",
                    "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}


def open_clip_source(key: str, prefix: str, width: int) -> Source:
    """Where the OpenCLIP tensor of diffusers' ``key`` is (see
    :func:`open_clip_to_original`, the way there)."""
    name = key.removeprefix("text_model.")
    if name in _OPEN_CLIP_NAMES:
        return Source(prefix + _OPEN_CLIP_NAMES[name])
    if name == "text_projection.weight":
        return Source(prefix + "text_projection", transposed=True)
    if not name.startswith("encoder.layers."):
        raise KeyError(f"no original-layout name for text encoder key {key!r}")
    layer, _, rest = name.removeprefix("encoder.layers.").partition(".")
    block = f"{prefix}transformer.resblocks.{layer}."
    for index, part in enumerate("qkv"):
        if rest.startswith(f"self_attn.{part}_proj."):
            kind = rest.rsplit(".", 1)[1]  # weight or bias
            return Source(block + f"attn.in_proj_{kind}", rows=(index * width, (index + 1) * width))
    return Source(block + _rename(rest, {"": ("", _OPEN_CLIP_LAYER)}))
