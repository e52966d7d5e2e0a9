"""Finding a model file by name, as ComfyUI's folder layout has them.

A path is taken as it is; a name is looked up in each models folder the
settings give (``--models-dir``, ``$SDFLOW_MODELS``), then in the recipe's
folder, then among the models sdflow ships.  ``kind`` is the ComfyUI
subfolder (``checkpoints``, ``loras``, ``vae``, ``controlnet``,
``embeddings``, ``upscale_models``), so one lookup serves every loader.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath

from sdflow.plugin import StageError
from sdflow_diffusion.models.common import CHECKPOINT_SUFFIXES
from sdflow_diffusion.settings import DiffusionSettings


KINDS = ("checkpoints", "loras", "vae", "controlnet", "embeddings", "upscale_models")
WORDS = {"checkpoints": "checkpoint", "loras": "LoRA", "vae": "VAE", "controlnet": "ControlNet",
         "embeddings": "embedding", "upscale_models": "upscale model"}  # a kind's files, in words


def find_checkpoint(name: str, settings: DiffusionSettings, recipe_dir: Path | None = None) -> Path:
    """Where checkpoint ``name`` is (see :func:`find_model`)."""
    return find_model("checkpoints", name, settings, recipe_dir)


def find_model(kind: str, name: str, settings: DiffusionSettings, recipe_dir: Path | None = None) -> Path:
    """Where the model file ``name`` of ``kind`` (a ComfyUI models subfolder) is.

    A path (absolute, or relative to the working folder or the recipe's
    folder) is taken as it is.  Otherwise ``name`` is looked up as ComfyUI
    lays models out, ``DIR/KIND/NAME`` then ``DIR/models/KIND/NAME``, for
    each DIR of the settings' models folders (``--models-dir``, then
    ``$SDFLOW_MODELS``), then the recipe's folder; a models "folder" that is
    a ComfyUI ``extra_model_paths.yaml`` gives the folders it lists for
    ``kind``.  Last come the models sdflow ships (``sdflow-tiny.safetensors``).
    """
    given = Path(name).expanduser()
    direct = [given] if given.is_absolute() else [Path.cwd() / given]
    if recipe_dir is not None and not given.is_absolute():
        direct.append(Path(recipe_dir) / given)
    for path in direct:
        if path.exists():
            return path
    folders = model_folders(kind, settings, recipe_dir)
    if not given.is_absolute():
        for folder in folders:
            if (folder / given).exists():
                return folder / given
        if name in shipped_models(kind):
            return shipped_models(kind)[name]
    raise _not_found(kind, name, direct, folders)


def model_folders(kind: str, settings: DiffusionSettings, recipe_dir: Path | None = None) -> list[Path]:
    """Every folder where models of ``kind`` are looked up, in order."""
    folders: list[Path] = []
    roots = [Path(d).expanduser() for d in settings.models_dirs]
    roots += [Path(recipe_dir)] if recipe_dir is not None else []
    for root in roots:
        if root.suffix.lower() in (".yaml", ".yml") and root.is_file():
            folders += extra_model_paths(root, kind)
        else:
            folders += [root / kind, root / "models" / kind]
    return folders


def extra_model_paths(path: Path, kind: str) -> list[Path]:
    """The folders for ``kind`` that a ComfyUI ``extra_model_paths.yaml``
    lists: in each section, ``base_path`` joined with each line of ``kind``."""
    import yaml

    try:
        sections = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise StageError(f"cannot read '{path}': {err}",
                         help="a models folder given as a .yaml file must be ComfyUI's extra_model_paths.yaml") from None
    folders = []
    for section in sections.values() if isinstance(sections, dict) else []:
        if not isinstance(section, dict) or not isinstance(section.get(kind), str):
            continue
        base = Path(str(section.get("base_path", path.parent))).expanduser()
        base = base if base.is_absolute() else path.parent / base
        folders += [base / line.strip() for line in section[kind].splitlines() if line.strip()]
    return folders


SHIPPED = {"checkpoints": ("sdflow-tiny.safetensors",), "loras": ("sdflow-tiny-corners.safetensors",)}


def shipped_models(kind: str = "checkpoints") -> dict[str, Path]:
    """The models of ``kind`` that come with sdflow (in ``tiny/``), by name."""
    folder = Path(__file__).resolve().parent / "tiny"
    return {name: folder / name for name in SHIPPED.get(kind, ()) if (folder / name).is_file()}


def _not_found(kind: str, name: str, direct: list[Path], folders: list[Path]) -> StageError:
    available = sorted({str(p.relative_to(folder)) for folder in folders if folder.is_dir()
                        for p in folder.rglob("*") if _looks_like_model(p)})
    looked = ", ".join(dict.fromkeys(str(p) for p in [*direct, *folders]))  # in order, once each
    # Compare names without their suffix: ".safetensors" alone would make
    # any two file names look alike.
    stems = {Path(n).stem: n for n in [*available, *shipped_models(kind)]}
    nothing = f"no {WORDS.get(kind, kind)}s were found there; pass --models-dir DIR or set SDFLOW_MODELS"
    nothing += "".join(f" (sdflow ships '{n}')" for n in shipped_models(kind))
    hint = name_hint(name, stems, available, nothing)
    return StageError(f"{WORDS.get(kind, kind)} '{name}' not found", help=f"{hint} (looked in: {looked})")


def name_hint(name: str, names: Mapping[str, str], listed: Sequence[str], nothing: str) -> str:
    """The help for a name not found: "did you mean ...?" with the closest
    of ``names`` (a file's stem -> how to write it) to ``name``'s stem, else
    the first 8 ``listed`` names that are there, else ``nothing``."""
    close = difflib.get_close_matches(PurePath(name).stem, list(names), n=1, cutoff=0.6)
    if close:
        return f"did you mean '{names[close[0]]}'?"
    if listed:
        return "found there: " + ", ".join(listed[:8]) + (", ..." if len(listed) > 8 else "")
    return nothing


def _looks_like_model(path: Path) -> bool:
    if path.is_dir():
        return (path / "model_index.json").is_file()
    return path.suffix.lower() in CHECKPOINT_SUFFIXES


