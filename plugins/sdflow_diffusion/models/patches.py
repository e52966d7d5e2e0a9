"""Weight patches (a LoRA at a strength) applied while a model runs, undone after.

A stage that changes a model's weights (load_lora) does not change the
model: it returns a handle that carries the patch beside the shared module
(``ModelHandle.patches``, ``ClipHandle.patches``).  The code that runs the
module wraps the run in :func:`applied`, which adds the patches to the
weights in place and puts the weights back exactly afterwards, so the
cached checkpoint a sweep over LoRA strengths shares is never changed for
good, and nothing is copied but the weights a patch touches.

A patch is any object with ``apply(module) -> restore`` (a function that
undoes it); :class:`WeightPatch` is the one load_lora makes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator


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


@dataclass(frozen=True, eq=False)
class WeightPatch:
    """Changes added to some weights of a module, ``strength`` times (a LoRA).

    ``changes``: ``(index, path, delta)`` each; ``index`` picks one module
    of a tuple (a text encoder of a ClipHandle) or is None, ``path`` names a
    submodule with a ``weight``, and ``delta.weight(device, strength)`` is
    the change, float32, ``[outputs, inputs x kernel]``.
    """

    label: str  # the file it came from, for messages
    changes: tuple[tuple[int | None, str, Any], ...]
    strength: float

    def apply(self, module: Any) -> Callable[[], None]:
        """Add the changes in place; return what puts every weight back bit for bit.

        Each change is computed in float32 on its weight's device and added
        to the weight in float32, rounded once to the dtype the model runs
        in (fp16 on a GPU).  A weight kept narrower than the model runs
        (:mod:`.storage`: an fp16 file's on the CPU) is not changed: a wide
        copy of it is, and ``restore`` puts the narrow one back.  Of any
        other weight it touches a copy is kept until ``restore`` copies it
        back: subtracting the change again would not give the same bits."""
        import torch

        from sdflow_diffusion.models.storage import widen

        saved: list[tuple[Any, Any]] = []
        undo: list[Callable[[], None]] = []

        def restore() -> None:
            with torch.no_grad():
                for weight, original in reversed(saved):  # a weight changed twice ends as it began
                    weight.copy_(original)
            for put_back in reversed(undo):
                put_back()

        try:
            with torch.no_grad():
                for index, path, delta in self.changes:
                    layer = (module if index is None else module[index]).get_submodule(path)
                    widened = widen(layer, "weight")
                    if widened is None:
                        saved.append((layer.weight, layer.weight.detach().clone()))
                    else:
                        undo.append(widened)
                    weight = layer.weight
                    change = delta.weight(weight.device, self.strength).reshape(weight.shape)
                    weight.copy_((weight.float() + change).to(weight.dtype))
        except BaseException:
            restore()
            raise
        return restore


class FreeUPatch:
    """FreeU switched on in a diffusers U-Net while it runs (``enable_freeu``), off after."""

    def __init__(self, s1: float, s2: float, b1: float, b2: float) -> None:
        self.factors = {"s1": s1, "s2": s2, "b1": b1, "b2": b2}

    def apply(self, unet):
        unet.enable_freeu(**self.factors)
        return unet.disable_freeu
