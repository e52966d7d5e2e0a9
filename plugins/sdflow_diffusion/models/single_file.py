"""A single-file checkpoint: read it safely, tell its family, convert it.

The header of a ``.safetensors`` (keys, shapes, metadata) is read first: it
is enough to detect the family and to refuse a broken or unknown file before
reading gigabytes.  Then the file is read once into a state dict, and
diffusers' own single-file conversion builds each component from it,
configured by the family's shipped config folder (``local_files_only``:
the shipped folder is complete, nothing is fetched).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdflow.plugin import StageError
from sdflow_diffusion.models.architectures import architecture
from sdflow_diffusion.models.common import PICKLE_SUFFIXES, quiet, vae_dtype
from sdflow_diffusion.models.files import BROKEN_HELP, header_shapes, regular_file, safetensors_header
from sdflow_diffusion.settings import DiffusionSettings

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
OTHER_HELP = ("load_checkpoint reads .safetensors files and diffusers folders "
              "(and .ckpt/.pt pickles with --allow-pickle)")


def load_single_file(path: Path, settings: DiffusionSettings, prediction: str, dtype: Any) -> tuple[dict[str, Any], Any]:
    """The components and :class:`Family` of the checkpoint file ``path``."""
    from sdflow_diffusion.models.architectures import kind_of_keys
    from sdflow_diffusion.models.families import detect, family_handle

    header = check_single_file(path, settings)
    if header is None:
        state, metadata = _read_pickle(path), {}
        shapes = {key: tuple(value.shape) for key, value in state.items()}
    else:
        state, (shapes, metadata) = None, header_shapes(header)
    chosen = resolve_prediction(prediction, shapes, metadata, path, kind_of_keys(shapes))
    name, unet_config = detect(shapes, chosen)
    if state is None:
        state = _read_safetensors(path)
    scheduler = {"rescale_betas_zero_snr": True} if "ztsnr" in shapes else {}
    family = family_handle(name, chosen, scheduler_overrides=scheduler)
    return convert(state, name, dtype, unet_config), family


def check_single_file(path: Path, settings: DiffusionSettings) -> dict[str, Any] | None:
    """What the checkpoint file ``path`` is, found out cheaply before it is
    hashed or loaded: the header of a safetensors file, checked against the
    file's size; None for a pickle, which is refused unless --allow-pickle.
    Anything else is a :class:`StageError` that names the file."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not settings.allow_pickle:
            raise StageError(
                f"'{path.name}' is a pickle checkpoint ({path.suffix}), and loading a pickle can run any code "
                "hidden in it, so sdflow does not load one unless asked",
                help="use a .safetensors version of the model, or pass --allow-pickle if you trust this "
                     "file (it is then loaded with torch.load(weights_only=True), tensors only)")
        regular_file(path, path.name)
        return None
    known = path.suffix.lower() in SAFETENSORS_SUFFIXES
    return safetensors_header(path, path.name, BROKEN_HELP if known else OTHER_HELP)


def resolve_prediction(prediction: str, keys: Any, metadata: dict[str, str], path: Path,
                       kind: str | None) -> str | None:
    """What the model predicts, or None to let the family decide.

    In order: the recipe's ``prediction`` unless "auto"; a ``v_pred`` key
    (ComfyUI saves one in v-prediction checkpoints); the ModelSpec metadata
    (``modelspec.prediction_type``, or an architecture ending in ``-v``).
    SD 2.x files rarely say: their name decides, the way Stability named
    them: "512", "base" or "inpaint" in it (``512-base-ema``, ``v2-1_512-ema-pruned``)
    means the epsilon 512-base model, anything else the 768 v-prediction
    model (``768-v-ema``, ``v2-1_768-ema-pruned``) and most SD 2.x
    fine-tunes.  SD 1.x and SDXL are epsilon unless the file says otherwise.
    """
    if prediction != "auto":
        return prediction
    if "v_pred" in keys:
        return "v_prediction"
    stated = metadata.get("modelspec.prediction_type", "").strip().lower()
    if stated in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if stated in ("epsilon", "eps"):
        return "epsilon"
    if metadata.get("modelspec.architecture", "").endswith("-v"):
        return "v_prediction"
    if kind is not None and architecture(kind).prediction_by_name:
        name = path.name.lower()
        return "epsilon" if re.search(r"512|base|inpaint", name) else "v_prediction"
    return None


def convert(state: dict[str, Any], name: str, dtype: Any, unet_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Components of family ``name`` from an original-layout state dict,
    converted by diffusers (the same functions its pipelines'
    ``from_single_file`` uses), in ``dtype``; with ``unet_config`` (a
    distilled U-Net's, read off its shapes) the U-Net is built from it and
    its tensors renamed into place instead."""
    import diffusers
    import transformers
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

    from sdflow_diffusion.models.families import family_dir, family_info, read_json
    from sdflow_diffusion.models.tokenizer import clip_tokenizer

    folder = family_dir(name)
    index = read_json(folder / "model_index.json")
    common = dict(config=str(folder), local_files_only=True)
    vae_config = read_json(folder / "vae" / "config.json")
    with quiet(), _no_random_init():
        components = {
            "unet": (_unet_from_config(state, unet_config, dtype) if unet_config is not None else
                     diffusers.UNet2DConditionModel.from_single_file(state, subfolder="unet", torch_dtype=dtype,
                                                                     **common)),
            "vae": diffusers.AutoencoderKL.from_single_file(state, subfolder="vae",
                                                            torch_dtype=vae_dtype(vae_config, dtype), **common),
        }
        for text_encoder in architecture(family_info(name)["kind"]).text_encoders:
            encoder = text_encoder.subfolder
            model_class = getattr(transformers, index[encoder][1])
            components[encoder] = create_diffusers_clip_model_from_ldm(
                model_class, state, subfolder=encoder, torch_dtype=dtype, **common)
            components[encoder.replace("text_encoder", "tokenizer")] = clip_tokenizer(text_encoder.pad)
    return components


def _unet_from_config(state: dict[str, Any], config: dict[str, Any], dtype: Any):
    """A U-Net built on the meta device from ``config`` and given the file's
    tensors (every one: ``strict``), in ``dtype``."""
    import diffusers
    import torch

    from sdflow_diffusion.models.infer import unet_from_original

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config(config)
    weights = {key: value.to(dtype) for key, value in unet_from_original(state, unet.config).items()}
    unet.load_state_dict(weights, strict=True, assign=True)
    return unet.eval()


@contextlib.contextmanager
def _no_random_init() -> Iterator[None]:
    """Skip the random initialisation of the models about to be loaded.

    Without ``accelerate``, diffusers builds each model with random weights
    before copying the file's in (11 s of 14 for SD 1.5 on two cores).  It
    is safe to skip here: :func:`detect_family` has proved that the file
    holds every tensor of the family with its shape, and the tests prove
    that the conversion fills every parameter.
    """
    from diffusers.models.modeling_utils import no_init_weights as diffusers_no_init

    try:
        from transformers.initialization import no_init_weights as transformers_no_init
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights as transformers_no_init
    with diffusers_no_init(), transformers_no_init():
        yield


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:
        raise _unreadable(path, err) from None


def _unreadable(path: Path, err: Exception) -> StageError:
    size = path.stat().st_size if path.exists() else 0
    known = path.suffix.lower() in SAFETENSORS_SUFFIXES
    return StageError(f"cannot read '{path.name}' ({size} bytes): not a valid safetensors file ({err})",
                      help=BROKEN_HELP if known else OTHER_HELP)


def _read_pickle(path: Path) -> dict[str, Any]:
    """A pickle checkpoint (allowed: see :func:`check_single_file`), only its tensors."""
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise StageError(f"cannot load the pickle '{path.name}' as plain tensors "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
                         help="it is damaged, or holds objects other than tensors; convert it to "
                              ".safetensors with a tool you trust") from None
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # training checkpoints nest the weights
    if not isinstance(state, dict):
        raise StageError(f"'{path.name}' holds a {type(state).__name__}, not a state dict of tensors")
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def vae_from_single_file(path: Path, layout: str, family: str, dtype: Any):
    """The VAE alone in the file ``path`` (checked: its shapes are
    ``family``'s), its keys in the "original" layout (with or without the
    checkpoint's ``first_stage_model.`` prefix, converted by diffusers) or
    in diffusers' own."""
    import diffusers
    import torch

    from sdflow_diffusion.models.families import family_dir, read_json
    from sdflow_diffusion.models.ldm_layout import VAE

    state = _read_safetensors(path)
    if any(key.startswith(VAE) for key in state):  # a VAE saved with its checkpoint's prefix
        state = {key[len(VAE):]: value for key, value in state.items() if key.startswith(VAE)}
    if layout == "original":
        with quiet(), _no_random_init():
            return diffusers.AutoencoderKL.from_single_file({VAE + k: v for k, v in state.items()}, subfolder="vae",
                                                            config=str(family_dir(family)), torch_dtype=dtype,
                                                            local_files_only=True)
    with torch.device("meta"):
        vae = diffusers.AutoencoderKL.from_config(read_json(family_dir(family) / "vae" / "config.json"))
    vae.load_state_dict({key: value.to(dtype) for key, value in state.items()}, strict=True, assign=True)
    return vae
