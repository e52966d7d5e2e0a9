"""The model families sdflow ships configs for, and telling them apart.

A single-file checkpoint carries weights but no config, so each supported
family ships as package data: ``configs/<name>/`` is a diffusers-style
config tree (``model_index.json``, ``unet/config.json``, ...; no weights, no
tokenizer) plus ``family.json`` (kind, prediction type, description).  What a
kind is (its text encoders, its conditioning) is described once, in
:mod:`.architectures`; adding a family of a known kind is adding a folder.

:func:`detect_family` names the family of a state dict from its keys AND
shapes: every tensor a checkpoint of a family must hold, in the original
single-file layout, with its shape, is listed in the family's shape table
(``configs/<name>/shapes.json.gz``).  A file matches a family when it holds
all of them with those shapes; extra tensors (EMA copies, the last OpenCLIP
layer SD 2.x does not use, ``position_ids``) are ignored.  So a real SD 1.5
file and the tiny test model are told apart by shape alone, in milliseconds
and without torch.  The tables are derived from the configs
(:func:`shapes_from_configs`: the models built on the meta device, which
takes seconds with the imports it needs) and written by
``training/shape_tables.py``; a test checks that each still agrees with its
configs.
"""

from __future__ import annotations

import functools
import gzip
import json
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdflow.plugin import StageError
from sdflow_diffusion.models.architectures import architecture, kind_of_keys
from sdflow_diffusion.models.files import read_json

FAMILIES_DIR = Path(__file__).parent / "configs"
SHAPE_TABLE = "shapes.json.gz"
PARTS = {"model.diffusion_model.": "U-Net", "first_stage_model.": "VAE",
         "cond_stage_model.": "text encoder", "conditioner.embedders.": "text encoder"}


def family_names() -> list[str]:
    return sorted(p.name for p in FAMILIES_DIR.iterdir() if (p / "family.json").is_file())


def family_dir(name: str) -> Path:
    folder = FAMILIES_DIR / name
    if not (folder / "family.json").is_file():
        raise KeyError(f"no shipped family {name!r}; there are {family_names()}")
    return folder


@functools.cache
def family_info(name: str) -> dict[str, Any]:
    """``family.json`` of a shipped family."""
    return read_json(family_dir(name) / "family.json")


def family_handle(name: str, prediction: str | None = None, folder: Path | None = None,
                  scheduler_overrides: dict[str, Any] | None = None):
    """The :class:`~sdflow_diffusion.handles.Family` of a checkpoint loaded
    with family ``name``'s configs (or a diffusers ``folder``'s own), with its
    prediction type set to ``prediction`` when given."""
    from sdflow_diffusion.handles import Family

    info = family_info(name)
    folder = folder or family_dir(name)
    own_scheduler = folder / "scheduler" / "scheduler_config.json"
    scheduler = read_json(own_scheduler if own_scheduler.is_file() else
                          family_dir(name) / "scheduler" / "scheduler_config.json")
    vae = read_json(folder / "vae" / "config.json")
    prediction = prediction or scheduler.get("prediction_type") or info["prediction_type"]
    scheduler.update(scheduler_overrides or {}, prediction_type=prediction)
    return Family(name=name, kind=info["kind"], prediction_type=prediction, scheduler_config=scheduler,
                  vae_scaling_factor=float(vae.get("scaling_factor", info["vae_scaling_factor"])),
                  vae_shift_factor=vae.get("shift_factor"),
                  vae_scale_factor=2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1),
                  description=info.get("description", name), variant=info.get("variant"))


def build_components(folder: Path, kind: str, meta: bool = False) -> dict[str, Any]:
    """Fresh (randomly initialised) components of ``kind`` from a config
    tree; on the meta device when ``meta``, which costs no memory and little
    time."""
    import contextlib

    import diffusers
    import torch
    import transformers

    from sdflow_diffusion.models.tokenizer import clip_tokenizer

    folder = Path(folder)
    index = read_json(folder / "model_index.json")
    components: dict[str, Any] = {}
    with torch.device("meta") if meta else contextlib.nullcontext():
        components["unet"] = diffusers.UNet2DConditionModel.from_config(read_json(folder / "unet" / "config.json"))
        components["vae"] = diffusers.AutoencoderKL.from_config(read_json(folder / "vae" / "config.json"))
        for encoder in architecture(kind).text_encoders:
            name = encoder.subfolder
            config = transformers.CLIPTextConfig.from_json_file(str(folder / name / "config.json"))
            components[name] = getattr(transformers, index[name][1])(config).eval()
            components[name.replace("text_encoder", "tokenizer")] = clip_tokenizer(encoder.pad)
    if not meta:  # shapes are all a meta build is for
        scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json")
        components["scheduler"] = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    return components


@functools.cache
def expected_shapes(name: str) -> Mapping[str, tuple[int, ...]]:
    """Every tensor a single-file checkpoint of family ``name`` must hold,
    with its shape: the family's shape table, or where it has none (a folder
    added without running ``training/shape_tables.py``) what its configs
    give (read-only: cached)."""
    table = family_dir(name) / SHAPE_TABLE
    if not table.is_file():
        return types.MappingProxyType(shapes_from_configs(name))
    shapes = json.loads(gzip.decompress(table.read_bytes()))["shapes"]
    return types.MappingProxyType({key: tuple(shape) for key, shape in shapes.items()})


def shapes_from_configs(name: str) -> dict[str, tuple[int, ...]]:
    """Every tensor of family ``name`` in the original layout, with its
    shape, derived from its configs: its models built on the meta device."""
    from sdflow_diffusion.models.ldm_layout import to_original

    kind = family_info(name)["kind"]
    components = build_components(family_dir(name), kind, meta=True)
    return {key: tuple(value.shape) for key, value in to_original(components, kind).items()}


def shape_table(name: str) -> bytes:
    """The shape table of family ``name`` as it is shipped: gzip'd JSON,
    keys sorted, no timestamp, so that writing it again changes no byte."""
    shapes = shapes_from_configs(name)
    text = json.dumps({"family": name, "written_by": "training/shape_tables.py",
                       "shapes": {key: list(shapes[key]) for key in sorted(shapes)}}, indent=0)
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def detect_family(keys_and_shapes: Mapping[str, Any], prediction: str | None = None) -> str:
    """The shipped family whose tensors ``keys_and_shapes`` holds, by name
    (see :func:`detect`)."""
    return detect(keys_and_shapes, prediction)[0]


def detect(keys_and_shapes: Mapping[str, Any], prediction: str | None = None) -> tuple[str, dict | None]:
    """The shipped family whose tensors ``keys_and_shapes`` holds, and the
    U-Net config to load it with when the file's U-Net is not the family's
    own (None when it is).

    ``keys_and_shapes`` maps each key of the state dict to its shape (or to
    a tensor, meta tensors included).  When shapes cannot tell two families
    apart (SD 2.x 512-base and 768-v differ only in training), the one whose
    prediction type is ``prediction`` wins, else the one marked "preferred".
    A file whose VAE and text encoders are a family's but whose U-Net is
    deeper, shallower or narrower (a distilled model: SSD-1B, Vega, BK-SDM)
    is that family with a U-Net config read off its shapes
    (:mod:`.infer`), once every U-Net tensor is proved to have the shape
    that config gives.  Raises StageError naming what was found when
    nothing matches.
    """
    shapes = {key: tuple(getattr(value, "shape", value)) for key, value in keys_and_shapes.items()}
    if not any(key.startswith("model.diffusion_model.") for key in shapes):
        raise StageError(
            "not a Stable Diffusion checkpoint: no model.diffusion_model.* keys; "
            f"found {len(shapes)} keys like {_examples(shapes)}",
            help="load_checkpoint reads SD 1.x, SD 2.x and SDXL checkpoints in the original "
                 "single-file layout (as in ComfyUI's models/checkpoints) or a diffusers folder")
    kind = kind_of_keys(shapes)
    candidates = [n for n in family_names() if kind is None or family_info(n)["kind"] == kind]
    # Rule out, from one shape read off the configs, the families whose
    # models need not be built to compare every tensor (building costs ~1 s).
    candidates = [n for n in candidates if _plausible(n, shapes)] or candidates
    problems = {name: _differences(expected_shapes(name), shapes) for name in candidates}
    matches = _ranked([name for name in candidates if not problems[name]], prediction)
    if matches:
        return matches[0], None
    for name in _ranked([n for n in candidates if _only_unet_differs(problems[n])], prediction):
        config = _inferred_unet(name, shapes)
        if config is not None:
            return name, config
    raise _no_match(shapes, problems)


def _ranked(names: list[str], prediction: str | None) -> list[str]:
    """When shapes cannot tell families apart (SD 2.x 512-base and 768-v
    differ only in training), the one whose prediction type is
    ``prediction`` first, else the one marked "preferred"."""
    return sorted(names, key=lambda n: (family_info(n)["prediction_type"] != prediction,
                                        not family_info(n).get("preferred"), n))


def _only_unet_differs(differences: list[tuple[str, Any, Any]]) -> bool:
    return bool(differences) and all(key.startswith("model.diffusion_model.") for key, _, _ in differences)


def _inferred_unet(name: str, shapes: dict[str, tuple]) -> dict[str, Any] | None:
    """A U-Net config for family ``name`` read off ``shapes``, if every U-Net
    tensor of the file has the shape the config gives (and no more)."""
    import diffusers
    import torch

    from sdflow_diffusion.models.infer import infer_unet_config
    from sdflow_diffusion.models.ldm_layout import UNET, unet_to_original

    base = _unet_config(name)
    config = infer_unet_config(shapes, base)
    if config is None or (config["in_channels"], config["out_channels"]) != (
            base.get("in_channels", 4), base.get("out_channels", 4)):
        return None  # an inpainting or other U-Net of another input: not a distillation
    try:
        with torch.device("meta"):
            unet = diffusers.UNet2DConditionModel.from_config(config)
        expected = {UNET + k: tuple(v.shape) for k, v in unet_to_original(unet.state_dict(), unet.config).items()}
    except (ValueError, TypeError, KeyError, AssertionError):  # a structure diffusers cannot build
        return None
    found = {k: v for k, v in shapes.items() if k.startswith(UNET)}
    return config if found == expected else None


@functools.cache
def _unet_config(name: str) -> dict[str, Any]:
    """A shipped family's U-Net config (read-only: cached)."""
    return read_json(family_dir(name) / "unet" / "config.json")


def _plausible(name: str, shapes: dict[str, tuple]) -> bool:
    """Whether the U-Net's first convolution has the family's shape (or is
    absent, left for the full comparison to report)."""
    unet = _unet_config(name)
    kernel = unet.get("conv_in_kernel", 3)
    expected = (unet["block_out_channels"][0], unet.get("in_channels", 4), kernel, kernel)
    found = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    return found is None or found == expected


def _differences(expected: Mapping[str, tuple], shapes: dict[str, tuple]) -> list[tuple[str, Any, Any]]:
    """(key, expected shape, found shape or None) for each tensor that is off."""
    return [(key, shape, shapes.get(key)) for key, shape in expected.items() if shapes.get(key) != shape]


def _no_match(shapes: dict[str, tuple], problems: dict[str, list]) -> StageError:
    closest = min(problems, key=lambda name: (len(problems[name]) / len(expected_shapes(name)), name))
    differences = problems[closest]
    absent = sorted({f"{label} ({prefix}*)" for prefix, label in PARTS.items()
                     if any(key.startswith(prefix) for key, _, _ in differences)
                     and not any(key.startswith(prefix) for key in shapes)})
    if absent:
        detail = f"it has no {' and no '.join(absent)} weights; a checkpoint holds all three parts"
    else:
        shown = "; ".join(
            f"{key} is {list(found) if found is not None else 'missing'}, expected {list(shape)}"
            for key, shape, found in differences[:3])
        count = f"{len(differences)} tensor differs" if len(differences) == 1 else f"{len(differences)} tensors differ"
        detail = f"{count} from {closest} ({family_info(closest)['description']}), e.g. {shown}"
    supported = ", ".join(f"{n} ({family_info(n)['description']})"
                          for n in family_names() if not family_info(n).get("tiny"))
    return StageError(
        f"unsupported Stable Diffusion checkpoint: {detail}",
        help=f"load_checkpoint knows {supported}; depth, instruct-pix2pix and "
             "UNet-only files are not supported yet")


def _examples(shapes: dict[str, tuple], count: int = 3) -> str:
    keys = sorted(shapes)[:count]
    return ", ".join(repr(k) for k in keys) + (", ..." if len(shapes) > count else "") if keys else "(none)"
