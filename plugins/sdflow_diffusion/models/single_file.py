"""A single-file checkpoint: read it safely, tell its family, convert it.

The header of a ``.safetensors`` (keys, shapes, metadata) is read first: it
is enough to detect the family and to refuse a broken or unknown file before
reading gigabytes.  Then each component is built from the family's shipped
config with its parameters on the meta device (no memory), and the file's
tensors are read one at a time into their place, in the run's dtype (or,
narrower, the file's: :mod:`.storage`) and on its device
(:mod:`.tensor_file`): the weights exist once, never as a state
dict beside the model, so a load's peak memory is the model's own size and
one tensor more.  Where each tensor is in the file is the inverse of
:mod:`.ldm_layout`'s layout; the result is what diffusers' own single-file
conversion gives, bit for bit (tests/test_loading_memory.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sdflow.plugin import StageError
from sdflow_diffusion.models.architectures import architecture
from sdflow_diffusion.models.common import PICKLE_SUFFIXES, parameters_on_meta, quiet, vae_dtype
from sdflow_diffusion.models.files import BROKEN_HELP, regular_file, safetensors_header
from sdflow_diffusion.models.tensor_file import TensorDict, TensorFile
from sdflow_diffusion.settings import DiffusionSettings

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
OTHER_HELP = ("load_checkpoint reads .safetensors files and diffusers folders "
              "(and .ckpt/.pt pickles with --allow-pickle)")


def load_single_file(path: Path, settings: DiffusionSettings, prediction: str, dtype: Any,
                     device: Any = "cpu", keep_file_dtype: bool = False) -> tuple[dict[str, Any], Any]:
    """The components (on ``device``, in ``dtype``) and :class:`Family` of
    the checkpoint file ``path``; with ``keep_file_dtype``, the U-Net's and
    the text encoders' weights stay as the file stores them where that is
    narrower, widened as they run (:mod:`.storage`)."""
    from sdflow_diffusion.models.architectures import kind_of_keys
    from sdflow_diffusion.models.families import detect, family_handle

    header = check_single_file(path, settings)
    if header is None:
        tensors, metadata = TensorDict(_read_pickle(path), path.name), {}
    else:
        tensors, metadata = TensorFile(path, header), dict(header.get("__metadata__") or {})
    shapes = tensors.shapes
    chosen = resolve_prediction(prediction, shapes, metadata, path, kind_of_keys(shapes))
    name, unet_config = detect(shapes, chosen)
    scheduler = {"rescale_betas_zero_snr": True} if "ztsnr" in shapes else {}
    family = family_handle(name, chosen, scheduler_overrides=scheduler)
    with tensors:
        return convert(tensors, name, dtype, device, unet_config, keep_file_dtype), family


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


def convert(tensors: TensorFile | TensorDict, name: str, dtype: Any, device: Any = "cpu",
            unet_config: dict[str, Any] | None = None, keep_file_dtype: bool = False) -> dict[str, Any]:
    """Components of family ``name`` from the original-layout ``tensors``,
    in ``dtype`` on ``device``; with ``unet_config`` (a distilled U-Net's,
    read off its shapes) the U-Net is built from it instead of the
    family's; ``keep_file_dtype``: see :func:`load_single_file` (never the
    VAE's, see :mod:`.storage`)."""
    import diffusers
    import transformers

    from sdflow_diffusion.models.families import family_dir, family_info, read_json
    from sdflow_diffusion.models.tokenizer import clip_tokenizer

    folder = family_dir(name)
    kind = family_info(name)["kind"]
    index = read_json(folder / "model_index.json")
    configs = {"unet": unet_config or read_json(folder / "unet" / "config.json"),
               "vae": read_json(folder / "vae" / "config.json")}
    with quiet():
        with parameters_on_meta():
            models = {"unet": diffusers.UNet2DConditionModel.from_config(configs["unet"]),
                      "vae": diffusers.AutoencoderKL.from_config(configs["vae"])}
        components = {"unet": fill(models["unet"], "unet", tensors, dtype, device, configs["unet"],
                                   keep_file_dtype=keep_file_dtype),
                      "vae": fill(models["vae"], "vae", tensors, vae_dtype(configs["vae"], dtype), device,
                                  configs["vae"])}
        for text_encoder in architecture(kind).text_encoders:
            encoder = text_encoder.subfolder
            model_class = getattr(transformers, index[encoder][1])
            config = model_class.config_class.from_pretrained(str(folder), subfolder=encoder, local_files_only=True)
            with parameters_on_meta():
                model = model_class(config)
            components[encoder] = fill(model, encoder, tensors, dtype, device, config.to_dict(), kind,
                                       keep_file_dtype=keep_file_dtype)
            components[encoder.replace("text_encoder", "tokenizer")] = clip_tokenizer(text_encoder.pad)
    return components


def fill(model: Any, part: str, tensors: TensorFile | TensorDict, dtype: Any, device: Any, config: Any,
         kind: str | None = None, prefix: str | None = None, layout: str = "original",
         keep_file_dtype: bool = False):
    """``model`` (component ``part``, its parameters on the meta device)
    given each of its tensors from ``tensors``, read one at a time, in
    ``dtype`` on ``device``, or with ``keep_file_dtype`` each parameter in
    the file's dtype where that is narrower, the model then widening them as
    it runs (:mod:`.storage`; see :func:`.ldm_layout.sources` for the other
    arguments)."""
    from sdflow_diffusion.models.ldm_layout import sources
    from sdflow_diffusion.models.storage import compute_in, kept_dtype

    expected = model.state_dict()  # meta tensors: names and shapes only
    plan = sources(part, expected, config, kind, prefix, layout)
    missing = sorted(source.key for source in plan.values() if source.key not in tensors.shapes)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise StageError(f"'{tensors.name}' has no tensor '{missing[0]}'{more}, which the {part} needs",
                         help=BROKEN_HELP)
    narrow = {name for name, _ in model.named_parameters()} if keep_file_dtype else set()  # buffers: dtype
    weights = {}
    for key, source in sorted(plan.items(), key=lambda item: tensors.position(item[1].key)):
        stored = tensors.stored_dtype(source.key)
        kept = kept_dtype(stored, dtype) if key in narrow and stored is not None else dtype
        value = tensors.tensor(source.key, kept, device, source.rows)
        if source.transposed:
            value = value.T.contiguous()
        shape = expected[key].shape
        if value.shape != shape:
            if [n for n in value.shape if n != 1] != [n for n in shape if n != 1]:
                raise StageError(f"tensor '{source.key}' of '{tensors.name}' has shape {list(value.shape)}, where "
                                 f"the {part} needs {list(shape)}", help=BROKEN_HELP)
            value = value.view(shape)  # 1x1 convolution <-> linear layer: unit dimensions only
        weights[key] = value
    model.load_state_dict(weights, strict=True, assign=True)
    return (compute_in(model, dtype) if narrow else model).eval()


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


def vae_from_single_file(path: Path, layout: str, family: str, dtype: Any, device: Any = "cpu"):
    """The VAE alone in the file ``path`` (checked: its shapes are
    ``family``'s), its keys in the "original" layout (with or without the
    checkpoint's ``first_stage_model.`` prefix) or in diffusers' own, read
    tensor by tensor as a checkpoint is."""
    import diffusers

    from sdflow_diffusion.models.families import family_dir, read_json
    from sdflow_diffusion.models.ldm_layout import VAE

    tensors = TensorFile(path, safetensors_header(path, path.name))
    prefix = VAE if any(key.startswith(VAE) for key in tensors.shapes) else ""
    config = read_json(family_dir(family) / "vae" / "config.json")
    with quiet(), parameters_on_meta():
        vae = diffusers.AutoencoderKL.from_config(config)
    with tensors:
        return fill(vae, "vae", tensors, dtype, device, config, prefix=prefix, layout=layout)
