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

A process also keeps what it hashed for the next ones: a file of at least
1 MiB has its hash written under its stat signature in the user's cache
folder (``$SDFLOW_CACHE_DIR``, else ``$XDG_CACHE_HOME/sdflow``, else
``~/.cache/sdflow``; ``SDFLOW_HASH_CACHE=0`` turns it off), so that the
first run on a new checkpoint pays one read and later runs none.  Each
entry is one small file named by the signature's own hash and written
whole under a temporary name then renamed, so processes that share the
folder never see half an entry; one that cannot be read or written is
ignored (the file is hashed again).

A folder is often more than what reads it: a diffusers model beside notes,
previews or other models.  A plugin that knows which of its files it reads
names them (``files``), and only those are read.
Only regular files are ever opened: a FIFO would block the read, a device
such as ``/dev/zero`` never end it, so either is refused with a
:class:`~sdflow.errors.StageError` before any read.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from sdflow.errors import StageError

_HASHES: dict[tuple, str] = {}
BLOCK = 1 << 20
DISK_MIN_BYTES = 1 << 20  # smaller files are hashed faster than their entry is read
_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _signature(path: Path, info: os.stat_result) -> tuple:
    return (str(path), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def file_sha256(path: Path | str | os.PathLike, verify: bool = False,
                files: Iterable[str | Path] | None = None) -> str:
    """The SHA-256 of a file, or of a folder (its files' relative paths and
    hashes, in order), computed once per stat signature unless ``verify``.

    ``files`` (paths relative to the folder) limits a folder's identity to
    those files.  A path that is neither a regular file nor a folder (a symlink
    counts as what it points to) is a :class:`StageError`, raised before
    anything is opened."""
    given = Path(path)
    path = given.resolve()
    info = _stat(given, path)
    if stat.S_ISDIR(info.st_mode):
        chosen = _files(path) if files is None else sorted({path / file for file in files})
        digest = hashlib.sha256()
        for file in chosen:
            digest.update(str(file.relative_to(path)).encode() + b"\0")
            digest.update(file_sha256(file, verify).encode())
        return digest.hexdigest()
    key = _signature(path, info)
    if verify or key not in _HASHES:
        cached = None if verify or info.st_size < DISK_MIN_BYTES else _disk_get(key)
        _HASHES[key] = cached or _hash_file(given, path)
        if cached is None and info.st_size >= DISK_MIN_BYTES:
            _disk_put(key, _HASHES[key])
    return _HASHES[key]


def cache_folder() -> Path | None:
    """Where hashes are kept between processes (None: not kept)."""
    if os.environ.get("SDFLOW_HASH_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    chosen = os.environ.get("SDFLOW_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sdflow")
    return Path(chosen) / "sha256"


def _entry(key: tuple) -> Path | None:
    folder = cache_folder()
    return None if folder is None else folder / hashlib.sha256(repr(key).encode()).hexdigest()


def _disk_get(key: tuple) -> str | None:
    entry = _entry(key)
    try:
        text = entry.read_text(encoding="ascii").strip() if entry is not None else ""
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def _disk_put(key: tuple, digest: str) -> None:
    import tempfile

    entry = _entry(key)
    if entry is None:
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".", suffix=".tmp")
    except OSError:  # a read-only or full cache folder: the hash is simply not kept
        return
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(digest + "\n")
        os.replace(tmp, entry)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def _stat(given: Path, path: Path) -> os.stat_result:
    """``path``'s stat, if it is a regular file or a folder."""
    info = path.stat()
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise _not_a_file(given, info.st_mode)
    return info


def _hash_file(given: Path, path: Path) -> str:
    # O_NONBLOCK: should the file have become a FIFO since it was looked at,
    # opening it does not wait for a writer, and fstat refuses it.
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with open(descriptor, "rb") as handle:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise _not_a_file(given, mode)
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _not_a_file(given: Path, mode: int) -> StageError:
    kind = next((name for test, name in _SPECIAL if test(mode)), "not a regular file")
    return StageError(f"'{given}' is {kind}, not a file: reading it could block or never end",
                      help="name a regular file or a folder (a symlink to one is fine)")
