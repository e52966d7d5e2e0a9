"""Weight patches (a LoRA at a strength) applied while a model runs, undone after.

A stage that changes a model's weights (load_lora) does not change the
model: it returns a handle that carries the patch beside the shared module
(``ModelHandle.patches``, ``ClipHandle.patches``).  The code that runs the
module wraps the run in :func:`applied`, which adds the patches to the
weights in place and puts the weights back exactly afterwards, so the
cached checkpoint a sweep over LoRA strengths shares is never changed for
good, and nothing is copied but the weights a patch touches.

A patch is any object with ``apply(module) -> restore`` (a function that
undoes it).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def applied(handle: Any) -> Iterator[None]:
    """Run the ``with`` block with ``handle``'s patches on its module, in
    order, and undo them (last first) however the block ends."""
    restores = []
    try:
        for patch in getattr(handle, "patches", ()):
            restores.append(patch.apply(handle.module))
        yield
    finally:
        for restore in reversed(restores):
            restore()
