"""A diffusers-format folder (``model_index.json``), loaded as it is.

Its weights and configs are its own; only a missing tokenizer comes from
the shipped CLIP vocabulary.  Its family is the shipped one whose tensors
its configs describe (the same test a single file passes), so that every
stage downstream sees a known kind; its scheduler config is its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdflow.plugin import StageError
from sdflow_diffusion.models.architectures import architecture, kind_of_folder
from sdflow_diffusion.models.common import quiet, vae_dtype


def load_folder(folder: Path, prediction: str, dtype: Any) -> tuple[dict[str, Any], Any]:
    """The components and :class:`Family` of the diffusers folder ``folder``."""
    import diffusers
    import transformers

    from sdflow_diffusion.models.families import family_handle, read_json
    from sdflow_diffusion.models.tokenizer import clip_tokenizer

    if not (folder / "model_index.json").is_file():
        raise StageError(f"'{folder}' is a folder but not a diffusers model: it has no model_index.json",
                         help="name a .safetensors file, or a folder saved by diffusers' save_pretrained")
    index = read_json(folder / "model_index.json")
    kind = _kind(folder, index)
    chosen = None if prediction == "auto" else prediction
    name = _nearest_family(folder, kind, chosen)
    local = dict(local_files_only=True)
    vae_type = vae_dtype(read_json(folder / "vae" / "config.json"), dtype)
    with quiet():
        components = {
            "unet": diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype,
                                                                   **local),
            "vae": diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=vae_type, **local),
        }
        for text_encoder in architecture(kind).text_encoders:
            encoder, pad = text_encoder.subfolder, text_encoder.pad
            model_class = getattr(transformers, index[encoder][1])
            components[encoder] = model_class.from_pretrained(folder, subfolder=encoder, **_dtype_kwarg(dtype),
                                                              **local)
            tokenizer = encoder.replace("text_encoder", "tokenizer")
            has_own = (folder / tokenizer).is_dir() and any((folder / tokenizer).iterdir())
            components[tokenizer] = (transformers.CLIPTokenizer.from_pretrained(folder, subfolder=tokenizer, **local)
                                     if has_own else clip_tokenizer(pad))
    return components, family_handle(name, chosen, folder=folder)


def _nearest_family(folder: Path, kind: str, prediction: str | None) -> str:
    """The shipped family of ``kind`` whose U-Net config the folder's matches.

    A folder brings its own configs, so nothing is converted and its shapes
    need no test; the family only names it and gives defaults.  Comparing two
    small JSON files is much cheaper than building the models to compare.
    """
    from sdflow_diffusion.models.families import family_dir, family_info, family_names, read_json

    own = read_json(folder / "unet" / "config.json")
    keys = ("block_out_channels", "cross_attention_dim", "in_channels", "layers_per_block", "sample_size")
    names = [n for n in family_names() if family_info(n)["kind"] == kind]

    def score(name: str) -> tuple:
        theirs = read_json(family_dir(name) / "unet" / "config.json")
        same = sum(own.get(k) == theirs.get(k) for k in keys)
        return (same, family_info(name)["prediction_type"] == prediction, bool(family_info(name).get("preferred")))

    return max(names, key=score)


def _kind(folder: Path, index: dict[str, Any]) -> str:
    """The kind of the folder, from its text encoders: which subfolders
    (SDXL has two) and what the first one is (SD 2.x's OpenCLIP uses GELU,
    SD 1.x's OpenAI CLIP quick GELU)."""
    encoders = {name for name, entry in index.items() if name.startswith("text_encoder") and entry
                and entry[0] is not None}

    def activation(subfolder: str) -> str | None:
        config_file = folder / subfolder / "config.json"
        return json.loads(config_file.read_text(encoding="utf-8")).get("hidden_act") if config_file.is_file() else None

    kind = kind_of_folder(encoders, activation)
    if kind is None:
        raise StageError(f"'{folder}' is not a Stable Diffusion model sdflow knows: its text encoders are "
                         f"{sorted(encoders)}",
                         help="load_checkpoint reads SD 1.x, SD 2.x and SDXL diffusers folders")
    return kind


def _dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """transformers 5 renamed ``torch_dtype`` to ``dtype`` (and warns on the old name)."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
