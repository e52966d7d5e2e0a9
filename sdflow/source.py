"""Recipe text from a file, checked before it is read.

A recipe is checked for what it is before it is read (a regular file, of a
bounded size), a byte-order mark is accepted, and bytes that are not UTF-8
are reported at ``file:line:col`` like any other mistake.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from sdflow.ast import Span
from sdflow.diagnostics import Diagnostic

MAX_RECIPE_BYTES = 16 * 2**20
"""The largest recipe read (16 MiB): checking takes time and memory in
proportion to the size (about 50 bytes of memory per byte of a recipe of
short tokens), so a limit bounds both."""

BOM = "\ufeff"


class SourceError(Exception):
    """A recipe file that cannot be read as text: missing, a folder, a
    device, too large.  The message starts with the path."""


@dataclass(frozen=True)
class Source:
    """A recipe's text, and the diagnostics of reading it (not UTF-8)."""

    path: str
    text: str
    diagnostics: tuple[Diagnostic, ...] = ()


def read_source(path: str | os.PathLike) -> Source:
    """The text of the recipe at ``path``, checked before it is read.

    Raises :class:`SourceError` for what is not a recipe file at all; bytes
    that are not UTF-8 come back as diagnostics (E108), with the text
    decoded so that each bad byte is one replacement character.
    """
    name = os.fspath(path)
    data = read_regular_file(name, MAX_RECIPE_BYTES, "recipe")
    if data.startswith(BOM.encode()):
        data = data[3:]
    # Line breaks as the parser counts them (CR LF and a lone CR are one), so
    # that every line and column shown is the parser's.
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    try:
        return Source(name, data.decode("utf-8"))
    except UnicodeDecodeError:
        return Source(name, data.decode("utf-8", errors="replace"), tuple(_utf8_errors(name, data)))


def read_regular_file(path: str, limit: int, what: str) -> bytes:
    """The bytes of ``path`` after checking it is a regular file of at most
    ``limit`` bytes; a folder, a device or a pipe is never opened."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except OSError as err:
        raise SourceError(f"{path}: {err.strerror or err}") from None
    if stat.S_ISDIR(info.st_mode):
        raise SourceError(f"{path}: is a folder, not a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise SourceError(f"{path}: is {_kind_of(info.st_mode)}, not a {what} file")
    if info.st_size > limit:
        raise SourceError(f"{path}: {_size(info.st_size)} is too large for a {what} (at most {_size(limit)})")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise SourceError(f"{path}: {err.strerror or err}") from None
    if len(data) > limit:  # it grew since the stat
        raise SourceError(f"{path}: larger than {_size(limit)}, too large for a {what}")
    return data


def _kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _utf8_errors(path: str, data: bytes, limit: int = 20) -> list[Diagnostic]:
    """One E108 per line holding bytes that are not UTF-8 (at the first of them)."""
    found: list[Diagnostic] = []
    line_start, line = 0, 1
    pos = 0
    while pos < len(data) and len(found) < limit:
        try:
            data[pos:].decode("utf-8")
            break
        except UnicodeDecodeError as err:
            bad = pos + err.start
        line += data.count(b"\n", line_start, bad)
        line_start = data.rfind(b"\n", 0, bad) + 1
        column = len(data[line_start:bad].decode("utf-8", errors="replace")) + 1
        found.append(Diagnostic(
            "E108", f"byte 0x{data[bad]:02x} is not UTF-8 text", Span(path, line, column, line, column + 1),
            "recipes are UTF-8: save the file as UTF-8 in your editor",
        ))
        end = data.find(b"\n", bad)
        if end < 0:
            break
        line_start, pos, line = end + 1, end + 1, line + 1
    return found
