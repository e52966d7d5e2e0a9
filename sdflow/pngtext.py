"""Read the text chunks of a PNG: what ``sdflow show`` prints.

A few lines of the PNG format (tEXt, zTXt, iTXt) rather than an image
library: showing an image's recipe needs no pixels.  The file is untrusted:
it is read chunk by chunk (the pixels are skipped, never read), only the
``sdflow.*`` chunks are kept, and what they inflate to is capped.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

from sdflow.metadata import PREFIX

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT = 32 * 2**20
"""The most text read from one image, inflated (a recipe is at most 16 MiB)."""


def read_png_text(path: Path) -> dict[str, str]:
    """The ``sdflow.*`` text chunks of a PNG, keyed without the prefix.

    Raises FileNotFoundError, or ValueError with a message for the user
    when the file is not a PNG or its text is not readable.
    """
    info = os.stat(path)
    if stat.S_ISDIR(info.st_mode):
        raise ValueError("is a folder, not an image")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("is not a regular file")
    found: dict[str, str] = {}
    budget = MAX_TEXT
    with open(path, "rb") as f:
        if f.read(len(SIGNATURE)) != SIGNATURE:
            raise ValueError("not a PNG file")
        while True:
            head = f.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                break
            if kind not in (b"tEXt", b"zTXt", b"iTXt"):
                f.seek(length + 4, os.SEEK_CUR)  # the chunk and its CRC
                continue
            if length > budget:
                raise ValueError(f"a text chunk of {length} bytes: larger than sdflow reads")
            body = f.read(length)
            f.seek(4, os.SEEK_CUR)
            key = body.partition(b"\0")[0].decode("latin-1")
            if not key.startswith(PREFIX):
                continue
            text = _text(kind, body, budget)
            if text is not None:
                found[key[len(PREFIX):]] = text
                budget -= len(text)
    return found


def _text(kind: bytes, body: bytes, budget: int) -> str | None:
    """One chunk's text, or None when it is damaged."""
    try:
        _key, _, rest = body.partition(b"\0")
        if kind == b"tEXt":
            return rest.decode("latin-1")
        if kind == b"zTXt":
            return _inflate(rest[1:], budget).decode("latin-1")
        compressed, rest = rest[0], rest[2:]
        _language, _, rest = rest.partition(b"\0")
        _translated, _, text = rest.partition(b"\0")
        return (_inflate(text, budget) if compressed else text).decode("utf-8")
    except (zlib.error, UnicodeDecodeError, IndexError):
        return None


def _inflate(data: bytes, budget: int) -> bytes:
    """Decompress at most ``budget`` bytes; a chunk that inflates past it is
    refused (a small file can hold gigabytes of zeros)."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, budget)
    if inflater.unconsumed_tail:
        raise ValueError(f"a compressed text chunk inflates past {budget // 2**20} MiB: larger than sdflow reads")
    return out
