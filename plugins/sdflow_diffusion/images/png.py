"""Write images as PNG files that carry the recipe that made them.

Names follow ComfyUI (``prefix_00001_.png``, counting on from the highest
already there).  A file is written to a temporary name in the same folder
and then linked to its final name, which fails rather than replace a file
that exists: an image is never overwritten, and never seen half-written.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdflow.plugin import StageError, ordinary_mode


def output_folder_and_stem(output_dir: Path, prefix: str) -> tuple[Path, str]:
    """The folder and file-name stem for a prefix such as ``"portraits/cat"``,
    refused if it would lead outside the output folder."""
    root = Path(output_dir).resolve()
    if Path(prefix).is_absolute() or "\\" in prefix:
        raise StageError(f"prefix '{prefix}' must be a name inside the output folder",
                         "write a relative name such as \"txt2img\" or \"portraits/cat\"")
    target = (root / prefix).resolve()
    if target != root and root not in target.parents:
        raise StageError(f"prefix '{prefix}' leads outside the output folder {root}",
                         "remove '..' from the prefix")
    if not target.name or target == root:
        raise StageError(f"prefix '{prefix}' names no file", "end it with a name, such as \"txt2img\"")
    return target.parent, target.name


def next_counter(folder: Path, stem: str) -> int:
    pattern = re.compile(re.escape(stem) + r"_(\d{5,})_\.png$")
    found = [int(m.group(1)) for p in folder.glob(f"{glob_escape(stem)}_*_.png")
             if (m := pattern.match(p.name))]
    return max(found, default=0) + 1


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def png_info(metadata: dict[str, str]) -> PngInfo:
    """One iTXt chunk per metadata field (the run context's ``metadata()``:
    keys and texts as ``sdflow show`` reads them), compressed when long."""
    info = PngInfo()
    for key, text in metadata.items():
        if key.startswith("sdflow."):
            info.add_itxt(key, text, zip=len(text) > 1024)
        else:  # another tool's field (A1111's parameters): as that tool writes it, tEXt where Latin-1 can hold it
            info.add_text(key, text)
    return info


def save_pngs(images: Iterable[Image.Image], output_dir: Path, prefix: str,
              metadata: dict[str, str], each: list[dict[str, str]] | None = None) -> list[Path]:
    """Save each image under the next free counter, with ``metadata`` and
    its own fields of ``each``; returns the paths."""
    folder, stem = output_folder_and_stem(output_dir, prefix)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    counter = next_counter(folder, stem)
    for i, image in enumerate(images):
        info = png_info({**metadata, **(each[i] if each else {})})
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=".png.tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                image.save(out, format="PNG", pnginfo=info)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, ordinary_mode())  # mkstemp's 0600 would keep a web server or a colleague out
            while True:
                final = folder / f"{stem}_{counter:05d}_.png"
                counter += 1
                if _publish(Path(tmp), final):
                    written.append(final)
                    break
        finally:
            Path(tmp).unlink(missing_ok=True)
    return written


def _publish(tmp: Path, final: Path) -> bool:
    """Give the finished file its name unless that name is taken."""
    try:
        os.link(tmp, final)
        return True
    except FileExistsError:
        return False
    except OSError as err:  # a file system without hard links
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
    try:  # claim the name exclusively, then move the finished file onto the claim
        os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    os.replace(tmp, final)
    return True
