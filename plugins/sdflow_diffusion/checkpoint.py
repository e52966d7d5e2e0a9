"""Finding and loading a Stable Diffusion checkpoint, offline.

Two layouts load:

* a single file in the original Stable Diffusion key layout (what ComfyUI's
  ``models/checkpoints`` holds).  Its header is read first, so that an
  unknown or broken file is refused before gigabytes are read; its family is
  detected from keys and shapes (:mod:`sdflow_diffusion.families`); then the
  file is read ONCE into a state dict and diffusers converts each component
  from it, configured by the shipped config folder of the family.
  ``.safetensors`` only, unless ``--allow-pickle``: a pickle (``.ckpt``,
  ``.pt``, ``.pth``, ``.bin``) can run code when loaded, and even when
  allowed it is loaded with ``torch.load(weights_only=True)``;
* a diffusers folder (``model_index.json``), loaded as it is, with the
  shipped CLIP tokenizer where the folder has none.

Nothing is downloaded: every diffusers/transformers call is local-only.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdflow.execute import RunOptions, StageError, file_sha256

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CHECKPOINT_SUFFIXES = (".safetensors", ".sft", *PICKLE_SUFFIXES)
PREDICTIONS = ("auto", "epsilon", "v_prediction")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence diffusers' and transformers' advice, warnings and progress
    bars while loading: sdflow reports progress itself, and a user's output
    stays clean.  Real failures still raise."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled())
             for lib in (diffusers_logging, transformers_logging)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lib, verbosity, bar in saved:
            lib.set_verbosity(verbosity)
            lib.enable_progress_bar() if bar else lib.disable_progress_bar()


def find_checkpoint(name: str, options: RunOptions) -> Path:
    """Where checkpoint ``name`` is.

    A path (absolute, or relative to the working folder or the recipe's
    folder) is taken as it is.  Otherwise ``name`` is looked up as ComfyUI
    lays models out, ``DIR/checkpoints/NAME`` then
    ``DIR/models/checkpoints/NAME``, for each DIR in ``--models-dir``, then
    in ``$SDFLOW_MODELS`` (several joined by ``os.pathsep``), then the
    recipe's folder; last, the models sdflow ships (``sdflow-tiny.safetensors``).
    """
    given = Path(name).expanduser()
    direct = [given] if given.is_absolute() else [Path.cwd() / given]
    if options.recipe_dir is not None and not given.is_absolute():
        direct.append(Path(options.recipe_dir) / given)
    for path in direct:
        if path.exists():
            return path
    folders = [folder for root in _model_roots(options)
               for folder in (root / "checkpoints", root / "models" / "checkpoints")]
    if not given.is_absolute():
        for folder in folders:
            if (folder / given).exists():
                return folder / given
        if name in shipped_models():
            return shipped_models()[name]
    raise _not_found(name, direct, folders)


def shipped_models() -> dict[str, Path]:
    """The checkpoints that come with sdflow, by name."""
    tiny = Path(__file__).resolve().parent / "tiny" / "sdflow-tiny.safetensors"
    return {tiny.name: tiny} if tiny.is_file() else {}


def _model_roots(options: RunOptions) -> list[Path]:
    roots = [Path(d).expanduser() for d in options.models_dirs]
    roots += [Path(d).expanduser() for d in os.environ.get("SDFLOW_MODELS", "").split(os.pathsep) if d]
    if options.recipe_dir is not None:
        roots.append(Path(options.recipe_dir))
    return roots


def _not_found(name: str, direct: list[Path], folders: list[Path]) -> StageError:
    available = sorted({str(p.relative_to(folder)) for folder in folders if folder.is_dir()
                        for p in folder.rglob("*") if _looks_like_checkpoint(p)})
    looked = ", ".join(dict.fromkeys(str(p) for p in [*direct, *folders]))  # in order, once each
    # Compare names without their suffix: ".safetensors" alone would make
    # any two file names look alike.
    stems = {Path(n).stem: n for n in [*available, *shipped_models()]}
    close = difflib.get_close_matches(Path(name).stem, list(stems), n=1, cutoff=0.6)
    if close:
        hint = f"did you mean '{stems[close[0]]}'?"
    elif available:
        hint = "found there: " + ", ".join(available[:8]) + (", ..." if len(available) > 8 else "")
    else:
        hint = "no checkpoints were found there; pass --models-dir DIR or set SDFLOW_MODELS"
        hint += "".join(f" (sdflow ships '{n}')" for n in shipped_models())
    return StageError(f"checkpoint '{name}' not found", help=f"{hint} (looked in: {looked})")


def _looks_like_checkpoint(path: Path) -> bool:
    if path.is_dir():
        return (path / "model_index.json").is_file()
    return path.suffix.lower() in CHECKPOINT_SUFFIXES


def load_checkpoint(path: Path, options: RunOptions, prediction: str = "auto"):
    """Load the checkpoint at ``path``: a ``(ModelHandle, ClipHandle,
    VaeHandle)`` on the run's device, in its dtype.

    ``prediction`` overrides what the model predicts ("epsilon" or
    "v_prediction"); "auto" reads it from the file (see
    :func:`sdflow_diffusion.single_file.resolve_prediction`).  Every
    problem a user can fix is a :class:`StageError` that says what was
    found and what to do.
    """
    from sdflow_diffusion.device import resolve_device

    if prediction not in PREDICTIONS:
        raise StageError(f"prediction must be one of {', '.join(PREDICTIONS)}, not '{prediction}'")
    path = Path(path)
    device, dtype = resolve_device(options)
    if path.is_dir():
        from sdflow_diffusion.diffusers_folder import load_folder

        components, family = load_folder(path, prediction, dtype)
    elif path.is_file():
        from sdflow_diffusion.single_file import load_single_file

        components, family = load_single_file(path, options, prediction, dtype)
    else:
        raise StageError(f"checkpoint file '{path}' does not exist", help="check the name and the folder")
    return _handles(components, family, file_sha256(path), device, dtype)


def vae_dtype(vae_config: Any, dtype: Any) -> Any:
    """SDXL's VAE overflows in fp16 (its config says ``force_upcast``), so
    it stays in fp32 when fp16 is asked for; other VAEs follow the run.
    Decided from the config, so that the weights load in that dtype."""
    import torch

    if dtype == torch.float16 and vae_config.get("force_upcast", False):
        return torch.float32
    return dtype


def _handles(components: dict[str, Any], family: Any, identity: str, device: Any, dtype: Any):
    from sdflow_diffusion.handles import ClipHandle, ModelHandle, VaeHandle

    vae_type = vae_dtype(components["vae"].config, dtype)
    names = [n for n in ("text_encoder", "text_encoder_2") if n in components]
    with quiet():  # the weights are already in their dtype: this only moves them
        unet = components["unet"].to(device=device, dtype=dtype).eval()
        vae = components["vae"].to(device=device, dtype=vae_type).eval()
        encoders = tuple(components[n].to(device=device, dtype=dtype).eval() for n in names)
    tokenizers = tuple(components[n.replace("text_encoder", "tokenizer")] for n in names)
    return (ModelHandle(unet, family, identity, device, dtype),
            ClipHandle(tokenizers, encoders, family, identity, device, dtype),
            VaeHandle(vae, family, identity, device, vae_type))
