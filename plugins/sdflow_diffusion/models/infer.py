"""A U-Net config read off a single file's shapes, for models no shipped config fits.

Distilled and pruned checkpoints (SSD-1B and Vega from SDXL, BK-SDM from
SD 1.5) keep their family's VAE and text encoders but change the U-Net's
depth and width: fewer layers per block, fewer transformer blocks in some
layers, no middle block.  The original single-file layout says all of it:
``input_blocks.N`` count the layers and downsamplers of each level, their
``transformer_blocks.K`` the transformer depth, the first convolution the
channels.  So, as ComfyUI's model detection does, the config is read from
the keys and shapes, starting from the nearest family's config for what
shapes cannot say (attention heads, embeddings), and the U-Net is built
from it and its tensors read as a family's are (:func:`.ldm_layout.sources`).
:func:`unet_from_original` renames a U-Net's tensors in memory (a ControlNet's).
Torch-free except :func:`unet_from_original`'s callers.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from sdflow_diffusion.models.ldm_layout import UNET, _rename, unet_prefixes

_INPUT = re.compile(r"^model\.diffusion_model\.input_blocks\.(\d+)\.(\d+)\.(?:transformer_blocks\.(\d+)\.)?")
_OUTPUT = re.compile(r"^model\.diffusion_model\.output_blocks\.(\d+)\.(\d+)\.(?:transformer_blocks\.(\d+)\.)?")
_MIDDLE = re.compile(r"^model\.diffusion_model\.middle_block\.1\.transformer_blocks\.(\d+)\.")


def infer_unet_config(shapes: Mapping[str, tuple], base: Mapping[str, Any]) -> dict[str, Any] | None:
    """The U-Net config that ``shapes`` (original-layout keys -> shapes)
    describe, on top of ``base`` (a family's U-Net config), or None when the
    file's U-Net has a structure diffusers cannot build."""
    inputs = _blocks(shapes, _INPUT)
    outputs = _blocks(shapes, _OUTPUT)
    if not inputs or 0 not in inputs:
        return None
    levels: list[list[int]] = [[]]  # per level, the input block index of each layer
    for index in sorted(i for i in inputs if i > 0):
        if f"{UNET}input_blocks.{index}.0.op.weight" in shapes:
            levels.append([])  # a downsampler ends the level
        else:
            levels[-1].append(index)
    if any(not level for level in levels):
        return None
    depth = [[inputs[i].get(1, 0) for i in level] for level in levels]
    attention = [any(d > 0 for d in level) for level in depth]
    if any(a and 0 in level for a, level in zip(attention, depth)):
        return None  # attention in some layers of a level and not in others
    channels = [shapes[f"{UNET}input_blocks.{level[0]}.0.out_layers.3.weight"][0] for level in levels]
    up = _up_levels(outputs, [len(level) for level in levels])
    if up is None:
        return None
    config = dict(base)
    heads = _heads(base, channels)
    cross = next((s[1] for k, s in shapes.items() if k.startswith(UNET) and k.endswith("attn2.to_k.weight")), None)
    config.update(
        in_channels=shapes[f"{UNET}input_blocks.0.0.weight"][1],
        out_channels=shapes[f"{UNET}out.2.weight"][0],
        block_out_channels=channels,
        layers_per_block=_uniform([len(level) for level in levels]),
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        attention_head_dim=heads,
    )
    if cross is not None:
        config["cross_attention_dim"] = cross
    # Transformer depth: one number per level when every layer of a level
    # has the same; the up levels' own (one more layer each) only when they
    # differ from the down levels' in reverse, as SSD-1B's and Vega's do.
    forward = [_uniform(level) if a else 1 for a, level in zip(attention, depth)]
    reverse = [[d if a else 1 for d in level] for a, level in zip(reversed(attention), up)]
    plain = all(isinstance(f, int) for f in forward) and all(
        level == [f] * len(level) for f, level in zip(reversed(forward), reverse))
    config["transformer_layers_per_block"] = _uniform(forward) if plain else forward
    config["reverse_transformer_layers_per_block"] = None if plain else reverse
    middle = {int(m.group(1)) for k in shapes if (m := _MIDDLE.match(k))}
    if f"{UNET}middle_block.0.in_layers.0.weight" not in shapes:
        config["mid_block_type"] = None  # BK-SDM-small and -tiny have none
    elif not middle:
        config["mid_block_type"] = "UNetMidBlock2D"
    else:
        config["mid_block_type"] = "UNetMidBlock2DCrossAttn"
    if middle and len(middle) != (forward[-1] if isinstance(forward[-1], int) else forward[-1][0]):
        return None  # the middle block's depth follows the last level's in diffusers
    if f"{UNET}label_emb.0.0.weight" in shapes:
        config["projection_class_embeddings_input_dim"] = shapes[f"{UNET}label_emb.0.0.weight"][1]
    return config


def _blocks(shapes: Mapping[str, tuple], pattern: re.Pattern) -> dict[int, dict[int, int]]:
    """Block index -> {layer slot -> transformer depth (0: no transformer)}."""
    found: dict[int, dict[int, int]] = {}
    for key in shapes:
        m = pattern.match(key)
        if m:
            slots = found.setdefault(int(m.group(1)), {})
            depth = int(m.group(3)) + 1 if m.group(3) is not None else 0
            slots[int(m.group(2))] = max(slots.get(int(m.group(2)), 0), depth)
    return found


def _up_levels(outputs: dict[int, dict[int, int]], down_layers: list[int]) -> list[list[int]] | None:
    """Each up level's transformer depth per layer (layers = down layers + 1)."""
    up, index = [], 0
    for count in reversed(down_layers):
        level = []
        for _ in range(count + 1):
            if index not in outputs:
                return None
            level.append(outputs[index].get(1, 0))
            index += 1
        up.append(level)
    return up if index == len(outputs) else None


def _heads(base: Mapping[str, Any], channels: list[int]) -> Any:
    """attention_head_dim as the base family means it: one number (SD 1.x's
    8) is a number of heads and stays; per-level head counts (SD 2.x, SDXL)
    keep the base's channels per head (64 in the real models) at the new
    widths."""
    given = base.get("attention_head_dim", 8)
    if isinstance(given, int):
        return given
    per_head = base["block_out_channels"][0] // given[0]
    return [max(1, c // per_head) for c in channels]


def _uniform(values: list) -> Any:
    return values[0] if values and all(v == values[0] for v in values) else values


def unet_from_original(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A U-Net's diffusers state dict from the ``model.diffusion_model.*``
    tensors of an original-layout state dict (the inverse of
    :func:`sdflow_diffusion.models.ldm_layout.unet_to_original`)."""
    table = {original: (diffusers, tuple((o, d) for d, o in inner))
             for diffusers, (original, inner) in unet_prefixes(config).items()}
    return {_rename(key[len(UNET):], table): value for key, value in state.items() if key.startswith(UNET)}
