"""LoRA files: the layouts found in the wild, read into weight changes of sdflow's modules.

Layouts read:

* kohya / A1111 (sd-scripts and most shared LoRAs): ``lora_unet_<module>``,
  ``lora_te_``, ``lora_te1_``/``lora_te2_`` (SDXL), the module's name with
  ``_`` for ``.``; the U-Net named as diffusers names it (SD 1.x/2.x
  trainings) or as the original layout does (``input_blocks_4_1_...``: SDXL
  trainings); ``.lora_down.weight``, ``.lora_up.weight``, ``.alpha`` (the
  change is scaled by alpha / rank).  Convolutions too, a 3x3 down with a 1x1 up.
* diffusers / PEFT: ``unet.<module>.lora_A.weight`` / ``.lora_B.weight``,
  ``text_encoder.``, ``text_encoder_2.``, and diffusers' older layouts
  (``...attn1.processor.to_q_lora.down.weight``,
  ``...mlp.fc1.lora_linear_layer.down.weight``).
* LyCORIS LoHa (``hada_w1_a`` ...: the change is ``(w1a @ w1b) * (w2a @ w2b)``)
  and LoKr (``lokr_w1`` ...: ``kron(w1, w2)``), in the kohya names.

A key's module is found by name in a table made from the model at hand
(every Linear and Conv2d of the U-Net under its diffusers name and its
original-layout name, each text encoder's under transformers' name, all with
``_`` for ``.``), not by rewriting names with rules: a key names a module
exactly, or nothing, and what names nothing is counted and reported.
(diffusers' own converter, ``_convert_non_diffusers_lora_to_diffusers``, is
such a set of string rules, private, raises on a key it does not know, and
leads to a PEFT model, not to the plain modules sdflow patches.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sdflow.plugin import StageError
from sdflow_diffusion.models.common import PICKLE_SUFFIXES
from sdflow_diffusion.models.files import header_shapes, load_weights, regular_file, safetensors_header

ROLES = {  # the end of a key -> what the tensor is
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha",
    ".lora_A.weight": "down", ".lora_B.weight": "up",
    ".lora.down.weight": "down", ".lora.up.weight": "up",
    "_lora.down.weight": "down", "_lora.up.weight": "up",
    ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",
    **{f".hada_{w}": f"hada_{w}" for w in ("w1_a", "w1_b", "w2_a", "w2_b")},
    **{f".lokr_{w}": f"lokr_{w}" for w in ("w1", "w2", "w1_a", "w1_b", "w2_a", "w2_b")},
}
UNSUPPORTED = {  # the end of a key -> the format it belongs to, which sdflow does not apply
    ".lora_mid.weight": "LoCon with a mid (Tucker) weight", ".hada_t1": "LoHa with Tucker decomposition",
    ".lokr_t2": "LoKr with Tucker decomposition", ".dora_scale": "DoRA", ".lora_magnitude_vector": "DoRA",
    ".diff": "LyCORIS full (a whole weight difference)", ".diff_b": "LyCORIS full (a whole bias difference)",
    ".w_norm": "LyCORIS norm", ".oft_blocks": "OFT", ".oft_R": "BOFT", ".a1.weight": "GLoRA",
}
PARTS = (  # a key's prefix -> which model part it changes ("first": the first text encoder)
    ("lora_unet_", "unet"), ("lora_te1_", "first"), ("lora_te2_", "text_encoder_2"), ("lora_te_", "first"),
    ("unet.", "unet"), ("text_encoder_2.", "text_encoder_2"), ("text_encoder.", "first"),
    ("down_blocks.", "unet!"), ("mid_block.", "unet!"), ("up_blocks.", "unet!"),  # diffusers' oldest: no prefix
)
ALIASES = (  # diffusers' older attention-processor names -> the modules'
    ("_processor_", "_"), ("self_attn_to_q", "self_attn_q_proj"), ("self_attn_to_k", "self_attn_k_proj"),
    ("self_attn_to_v", "self_attn_v_proj"), ("self_attn_to_out", "self_attn_out_proj"),
)
HELP = "a LoRA is a .safetensors file from kohya's sd-scripts, diffusers/PEFT, or LyCORIS (LoHa, LoKr)"


@dataclass(frozen=True)
class Layout:
    """A LoRA file's keys grouped by the module they change: ``groups`` maps
    a group name (the key without its role) to ``{role: shape}``;
    ``unknown`` lists the keys of no known layout."""

    groups: dict[str, dict[str, tuple[int, ...]]]
    unknown: tuple[str, ...]


def layout_of(shapes: dict[str, tuple[int, ...]], shown: str) -> Layout:
    """Group ``shapes`` (a file's keys) by module; a :class:`StageError`
    naming ``shown`` for a file with no LoRA key, or with a format sdflow
    does not apply."""
    groups: dict[str, dict[str, tuple[int, ...]]] = {}
    unknown = []
    for key, shape in shapes.items():
        if (format := _ending(key, UNSUPPORTED)) is not None:
            raise StageError(f"'{shown}' is a {UNSUPPORTED[format]} file (key '{key}'), which sdflow does not apply",
                             help="sdflow applies LoRA (kohya, diffusers/PEFT), LoCon without a mid weight, "
                                  "LoHa and LoKr without Tucker decomposition")
        ending = _ending(key, ROLES)
        if ending is None:
            unknown.append(key)
        else:
            groups.setdefault(key[: -len(ending)], {})[ROLES[ending]] = tuple(shape)
    if not groups:
        raise StageError(f"'{shown}' is not a LoRA: none of its {len(shapes)} keys is in a LoRA layout "
                         f"(e.g. {_examples(list(shapes))})", help=HELP + "; is it a checkpoint or a VAE?")
    return Layout(groups, tuple(unknown))


def inspect_lora(path: Path, allow_pickle: bool, shown: str) -> Layout | None:
    """The layout of the LoRA file ``path`` read from its header alone (None
    for an allowed pickle, whose keys are known only once it is loaded)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise StageError(f"'{shown}' is a pickle ({path.suffix}), and loading a pickle can run any code "
                             "hidden in it, so sdflow does not load one unless asked",
                             help="use a .safetensors version of the LoRA, or pass --allow-pickle if you trust it")
        regular_file(path, shown)
        return None
    shapes, _ = header_shapes(safetensors_header(path, shown))
    return layout_of(shapes, shown)


def read_lora(path: Path, allow_pickle: bool, shown: str) -> tuple[Layout, dict[str, Any]]:
    """The layout and the tensors (float32, on the CPU) of the LoRA file ``path``."""
    import torch

    inspect_lora(path, allow_pickle, shown)
    state = load_weights(path, f"the LoRA '{shown}'", HELP)
    if not isinstance(state, dict):
        raise StageError(f"'{shown}' holds a {type(state).__name__}, not a state dict of tensors", help=HELP)
    tensors = {k: v.float() for k, v in state.items() if isinstance(v, torch.Tensor)}
    return layout_of({k: tuple(v.shape) for k, v in tensors.items()}, shown), tensors


# -- the change each group makes -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LowRank:
    """LoRA: ``up @ down`` (flattened for a convolution), times alpha / rank."""

    up: Any
    down: Any
    scale: float

    def weight(self, device: Any, strength: float):
        import torch

        up = self.up.to(device, torch.float32).flatten(1)
        down = self.down.to(device, torch.float32).flatten(1)
        return (up @ down) * (self.scale * strength)


@dataclass(frozen=True, eq=False)
class Hadamard:
    """LoHa: the elementwise product of two low-rank products, times alpha / rank."""

    w1_a: Any
    w1_b: Any
    w2_a: Any
    w2_b: Any
    scale: float

    def weight(self, device: Any, strength: float):
        import torch

        w1_a, w1_b, w2_a, w2_b = (w.to(device, torch.float32).flatten(1) for w in
                                  (self.w1_a, self.w1_b, self.w2_a, self.w2_b))
        return ((w1_a @ w1_b) * (w2_a @ w2_b)) * (self.scale * strength)


@dataclass(frozen=True, eq=False)
class Kronecker:
    """LoKr: the Kronecker product of two factors (each whole or low-rank),
    times alpha / rank when a factor is low-rank."""

    w1: Any
    w2: Any
    scale: float

    def weight(self, device: Any, strength: float):
        import torch

        w1, w2 = (w.to(device, torch.float32) for w in (self.w1, self.w2))
        if w2.ndim == 4:  # a convolution's kernel lives in w2
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2).flatten(1) * (self.scale * strength)


def shape_2d(roles: dict[str, tuple[int, ...]]) -> tuple[int, int] | None:
    """(outputs, inputs x kernel) of the weight a group changes, from its
    tensors' shapes; None for a group that lacks a tensor."""
    if "up" in roles and "down" in roles:
        return roles["up"][0], math.prod(roles["down"][1:])
    if all(f"hada_{w}" in roles for w in ("w1_a", "w1_b", "w2_a", "w2_b")):
        return roles["hada_w1_a"][0], math.prod(roles["hada_w1_b"][1:])
    factors = [_lokr_factor(roles, n) for n in ("1", "2")]
    if None in factors:
        return None
    (out1, in1), (out2, in2) = factors
    return out1 * out2, in1 * in2


def _lokr_factor(roles: dict[str, tuple[int, ...]], n: str) -> tuple[int, int] | None:
    if f"lokr_w{n}" in roles:
        shape = roles[f"lokr_w{n}"]
        return shape[0], math.prod(shape[1:])
    if f"lokr_w{n}_a" in roles and f"lokr_w{n}_b" in roles:
        return roles[f"lokr_w{n}_a"][0], math.prod(roles[f"lokr_w{n}_b"][1:])
    return None


def make_delta(group: str, tensors: dict[str, Any]) -> LowRank | Hadamard | Kronecker:
    """The change a complete group (see :func:`shape_2d`) of the file's tensors makes."""

    def get(role: str):
        for ending, known in ROLES.items():
            if known == role and group + ending in tensors:
                return tensors[group + ending]
        return None

    alpha = get("alpha")
    if get("down") is not None:
        down = get("down")
        return LowRank(get("up"), down, 1.0 if alpha is None else alpha.item() / down.shape[0])
    if get("hada_w1_a") is not None:
        w1_b = get("hada_w1_b")
        scale = 1.0 if alpha is None else alpha.item() / w1_b.shape[0]
        return Hadamard(get("hada_w1_a"), w1_b, get("hada_w2_a"), get("hada_w2_b"), scale)
    factors, rank = [], None
    for n in ("1", "2"):
        whole = get(f"lokr_w{n}")
        if whole is None:
            whole, rank = get(f"lokr_w{n}_a") @ get(f"lokr_w{n}_b"), get(f"lokr_w{n}_b").shape[0]
        factors.append(whole)
    return Kronecker(*factors, 1.0 if alpha is None or rank is None else alpha.item() / rank)


# -- which module each group changes -------------------------------------------------------------


def part_of(group: str) -> tuple[str, str] | None:
    """(model part, the module's name with ``_`` for ``.``) a group names,
    the part "unet", "first" (the first text encoder) or "text_encoder_2"."""
    for prefix, part in PARTS:
        if group.startswith(prefix):
            name = group if part.endswith("!") else group[len(prefix):]
            return part.rstrip("!"), name.replace(".", "_")
    return None


def unet_table(unet: Any) -> dict[str, str]:
    """Every Linear and Conv2d of a diffusers U-Net, under its own name and
    its original-layout name, each with ``_`` for ``.`` -> its name."""
    from sdflow_diffusion.models.ldm_layout import unet_to_original

    table = {}
    for name in _weighted(unet):
        table[name.replace(".", "_")] = name
        try:
            (original,) = unet_to_original({name + ".weight": None}, unet.config)
        except KeyError:  # a module the original layout does not have
            continue
        table[original.removesuffix(".weight").replace(".", "_")] = name
    return table


def encoder_table(encoder: Any) -> dict[str, str]:
    """Every Linear of a transformers CLIP text model under its name, with
    ``text_model.`` (which transformers 5 no longer nests its layers in)."""
    table = {}
    for name in _weighted(encoder):
        full = name if name.startswith(("text_model.", "text_projection")) else "text_model." + name
        table[full.replace(".", "_")] = name
    return table


def find_module(table: dict[str, str], flat: str) -> str | None:
    """The module a group's flat name names (in diffusers' older names too)."""
    if flat in table:
        return table[flat]
    for old, new in ALIASES:
        flat = flat.replace(old, new)
    if flat not in table and flat.endswith("_to_out"):
        flat += "_0"
    return table.get(flat)


def _weighted(module: Any) -> list[str]:
    import torch

    return [name for name, child in module.named_modules()
            if isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)) and name]


def _ending(key: str, endings: dict[str, str]) -> str | None:
    for ending in sorted(endings, key=len, reverse=True):
        if key.endswith(ending):
            return ending
    return None


def _examples(keys: list[str], count: int = 3) -> str:
    return ", ".join(f"'{k}'" for k in keys[:count]) + (", ..." if len(keys) > count else "")


# -- a LoRA against the model at hand ------------------------------------------------------------


def lora_patch(layout: Layout, tensors: dict[str, Any], shown: str, handle: Any, strength: float,
               warn: Callable[[str], None]):
    """The :class:`~sdflow_diffusion.models.patches.WeightPatch` that applies
    the LoRA's groups for ``handle`` (a ModelHandle: the U-Net's; a
    ClipHandle: the text encoders') at ``strength``.

    A LoRA of another family, a group whose change has another shape than
    its module's weight, a LoRA none of whose groups (for this part) names
    a module: each a :class:`StageError`; groups that name nothing beside
    groups that do: a warning (``warn``) with their count."""
    from sdflow_diffusion.models.patches import WeightPatch

    is_unet = not isinstance(handle.module, tuple)
    check_family(layout, shown, handle)
    tables = _tables(handle, is_unet)
    changes, missed, total = [], [], 0
    for group, roles in layout.groups.items():
        part, flat = part_of(group) or ("unet", None)  # a group of no known part is counted with the U-Net's
        if (part == "unet") != is_unet:
            continue  # the other handle's
        total += 1
        index, table = tables.get(part, (None, {}))
        module = None if flat is None else find_module(table, flat)
        if module is None or shape_2d(roles) is None:
            missed.append(group)
            continue
        root = handle.module if index is None else handle.module[index]
        _check_shape(root.get_submodule(module).weight, roles, group, module, shown)
        changes.append((index, module, make_delta(group, tensors)))
    if not changes:
        if total == 0:
            return None
        what = "U-Net" if is_unet else "text encoder"
        raise StageError(f"'{shown}' is not a LoRA for this model: none of its {total} {what} weights names a "
                         f"module of the model's {what} (e.g. {_examples(missed)})",
                         help=HELP + ", made for the model's family; these keys are in no layout sdflow knows")
    missed += [k for k in layout.unknown if is_unet]  # keys of no layout, counted once
    if missed:
        warn(f"{len(missed)} of {total + (len(layout.unknown) if is_unet else 0)} LoRA weights match nothing "
             f"in the model: {_examples(missed)}")
    return WeightPatch(shown, tuple(changes), strength)


def _tables(handle: Any, is_unet: bool) -> dict[str, tuple[int | None, dict[str, str]]]:
    """Part name -> (index of the text encoder or None, its module table)."""
    if is_unet:
        return {"unet": (None, unet_table(handle.module))}
    names = [encoder.subfolder for encoder in handle.family.architecture.text_encoders]
    tables = {name: (i, encoder_table(encoder)) for i, (name, encoder) in enumerate(zip(names, handle.module))}
    tables["first"] = tables[names[0]]
    return tables


def _check_shape(weight: Any, roles: dict[str, tuple[int, ...]], group: str, module: str, shown: str) -> None:
    mine, theirs = shape_2d(roles), (weight.shape[0], math.prod(weight.shape[1:]))
    if mine != theirs:
        raise StageError(f"'{shown}': '{group}' changes a weight of {mine[0]} x {mine[1]}, and the model's "
                         f"'{module}' is {' x '.join(map(str, weight.shape))} ({theirs[0]} x {theirs[1]})",
                         help="the LoRA was made for another model (of another size or family)")


def check_family(layout: Layout, shown: str, handle: Any) -> None:
    """Refuse a LoRA of another family than ``handle``'s, told by what it
    changes: the width of the U-Net's cross-attention (its text width: 768
    SD 1.x, 1024 SD 2.x, 2048 SDXL), of the first text encoder, and
    whether it changes a second text encoder (SDXL's)."""
    family = handle.family
    if isinstance(handle.module, tuple):
        names = [encoder.subfolder for encoder in family.architecture.text_encoders]
        if "text_encoder_2" not in names and any(_part(g) == "text_encoder_2" for g in layout.groups):
            raise _other_family(shown, "a model with two text encoders (SDXL)", family, "one text encoder")
        what, own = "text encoder width", handle.module[0].config.hidden_size
        width = _width(layout, "first", ("q_proj", "self_attn_to_q"))
    else:
        what, own = "cross-attention width", handle.module.config.cross_attention_dim
        width = _width(layout, "unet", ("attn2_to_k", "attn2_to_v"))
    if width is not None and width != own:
        raise _other_family(shown, f"{_families_of_width(width, what)} ({what} {width})", family, f"{what} {own}")


def _part(group: str) -> str | None:
    part = part_of(group)
    return None if part is None else part[0]


def _width(layout: Layout, part: str, endings: tuple[str, ...]) -> int | None:
    """The input width of the first group of ``part`` whose module name ends so."""
    for group, roles in layout.groups.items():
        found = part_of(group)
        if found and found[0] == part and found[1].endswith(endings) and shape_2d(roles):
            return shape_2d(roles)[1]
    return None


def _other_family(shown: str, looks: str, family: Any, own: str) -> StageError:
    model = family.architecture.description
    return StageError(f"'{shown}' is a LoRA for {looks}, and the model is {model} ('{family.name}', {own})",
                      help=f"use a LoRA made for {model}: a LoRA works only with the family it was trained on")


def _families_of_width(width: int, what: str) -> str:
    """The shipped families whose U-Net (or first text encoder) has that width, in words."""
    from sdflow_diffusion.models.architectures import architecture
    from sdflow_diffusion.models.families import family_dir, family_info, family_names, read_json

    found: dict[str, list[str]] = {}
    for name in family_names():
        kind = architecture(family_info(name)["kind"])
        if what.startswith("cross"):
            own = read_json(family_dir(name) / "unet" / "config.json").get("cross_attention_dim")
        else:
            own = read_json(family_dir(name) / kind.text_encoders[0].subfolder / "config.json").get("hidden_size")
        if own == width:
            found.setdefault(kind.description, []).append(name)
    return "; ".join(f"{kind} ({', '.join(names)})" for kind, names in found.items()) or "another family"
