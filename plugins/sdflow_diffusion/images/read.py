"""Input images: found by name in the inputs folders, read with Pillow.

A name is looked up in each inputs folder (``--inputs``, ``$SDFLOW_INPUTS``:
ComfyUI's ``input/``), then in the recipe's folder, then in its ``inputs/``
folder.  As outputs cannot leave the output folder, a recipe's names cannot
leave these folders: an absolute path, a ``..``, or a link that leads out
is refused.  A path typed on the command line (``--set NAME=PATH``) is the
user's own choice for this run and is taken as it is.
"""

from __future__ import annotations

import itertools
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from sdflow.plugin import StageError
from sdflow_diffusion.models.lookup import name_hint
from sdflow_diffusion.settings import DiffusionSettings

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
LISTED = 5000  # files looked at, at most, for a name to suggest
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True)
class Picture:
    """An image file's first frame: ``rgb`` [1, H, W, 3] and ``alpha``
    [1, H, W] (1 = opaque; None when the file has none), float32 in [0, 1];
    ``frames`` in the file and its ``format`` as Pillow names it."""

    rgb: "torch.Tensor"
    alpha: "torch.Tensor | None"
    frames: int
    format: str


# finding --------------------------------------------------------------------


def identify_input(ctx, name: str) -> None:
    """Find image ``name``, check that Pillow reads it and that it is not too
    large (its header only), and record its SHA-256 under ``name``: for a
    stage's identify function, so that a missing or broken image is reported
    before any model loads."""
    path = find_input(name, ctx.settings, ctx.recipe_dir, typed=ctx.from_command_line(name))
    inspect_image(path, name)
    ctx.identify_file(name, path)


def read_input(ctx, name: str) -> Picture:
    """The image :func:`identify_input` found under ``name``, read.  Of an
    animated file only the first frame is: a warning says so (at the
    recipe's line, and in the metadata of every output downstream)."""
    picture = read_image(ctx.file_path(name), name)
    if picture.frames > 1 and picture.format != "MPO":  # MPO: a photo and its previews, one image
        ctx.warn(f"'{name}' is an animated {picture.format} of {picture.frames} frames: only the first is read")
    return picture


def input_folders(settings: DiffusionSettings, recipe_dir: Path | None) -> list[Path]:
    """Where names are looked up, in order."""
    folders = [Path(folder).expanduser() for folder in settings.inputs_dirs]
    if recipe_dir is not None:
        folders += [Path(recipe_dir), Path(recipe_dir) / "inputs"]
    return folders


def find_input(name: str, settings: DiffusionSettings, recipe_dir: Path | None, typed: bool = False) -> Path:
    """Where input image ``name`` is: the first of the inputs folders that
    has it.  ``typed``: the name came from the command line, so it may be
    any path (absolute, or relative to the working folder), tried first."""
    given = Path(name)
    folders = input_folders(settings, recipe_dir)
    if typed and (given.is_absolute() or ".." in given.parts or given.exists()):
        if not (given.exists() or given.is_symlink()):
            raise StageError(f"image '{name}' not found",
                             help=f"no file at {given.absolute()} (the path given with --set)")
        return _regular(given, name)
    if given.is_absolute() or ".." in given.parts:
        raise StageError(
            f"image '{name}' is outside the inputs folders: a recipe may name only files inside them",
            help="give the name relative to an inputs folder (--inputs DIR, the recipe's folder or its inputs/), "
                 "or pass the path on the command line: declare 'param image = \"...\"', use "
                 "load_image(name=image), and run with --set image=PATH")
    roots = [folder.resolve() for folder in folders]
    for folder in folders:
        path = folder / given
        if not (path.exists() or path.is_symlink()):
            continue
        real = path.resolve()
        if not any(real.is_relative_to(root) for root in roots):
            raise StageError(f"image '{name}' is a link to '{real}', outside the inputs folders",
                             help="copy the file into an inputs folder, or pass its path with --set")
        return _regular(path, name)
    raise _not_found(name, folders)


def _regular(path: Path, name: str) -> Path:
    if path.is_dir():
        raise StageError(f"image '{name}' is a folder ({path}), not an image file",
                         help="name an image file inside it")
    if not path.is_file():
        what = "a broken link" if path.is_symlink() and not path.exists() else "not a regular file"
        raise StageError(f"image '{name}' ({path}) is {what}", help="name a PNG, JPEG or WebP file")
    return path


def _not_found(name: str, folders: list[Path]) -> StageError:
    available = sorted(_images_in(folders), key=lambda n: (len(Path(n).parts), n))
    looked = ", ".join(dict.fromkeys(str(folder) for folder in folders)) or "no folders"
    stems: dict[str, str] = {}
    for found in available:  # the shortest name of a file found twice (in the recipe's folder and its inputs/)
        stems.setdefault(Path(found).stem, found)
    hint = name_hint(name, stems, available, "no images were found there; pass --inputs DIR or set SDFLOW_INPUTS")
    return StageError(f"image '{name}' not found", help=f"{hint} (looked in: {looked})")


def _images_in(folders: list[Path]) -> set[str]:
    """The names of the images in ``folders`` (of the first LISTED entries:
    a recipe's folder may be a large one)."""
    names: set[str] = set()
    entries = ((folder, path) for folder in folders if folder.is_dir() for path in folder.rglob("*"))
    for folder, path in itertools.islice(entries, LISTED):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            names.add(str(path.relative_to(folder)))
    return names


# reading --------------------------------------------------------------------


def inspect_image(path: Path, name: str) -> None:
    """Check, from its header, that ``path`` is an image Pillow reads and
    that it is at most :data:`~sdflow_diffusion.numerics.pixels.MAX_PIXELS`."""
    with _opened(path, name) as picture:
        _check_size(picture.size, name)


def read_image(path: Path, name: str) -> Picture:
    """The first frame of image file ``path``, upright (its EXIF orientation
    applied), as float RGB and alpha.  Every mode becomes RGB, with an alpha
    where the file has one: 16-bit grey (I;16) and 32-bit (I, read as 16-bit
    values) divided by 65535, float (F) taken as it is, both clipped to
    [0, 1]; 8-bit modes divided by 255 after Pillow's conversion (L and 1
    repeated in three channels, palette through its colours and its
    transparency, CMYK by Pillow's formula, without a colour profile)."""
    import numpy as np
    import torch
    from PIL import ImageOps

    with _opened(path, name) as picture:
        _check_size(picture.size, name)
        try:
            frames, format = getattr(picture, "n_frames", 1), picture.format or "image"
            frame = ImageOps.exif_transpose(picture)  # a loaded copy of the first frame
            if frame.mode in SIXTEEN_BIT or frame.mode == "F":
                scale = 65535 if frame.mode in SIXTEEN_BIT else 1
                grey = np.clip(np.asarray(frame).astype(np.float32) / scale, 0, 1)
                rgb, alpha = np.repeat(grey[..., None], 3, axis=-1), None
            else:
                has_alpha = frame.has_transparency_data
                values = np.asarray(frame.convert("RGBA" if has_alpha else "RGB")).astype(np.float32) / 255.0
                rgb, alpha = values[..., :3], (values[..., 3] if has_alpha else None)
        except Exception as err:  # Pillow's decoders raise many kinds for a damaged file
            raise _unreadable(path, name, err) from None
    rgb = torch.from_numpy(np.ascontiguousarray(rgb))[None]
    alpha = None if alpha is None else torch.from_numpy(np.ascontiguousarray(alpha))[None]
    return Picture(rgb, alpha, frames, format)


@contextmanager
def _opened(path: Path, name: str) -> Iterator:
    """``Image.open(path)``, whose failures are StageErrors naming the file."""
    from PIL import Image

    _regular(path, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked here
            picture = Image.open(path)
    except Image.DecompressionBombError as err:
        raise StageError(f"image '{name}' ({path}) is too large: {err}", help=_too_large_help()) from None
    except Exception as err:  # Pillow's decoders raise many kinds for a damaged file
        raise _unreadable(path, name, err) from None
    try:
        yield picture
    finally:
        picture.close()


def _check_size(size: tuple[int, int], name: str) -> None:
    from sdflow_diffusion.numerics import pixels

    width, height = size
    if width * height > pixels.MAX_PIXELS:
        raise StageError(f"image '{name}' is {width}x{height}, {width * height / 2**20:.1f} megapixels: "
                         f"more than the {pixels.MAX_PIXELS / 2**20:g} megapixels sdflow reads",
                         help=_too_large_help())


def _too_large_help() -> str:
    from sdflow_diffusion.numerics import pixels

    return (f"save a smaller copy of it (at most {pixels.MAX_PIXELS / 2**20:g} megapixels) and load that; "
            "image_scale can then bring it to the size you need")


def _unreadable(path: Path, name: str, err: Exception) -> StageError:
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return StageError(f"image '{name}' ({path}) is not an image file Pillow can read",
                          help="load_image reads PNG, JPEG, WebP, GIF, BMP and TIFF files")
    reason = str(err) or type(err).__name__
    return StageError(f"image '{name}' ({path}) cannot be read: {reason}",
                      help="the file is damaged or incomplete: save or copy it again")
