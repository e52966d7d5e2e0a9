"""A diffusers-format folder (``model_index.json``), loaded as it is.

Its weights and configs are its own; only a missing tokenizer comes from
the shipped CLIP vocabulary.  Its family is the shipped one whose tensors
its configs describe (the same test a single file passes), so that every
stage downstream sees a known kind; its scheduler config is its own.  It
is loaded once :func:`~.diffusers_layout.inspect_folder` has checked it,
each component from the weights that found (safetensors whenever it has
them), so that the libraries never choose a file of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdflow_diffusion.models.architectures import architecture
from sdflow_diffusion.models.common import quiet, vae_dtype
from sdflow_diffusion.models.diffusers_layout import DiffusersFolder


def load_folder(model: DiffusersFolder, prediction: str, dtype: Any) -> tuple[dict[str, Any], Any]:
    """The components and :class:`Family` of the checked diffusers folder ``model``."""
    import diffusers
    import transformers

    from sdflow_diffusion.models.families import family_handle, read_json
    from sdflow_diffusion.models.tokenizer import clip_tokenizer

    folder, kind = model.path, model.kind
    chosen = None if prediction == "auto" else prediction
    name = _nearest_family(folder, kind, chosen)

    def options(component: str) -> dict[str, Any]:
        return dict(subfolder=component, use_safetensors=model.safetensors[component], local_files_only=True)

    vae_type = vae_dtype(read_json(folder / "vae" / "config.json"), dtype)
    with quiet():
        components = {
            "unet": diffusers.UNet2DConditionModel.from_pretrained(folder, torch_dtype=dtype, **options("unet")),
            "vae": diffusers.AutoencoderKL.from_pretrained(folder, torch_dtype=vae_type, **options("vae")),
        }
        for text_encoder in architecture(kind).text_encoders:
            encoder, pad = text_encoder.subfolder, text_encoder.pad
            model_class = getattr(transformers, model.index[encoder][1])  # a CLIP class: inspect_folder checked
            components[encoder] = model_class.from_pretrained(folder, **_dtype_kwarg(dtype), **options(encoder))
            tokenizer = encoder.replace("text_encoder", "tokenizer")
            components[tokenizer] = (transformers.CLIPTokenizer.from_pretrained(
                folder, subfolder=tokenizer, local_files_only=True) if tokenizer in model.tokenizers
                else clip_tokenizer(pad))
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


def _dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """transformers 5 renamed ``torch_dtype`` to ``dtype`` (and warns on the old name)."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def vae_from_folder(folder: Path, dtype: Any):
    """The diffusers VAE in ``folder`` (its config.json and
    diffusion_pytorch_model.safetensors, checked by
    :func:`~sdflow_diffusion.models.load.inspect_vae`), as it is."""
    import diffusers

    with quiet():
        return diffusers.AutoencoderKL.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True,
                                                       local_files_only=True)
