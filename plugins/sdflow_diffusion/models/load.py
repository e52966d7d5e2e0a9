"""Loading a Stable Diffusion checkpoint, offline, into the run's device and dtype.

Two layouts load:

* a single file in the original Stable Diffusion key layout (what ComfyUI's
  ``models/checkpoints`` holds), by :mod:`.single_file`: its header is read
  first, so that an unknown or broken file is refused before gigabytes are
  read; its family is detected from keys and shapes (shipped shape tables);
  then each component is built from the family's shipped configs and its
  tensors read into it one at a time, in the run's dtype, on its device.
  ``.safetensors`` only, unless ``--allow-pickle``;
* a diffusers folder (``model_index.json``), by :mod:`.diffusers_folder`,
  loaded as it is, with the shipped CLIP tokenizer where it has none; its
  weights safetensors, or pickles with ``--allow-pickle``.

What a path is (a file, a diffusers folder, neither) is found out first,
cheaply, by :func:`inspect_checkpoint`: a run identifies its checkpoint by
what that finds before anything is hashed, and loading starts with it.

Nothing is downloaded: every diffusers/transformers call is local-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdflow.plugin import StageError
from sdflow_diffusion.models.common import quiet, vae_dtype
from sdflow_diffusion.models.diffusers_layout import DiffusersFolder, inspect_folder
from sdflow_diffusion.models.files import file_or_folder
from sdflow_diffusion.settings import DiffusionSettings

PREDICTIONS = ("auto", "epsilon", "v_prediction")


def inspect_checkpoint(path: Path, settings: DiffusionSettings) -> Path | DiffusersFolder:
    """The checkpoint at ``path``, checked without reading its weights: the
    path of a single file (its safetensors header sound, or a pickle that
    is allowed), or the :class:`DiffusersFolder` a folder holds, which
    names the files a load reads.  A FIFO, a device, a folder that is not
    a model, a broken file: a :class:`StageError` that says which and why."""
    from sdflow_diffusion.models.single_file import check_single_file

    path = Path(path)
    if file_or_folder(path) == "folder":
        return inspect_folder(path, settings.allow_pickle)
    check_single_file(path, settings)
    return path


def load_checkpoint(path: Path, settings: DiffusionSettings | None = None, prediction: str = "auto"):
    """Load the checkpoint at ``path``: a ``(ModelHandle, ClipHandle,
    VaeHandle)`` on the run's device, in its dtype.

    ``prediction`` overrides what the model predicts ("epsilon" or
    "v_prediction"); "auto" reads it from the file (see
    :func:`sdflow_diffusion.models.single_file.resolve_prediction`).  Every
    problem a user can fix is a :class:`StageError` that says what was
    found and what to do.
    """
    from sdflow_diffusion.models.device import resolve_device
    from sdflow_diffusion.models.run_options import storage_device
    from sdflow_diffusion.models.storage import keeps_file_dtype

    if prediction not in PREDICTIONS:
        raise StageError(f"prediction must be one of {', '.join(PREDICTIONS)}, not '{prediction}'")
    settings = settings or DiffusionSettings()
    checked = inspect_checkpoint(path, settings)
    device, dtype = resolve_device(settings)
    place = storage_device(settings, device)  # the CPU with --lowvram
    keep = keeps_file_dtype(settings, device)  # an fp16 file's weights stay fp16 in an fp32 run
    if isinstance(checked, DiffusersFolder):
        from sdflow_diffusion.models.diffusers_folder import load_folder

        components, family = load_folder(checked, prediction, dtype)
    else:
        from sdflow_diffusion.models.single_file import load_single_file

        components, family = load_single_file(checked, settings, prediction, dtype, place, keep)
    return _handles(components, family, device, dtype, settings)


def _handles(components: dict[str, Any], family: Any, device: Any, dtype: Any, settings: Any):
    """The handles of the run's ``device``, their modules kept where the
    settings say (the device, or the CPU with --lowvram) and made ready as
    they ask (--channels-last, --compile, --vae-tiling)."""
    from sdflow_diffusion.handles import ClipHandle, ModelHandle, VaeHandle
    from sdflow_diffusion.models.run_options import prepare_unet, prepare_vae, storage_device
    from sdflow_diffusion.models.storage import runs_in

    place = storage_device(settings, device)
    vae_type = vae_dtype(components["vae"].config, dtype)
    names = [n for n in ("text_encoder", "text_encoder_2") if n in components]

    def placed(module: Any, dtype: Any) -> Any:  # the weights are in their dtype already: this only moves them
        kept = any(runs_in(part) is not None for part in module.modules())  # narrow weights stay narrow
        return module.to(device=place) if kept else module.to(device=place, dtype=dtype)

    with quiet():
        unet = placed(components["unet"], dtype).eval()
        vae = placed(components["vae"], vae_type).eval()
        encoders = tuple(placed(components[n], dtype).eval() for n in names)
    unet, vae = prepare_unet(unet, settings, device), prepare_vae(vae, settings)
    tokenizers = tuple(components[n.replace("text_encoder", "tokenizer")] for n in names)
    return (ModelHandle(unet, family, device, dtype),
            ClipHandle(tokenizers, encoders, family, device, dtype),
            VaeHandle(vae, family, device, vae_type))


# -- a VAE alone (load_vae) ----------------------------------------------------------------------

VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"
VAE_HELP = ("a VAE is a .safetensors file in the original layout (encoder.*, decoder.*, quant_conv.*, "
            "as vae-ft-mse-840000-ema-pruned.safetensors) or in diffusers' layout, or a diffusers VAE folder "
            f"(config.json and {VAE_WEIGHTS})")


@dataclass(frozen=True)
class VaeFile:
    """A VAE file or folder, checked from its header: where its weights
    are (``weights``), its own diffusers config (None for a single file),
    its tensors' shapes in the original layout, the families whose VAE has
    those shapes (``fits``) and its metadata."""

    path: Path
    weights: Path
    config: dict[str, Any] | None
    layout: str  # "original" or "diffusers": the weights' key names
    shapes: dict[str, tuple[int, ...]]
    fits: tuple[str, ...]
    metadata: dict[str, str]

    @property
    def files(self) -> list[str] | None:
        """The files a load reads, relative to a folder (None for a single file)."""
        return None if self.config is None else [str(p.relative_to(self.path)) for p in
                                                (self.weights.parent / "config.json", self.weights)]


def inspect_vae(path: Path, shown: str) -> VaeFile:
    """The VAE at ``path`` checked without reading its weights; a file that
    is not one, or a VAE of no family sdflow knows (an SD3 or Flux VAE, 16
    latent channels), is a :class:`StageError` naming ``shown``."""
    from sdflow_diffusion.models.files import component_files, header_shapes, safetensors_header

    path = Path(path)
    config, weights = component_files(path, "VAE", shown, VAE_WEIGHTS, VAE_HELP, subfolder="vae")
    shapes, metadata = header_shapes(safetensors_header(weights, shown))
    layout, original = _vae_shapes(shapes, shown)
    return VaeFile(path, weights, config, layout, original, _vae_fits(original, shown), metadata)


def _vae_shapes(shapes: dict[str, tuple[int, ...]], shown: str) -> tuple[str, dict[str, tuple[int, ...]]]:
    """The layout of a VAE's keys and its shapes in the original layout
    (diffusers' names renamed on meta tensors, which cost nothing)."""
    from sdflow_diffusion.models.ldm_layout import VAE, vae_to_original

    if any(key.startswith(VAE) for key in shapes):  # a VAE saved with its checkpoint's prefix
        shapes = {key[len(VAE):]: shape for key, shape in shapes.items() if key.startswith(VAE)}
    if "encoder.conv_in.weight" not in shapes or "decoder.conv_out.weight" not in shapes:
        raise StageError(f"'{shown}' is not a VAE: it has no encoder.conv_in and decoder.conv_out "
                         f"(its keys: {', '.join(list(shapes)[:3])}, ...)", help=VAE_HELP)
    if not any(".down_blocks." in key for key in shapes):
        return "original", shapes
    import torch

    blocks = {key.split(".")[2] for key in shapes if key.startswith("encoder.down_blocks.")}
    config = {"block_out_channels": [0] * len(blocks)}  # only their count names the blocks
    try:
        meta = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
        return "diffusers", {key: tuple(v.shape) for key, v in vae_to_original(meta, config).items()}
    except KeyError as err:
        raise StageError(f"'{shown}' is not a VAE sdflow can read: {err}", help=VAE_HELP) from None


def _vae_fits(shapes: dict[str, tuple[int, ...]], shown: str) -> tuple[str, ...]:
    """The shipped families whose VAE has exactly these tensors and shapes."""
    from sdflow_diffusion.models.families import expected_shapes, family_names
    from sdflow_diffusion.models.ldm_layout import VAE

    fits = []
    for name in family_names():
        expected = {k[len(VAE):]: v for k, v in expected_shapes(name).items() if k.startswith(VAE)}
        if expected == shapes:
            fits.append(name)
    if not fits:
        latent = shapes.get("decoder.conv_in.weight", (0, "?"))[1]
        raise StageError(f"'{shown}' is a VAE of no family sdflow knows: its latents have {latent} channels "
                         f"and its layers other shapes than any shipped family's VAE",
                         help="SD 1.x, 2.x and XL VAEs have 4 latent channels (16: an SD3 or Flux VAE, "
                              "which sdflow's models cannot use)")
    return tuple(fits)


def vae_family(checked: VaeFile, requested: str, shown: str) -> tuple[str, bool]:
    """The family whose latents the VAE ``checked`` is to decode, and whether
    that was a guess.

    ``requested``, if not "auto", must be one the VAE fits.  Otherwise the
    shapes decide, unless families of other scaling factors share them (SD
    1.x/2.x's VAE and SDXL's have the same shapes): then a folder's own
    config decides (its ``scaling_factor``), or the file's ModelSpec
    metadata, or its name (Stability's and most others say "xl"); failing
    all, SD 1.x's factor is used, and that is a guess."""
    from sdflow_diffusion.models.families import family_handle, family_info

    if requested != "auto":
        if requested not in checked.fits:
            raise StageError(f"VAE '{shown}' is not one of family '{requested}': its shapes are those of "
                             f"{', '.join(checked.fits)}", help="choose one of those, or auto")
        return requested, False
    order = {"sd1": 0, "sd2": 1, "sdxl": 2, "sdxl-refiner": 3}
    fits = sorted(checked.fits, key=lambda n: (bool(family_info(n).get("variant")),
                                               order.get(family_info(n)["kind"], 9), n))
    factors = {family_handle(n).vae_scaling_factor for n in fits}
    if len(factors) == 1:
        return fits[0], False
    if checked.config is not None and "scaling_factor" in checked.config:
        same = [n for n in fits if family_handle(n).vae_scaling_factor == checked.config["scaling_factor"]]
        if same:
            return same[0], False
    said = (checked.metadata.get("modelspec.architecture", "") + " " + checked.path.name).lower()
    if "xl" in said:
        xl = [n for n in fits if family_info(n)["kind"] == "sdxl"]
        if xl:
            return xl[0], False
    return fits[0], True


def load_vae(checked: VaeFile, family: str, settings: DiffusionSettings):
    """The VAE ``checked`` as a :class:`VaeHandle` of ``family`` (its scaling
    factor), on the run's device, in its dtype (fp32 where ``force_upcast``)."""
    from sdflow_diffusion.handles import VaeHandle
    from sdflow_diffusion.models.device import resolve_device
    from sdflow_diffusion.models.families import family_dir, family_handle, read_json
    from sdflow_diffusion.models.run_options import prepare_vae, storage_device

    device, dtype = resolve_device(settings)
    place = storage_device(settings, device)  # the CPU with --lowvram
    config = checked.config or read_json(family_dir(family) / "vae" / "config.json")
    vae_type = vae_dtype(config, dtype)
    if checked.config is not None:
        from sdflow_diffusion.models.diffusers_folder import vae_from_folder

        vae = vae_from_folder(checked.weights.parent, vae_type)
    else:
        from sdflow_diffusion.models.single_file import vae_from_single_file

        vae = vae_from_single_file(checked.weights, checked.layout, family, vae_type, place)
    with quiet():
        vae = vae.to(device=place, dtype=vae_type).eval()
    return VaeHandle(prepare_vae(vae, settings), family_handle(family), device, vae_type)
