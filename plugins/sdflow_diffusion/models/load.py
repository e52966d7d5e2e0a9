"""Loading a Stable Diffusion checkpoint, offline, into the run's device and dtype.

Two layouts load:

* a single file in the original Stable Diffusion key layout (what ComfyUI's
  ``models/checkpoints`` holds), by :mod:`.single_file`: its header is read
  first, so that an unknown or broken file is refused before gigabytes are
  read; its family is detected from keys and shapes; then diffusers converts
  each component, configured by the family's shipped configs.
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

    if prediction not in PREDICTIONS:
        raise StageError(f"prediction must be one of {', '.join(PREDICTIONS)}, not '{prediction}'")
    settings = settings or DiffusionSettings()
    checked = inspect_checkpoint(path, settings)
    device, dtype = resolve_device(settings)
    if isinstance(checked, DiffusersFolder):
        from sdflow_diffusion.models.diffusers_folder import load_folder

        components, family = load_folder(checked, prediction, dtype)
    else:
        from sdflow_diffusion.models.single_file import load_single_file

        components, family = load_single_file(checked, settings, prediction, dtype)
    return _handles(components, family, device, dtype)


def _handles(components: dict[str, Any], family: Any, device: Any, dtype: Any):
    from sdflow_diffusion.handles import ClipHandle, ModelHandle, VaeHandle

    vae_type = vae_dtype(components["vae"].config, dtype)
    names = [n for n in ("text_encoder", "text_encoder_2") if n in components]
    with quiet():  # the weights are already in their dtype: this only moves them
        unet = components["unet"].to(device=device, dtype=dtype).eval()
        vae = components["vae"].to(device=device, dtype=vae_type).eval()
        encoders = tuple(components[n].to(device=device, dtype=dtype).eval() for n in names)
    tokenizers = tuple(components[n.replace("text_encoder", "tokenizer")] for n in names)
    return (ModelHandle(unet, family, device, dtype),
            ClipHandle(tokenizers, encoders, family, device, dtype),
            VaeHandle(vae, family, device, vae_type))
