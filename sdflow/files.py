"""Files sdflow writes get an ordinary file's permissions."""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def ordinary_mode() -> int:
    """The permissions an ordinary new file gets here: 0666 less the umask
    (read once: the umask can only be read by setting it).  For a file made
    with ``tempfile.mkstemp`` (0600) and renamed into place."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask
