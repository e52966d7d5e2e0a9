"""Read the text chunks of a PNG: what ``sdflow show`` prints.

A few lines of the PNG format (tEXt, zTXt, iTXt) rather than an image
library: showing an image's recipe needs no pixels.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from sdflow.metadata import PREFIX

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png_text(path: Path) -> dict[str, str]:
    """The ``sdflow.*`` text chunks of a PNG, keyed without the prefix."""
    data = Path(path).read_bytes()
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG file")
    found: dict[str, str] = {}
    pos = len(SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IEND":
            break
        entry = _text_chunk(kind, body)
        if entry is not None and entry[0].startswith(PREFIX):
            found[entry[0][len(PREFIX):]] = entry[1]
    return found


def _text_chunk(kind: bytes, body: bytes) -> tuple[str, str] | None:
    try:
        if kind == b"tEXt":
            key, _, text = body.partition(b"\0")
            return key.decode("latin-1"), text.decode("latin-1")
        if kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            return key.decode("latin-1"), zlib.decompress(rest[1:]).decode("latin-1")
        if kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _language, _, rest = rest.partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            text = zlib.decompress(text) if compressed else text
            return key.decode("latin-1"), text.decode("utf-8")
    except (zlib.error, UnicodeDecodeError, IndexError):
        return None
    return None
