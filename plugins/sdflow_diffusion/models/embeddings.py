"""Textual-inversion embeddings: ``embedding:NAME`` in a prompt, as a file.

A name is looked up as ComfyUI looks it up: ``models/embeddings/NAME``, or
with ``.safetensors``, ``.pt`` or ``.bin`` added, in every models folder
(:func:`sdflow_diffusion.models.lookup.find_model`).  The layouts found in
the wild:

* one tensor [vectors, width] (A1111's ``.safetensors``: ``emb_params``;
  diffusers' ``learned_embeds.bin``: ``{"<token>": [width]}``);
* A1111's ``.pt``: ``{"string_to_param": {"*": [vectors, width]}, ...}``
  (a pickle: read only with ``--allow-pickle``, and then ``weights_only``);
* SDXL's pair: ``clip_l`` [vectors, 768] and ``clip_g`` [vectors, 1280].

Each text encoder takes the vectors stored under its own name (``clip_l``,
``clip_g``, ``clip_h``) when the file has them, else the file's single
tensor, as ComfyUI picks them.  Their width must be the encoder's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from sdflow.plugin import StageError
from sdflow_diffusion.models.common import PICKLE_SUFFIXES
from sdflow_diffusion.models.files import header_shapes, load_weights, regular_file, safetensors_header
from sdflow_diffusion.models.lookup import name_hint

SUFFIXES = (".safetensors", ".pt", ".bin")
HELP = ("an embedding is trained for one kind of model: width 768 is SD 1.x, 1024 SD 2.x; "
        "an SDXL embedding holds clip_l (768) and clip_g (1280)")


@dataclass(frozen=True)
class Embedding:
    """The tensors of one embedding file, float32 on the CPU, by key
    (nested A1111 keys joined with dots: ``string_to_param.*``)."""

    name: str
    path: Path
    tensors: dict[str, Any]

    def vectors(self, encoder_key: str, width: int, family: str):
        """[vectors, width] for the text encoder ``encoder_key`` of a ``family`` model."""
        tensors = self.tensors
        a1111 = [v for k, v in tensors.items() if k.startswith("string_to_param.")]
        if encoder_key in tensors:
            found = tensors[encoder_key]
        elif a1111 or "emb_params" in tensors:
            found = a1111[0] if a1111 else tensors["emb_params"]
        else:
            found = next(iter(tensors.values())) if len(tensors) == 1 else None
        if found is None:
            raise StageError(f"embedding '{self.name}' ({self.path.name}) has no vectors for the {encoder_key} text "
                             f"encoder of the {family} model; it holds {', '.join(sorted(tensors)) or 'no tensors'}",
                             help=HELP)
        vectors = found.reshape(-1, found.shape[-1]) if found.ndim else found.reshape(1, 1)
        if vectors.shape[-1] != width:
            raise StageError(f"embedding '{self.name}' ({self.path.name}) has vectors of width {vectors.shape[-1]}, "
                             f"but the {family} model's {encoder_key} text encoder takes {width}", help=HELP)
        return vectors


def encoder_key(layout: str, pooled: bool) -> str:
    """The name an embedding file gives a text encoder's vectors: OpenAI's
    CLIP ViT-L is ``clip_l``; OpenCLIP's is ``clip_g`` in SDXL (the one that
    gives the pooled embedding), ``clip_h`` in SD 2.x."""
    if layout == "clip":
        return "clip_l"
    return "clip_g" if pooled else "clip_h"


def find_embedding(name: str, settings: Any, recipe_dir: Path | None, column: int) -> Path:
    """The file of ``embedding:name`` (``column``: where the prompt names it).
    A name is confined to the embeddings folders, as ComfyUI confines it."""
    from sdflow_diffusion.models.lookup import model_folders

    where = f"at column {column} of the prompt"
    if PurePath(name).is_absolute() or ".." in PurePath(name).parts:
        raise StageError(f"embedding '{name}' {where} is a path: an embedding is named inside models/embeddings",
                         help="write embedding:NAME with NAME a file in an embeddings folder")
    candidates = [name] + [name + s for s in SUFFIXES if not name.lower().endswith(s)]
    folders = model_folders("embeddings", settings, recipe_dir)
    for folder in folders:
        for candidate in candidates:
            if (folder / candidate).is_file():
                return folder / candidate
    there = sorted({str(p.relative_to(f).with_suffix("")) for f in folders if f.is_dir()
                    for p in f.rglob("*") if p.suffix.lower() in SUFFIXES})
    hint = name_hint(name, {stem: f"embedding:{stem}" for stem in there}, there,
                     f"no embeddings were found there; put {name}.safetensors in an embeddings folder")
    looked = ", ".join(map(str, folders)) or "no folders: pass --models-dir DIR or set SDFLOW_MODELS"
    raise StageError(f"embedding '{name}' {where} not found", help=f"{hint} (looked in: {looked})")


def inspect_embedding(path: Path, allow_pickle: bool, shown: str) -> None:
    """What can be checked before the file is hashed or read: a regular
    file; a pickle only when allowed; a sound safetensors header."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise StageError(f"embedding '{shown}' is a pickle ({path.suffix}), and loading a pickle can run any "
                             "code hidden in it, so sdflow does not load one unless asked",
                             help="use a .safetensors version of the embedding, or pass --allow-pickle if you trust it")
        regular_file(path, shown)
        return
    header_shapes(safetensors_header(path, shown))


def read_embedding(name: str, path: Path, allow_pickle: bool) -> Embedding:
    import torch

    inspect_embedding(path, allow_pickle, name)
    state = load_weights(path, f"embedding '{name}' ({path.name})", HELP)
    if isinstance(state, torch.Tensor):
        state = {"": state}
    if not isinstance(state, dict):
        raise StageError(f"embedding '{name}' ({path.name}) holds a {type(state).__name__}, not tensors", help=HELP)
    return Embedding(name, path, _tensors(state))


def _tensors(state: dict, prefix: str = "") -> dict[str, Any]:
    import torch

    found = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            found[prefix + str(key)] = value.float()
        elif isinstance(value, dict):
            found.update(_tensors(value, f"{prefix}{key}."))
    return found
