"""What a model file is, checked before anything reads it for real.

A name can find a FIFO, a device, a folder of unrelated files, a download
cut in half, a pickle renamed ``.safetensors``: each is told apart here,
cheaply (a ``stat``, a few bytes, a small JSON), so that the user reads what
is wrong with which file instead of a library's traceback, a hash of
gigabytes that were never a model, or a read that blocks forever.

A leaf, torch-free: the loaders and :mod:`.load` import it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from sdflow.plugin import StageError

JSON_LIMIT = 16 << 20  # a config, a model index, a shard index: kilobytes, rarely a megabyte
HEADER_LIMIT = 100_000_000  # safetensors' own bound on a header
BROKEN_HELP = ("the file is damaged or incomplete (an interrupted download?): download it again "
               "and compare its size or SHA-256 with the source's")
PICKLE_PREFIXES = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # torch.save: zip or pickle
_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_or_folder(path: Path, what: str = "checkpoint") -> str:
    """Whether ``path`` is a "file" or a "folder" (a symlink counts as what
    it points to), told by ``stat`` alone, so that a FIFO is never opened
    (a read would block) nor a device read (``/dev/zero`` never ends)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise StageError(f"{what} file '{path}' does not exist", help="check the name and the folder") from None
    except OSError as err:
        raise StageError(f"cannot read {what} '{path}': {err.strerror or err}",
                         help="check the name and the folder") from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    kind = next((name for test, name in _SPECIAL if test(mode)), "not a regular file")
    raise StageError(f"{what} '{path}' is {kind}, not a file or a folder",
                     help="name a .safetensors file or a diffusers folder (a symlink to one is fine)")


def regular_file(path: Path, shown: str | None = None) -> int:
    """The size of ``path``, a regular file (or a link to one); a
    :class:`StageError` naming ``shown`` otherwise."""
    shown = shown or str(path)
    try:
        info = os.stat(path)
    except OSError as err:
        raise StageError(f"cannot read '{shown}': {err.strerror or err}",
                         help="check the name and the folder") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _SPECIAL if test(info.st_mode)), "a folder")
        raise StageError(f"'{shown}' is {kind}, not a file",
                         help="a model's files must be regular files (a symlink to one is fine)")
    return info.st_size


def read_json(path: Path, shown: str | None = None, limit: int = JSON_LIMIT) -> dict[str, Any]:
    """The JSON object in ``path``, read only if it is a regular file under
    ``limit`` bytes; a :class:`StageError` naming ``shown`` (default: the
    path) and, for a syntax error, its line and column, as a compiler would."""
    shown = shown or str(path)
    size = regular_file(path, shown)
    if size > limit:
        raise StageError(f"'{shown}' is {size} bytes, too large for a JSON file sdflow reads (at most {limit})",
                         help="it should be a small JSON file: is it the file you meant?")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    return parse_json_object(data, shown)


def parse_json_object(data: bytes, shown: str) -> dict[str, Any]:
    """``data`` parsed as a JSON object, or a :class:`StageError` that says
    where (``shown:line:column``) and what is wrong."""
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise StageError(f"'{shown}': not valid JSON: not UTF-8 text (byte {err.start})",
                         help="is it the file you meant?") from None
    except json.JSONDecodeError as err:
        raise StageError(f"{shown}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}",
                         help="fix the file at that line, or save the model again") from None
    except RecursionError:
        raise StageError(f"'{shown}': not valid JSON: nested too deeply", help="is it the file you meant?") from None
    if not isinstance(value, dict):
        raise StageError(f"'{shown}': expected a JSON object ({{...}}), found {_json_type(value)}",
                         help="is it the file you meant?")
    return value


def safetensors_header(path: Path, shown: str | None = None, broken_help: str = BROKEN_HELP) -> dict[str, Any]:
    """The header of the ``.safetensors`` at ``path`` (tensor name ->
    dtype, shape, data offsets; ``__metadata__``), checked against the
    file's size before anything else is read: a file too small, a header
    length past the end of the file (random bytes, a pickle renamed), a
    header that is not a JSON object, tensors past the end of the file (a
    download cut short) are each a :class:`StageError` naming ``shown``,
    with ``broken_help`` under it (a pickle's help when it looks like one)."""
    shown = shown or path.name
    size = regular_file(path, shown)
    with open(path, "rb") as handle:
        start = handle.read(8)
        length = int.from_bytes(start, "little")
        if len(start) < 8:
            problem = f"{size} bytes is too small for a header"
        elif length > size - 8:
            problem = f"header length {length} exceeds the file size"
        elif length > HEADER_LIMIT:
            problem = f"header length {length} is over the limit of {HEADER_LIMIT}"
        else:
            problem = _header_problem(handle.read(length), size - 8 - length)
    if isinstance(problem, str):
        raise _not_safetensors(shown, size, problem, start, broken_help)
    return problem


def header_shapes(header: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Each tensor's shape, and the metadata, of a checked header."""
    shapes = {key: tuple(entry["shape"]) for key, entry in header.items() if key != "__metadata__"}
    return shapes, dict(header.get("__metadata__") or {})


def _header_problem(raw: bytes, data_size: int) -> str | dict[str, Any]:
    """What is wrong with the header ``raw``, or the header, parsed."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return "its header is not JSON"
    if not isinstance(header, dict):
        return f"its header is {_json_type(header)}, not a JSON object"
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        return "its __metadata__ is not a map of strings"
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets)
                or offsets[0] > offsets[1] or not isinstance(shape, list) or not all(_count(n) for n in shape)):
            return f"tensor '{key}' is described wrongly: {json.dumps(entry)[:80]}"
        end = max(end, offsets[1])
    if end > data_size:
        return f"its tensors need {end} bytes after the header, the file has {data_size}: it is cut short"
    return header


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _not_safetensors(shown: str, size: int, problem: str, start: bytes, help: str) -> StageError:
    if start.startswith(PICKLE_PREFIXES):
        return StageError(f"cannot read '{shown}' ({size} bytes): not a valid safetensors file ({problem}): "
                          "it looks like a PyTorch pickle (torch.save)",
                          help="find the .safetensors version of the model; a pickle can run any code hidden "
                               "in it, so load it only if you trust it: rename it .ckpt and pass --allow-pickle")
    return StageError(f"cannot read '{shown}' ({size} bytes): not a valid safetensors file ({problem})", help=help)


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
             type(None): "null", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def component_files(path: Path, what: str, shown: str, weights: str, help: str,
                    subfolder: str | None = None) -> tuple[dict | None, Path]:
    """A model component (a VAE, a ControlNet) given as one ``.safetensors``
    file or a diffusers folder: ``(its config.json or None, its weights
    file)``, checked to be there.  A folder without ``config.json`` that
    holds ``subfolder`` (a pipeline's ``vae/``) is read there."""
    path = Path(path)
    if file_or_folder(path, what) == "folder":
        folder = path
        if subfolder is not None and not (path / "config.json").is_file() and (path / subfolder).is_dir():
            folder = path / subfolder
        if not (folder / weights).is_file():
            raise StageError(f"{what} folder '{shown}' has no {weights}", help=help)
        return read_json(folder / "config.json", f"{shown}/config.json"), folder / weights
    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise StageError(f"{what} '{shown}' is not a .safetensors file", help=help)
    return None, path


def load_weights(path: Path, what: str, help: str) -> object:
    """The tensors of a small weights file (a LoRA, an embedding): a
    ``.safetensors`` file, or a pickle read with ``weights_only`` (the caller
    has checked that pickles are allowed); a file torch or safetensors cannot
    read is a :class:`StageError` naming ``what``."""
    import torch

    from sdflow_diffusion.models.common import PICKLE_SUFFIXES

    try:
        if Path(path).suffix.lower() in PICKLE_SUFFIXES:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        from safetensors.torch import load_file

        return load_file(str(path))
    except Exception as err:
        raise StageError(f"cannot read {what}: {type(err).__name__}: {err}", help=help) from None
