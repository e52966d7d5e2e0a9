"""A file's identity is its content: the SHA-256 of a file, or of a folder's files.

Hashing a checkpoint costs a read of gigabytes, so a process remembers each
hash under the file's *stat signature*: path, size, mtime, ctime and inode.
The rule (stated in the reference): a file is hashed again whenever any of
those change.  ctime is set by the kernel on every write and cannot be set
back, so a file rewritten with its size and mtime preserved (``cp -p``,
``rsync -t``) is still found out; only ``verify=True`` (what a lock file or
a replay asks for) rehashes unconditionally.  A folder's signature is that
of every file in it (a file rewritten inside a diffusers folder changes it,
though the folder's own mtime does not), and its identity the hash of its
files' relative paths and hashes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_HASHES: dict[tuple, str] = {}
BLOCK = 1 << 20


def _signature(path: Path) -> tuple:
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def file_sha256(path: Path | str, verify: bool = False) -> str:
    """The SHA-256 of a file, or of a folder (its files' relative paths and
    hashes, in order), computed once per stat signature unless ``verify``."""
    path = Path(path).resolve()
    if path.is_dir():
        digest = hashlib.sha256()
        for file in _files(path):
            digest.update(str(file.relative_to(path)).encode() + b"\0")
            digest.update(file_sha256(file, verify).encode())
        return digest.hexdigest()
    key = _signature(path)
    if verify or key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(BLOCK), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]

