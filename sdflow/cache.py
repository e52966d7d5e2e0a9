"""The executor's cache: readable keys, and a policy for what stays.

A stage's result is found by a :class:`CacheKey` that keeps its inputs in
plain view: the stage type's full name and version, its parameters, the
keys of the results it consumes, the identities of the files it reads, and
its plugin's settings.  Its digest is what the store looks up; the fields
are what ``sdflow run --explain``, JSON events and lock files read back, and
what :meth:`CacheKey.differences` compares to say why a stage ran again.

The policy (:class:`CacheStore`):

* a result whose outputs include a *persistent* port type (a model) stays
  while the process may use it, up to ``max_persistent`` entries and
  ``max_bytes`` of memory (the tensors' own sizes, counted through whatever
  holds them), the least recently used dropped first;
* any other result lives only while the run that made it still has a stage
  that needs it, then it is dropped: a sweep over a hundred seeds keeps no
  hundred latents alive;
* unless the store keeps *small* results (``keep_small``, what a sweep asks
  for): one of at most ``SMALL_BYTES`` (an encoded prompt, a latent) stays
  for the next runs, the ``SMALL_COUNT`` most recently used of them, so the
  points of a sweep share the prompts they have in common.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping


@dataclass(frozen=True)
class CacheKey:
    """What a stage's result depends on, readable field by field."""

    stage: str
    version: str
    params: Mapping[str, Any]
    inputs: Mapping[str, str]  # port -> "digest:port" of the result it came from
    files: Mapping[str, str]  # label -> identity (a model's SHA-256)
    settings: Mapping[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        return {"stage": self.stage, "version": self.version, "params": dict(self.params),
                "inputs": dict(self.inputs), "files": dict(self.files), "settings": dict(self.settings)}

    @cached_property
    def digest(self) -> str:
        text = json.dumps(self.fields(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def differences(self, before: CacheKey) -> list[str]:
        """What changed since ``before`` (the same stage's previous key), in
        words: ``"params.seed: 42 -> 43"``, ``"input latent"``..."""
        changes = []
        mine, theirs = self.fields(), before.fields()
        for name in ("stage", "version"):
            if mine[name] != theirs[name]:
                changes.append(f"{name}: {theirs[name]} -> {mine[name]}")
        for name in ("params", "files", "settings"):
            for item in sorted(set(mine[name]) | set(theirs[name])):
                old, new = theirs[name].get(item), mine[name].get(item)
                if old != new:
                    changes.append(f"{name}.{item}: {_short(old)} -> {_short(new)}")
        changes += [f"input {port} changed" for port in sorted(set(mine["inputs"]) | set(theirs["inputs"]))
                    if mine["inputs"].get(port) != theirs["inputs"].get(port)]
        return changes


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


SMALL_BYTES = 1 << 20
SMALL_COUNT = 64


class CacheStore:
    """Stage results by key digest, kept by the policy above."""

    def __init__(self, max_persistent: int = 4, max_bytes: int | None = None, keep_small: bool = False) -> None:
        self.max_persistent = max_persistent
        self.max_bytes = max_bytes
        self.keep_small = keep_small
        self._persistent: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._run: dict[str, Mapping[str, Any]] = {}
        self._small: OrderedDict[str, Mapping[str, Any]] = OrderedDict()

    def get(self, digest: str) -> Mapping[str, Any] | None:
        if digest in self._persistent:
            self._persistent.move_to_end(digest)
            return self._persistent[digest]
        if digest in self._small:
            self._small.move_to_end(digest)
            return self._small[digest]
        return self._run.get(digest)

    def put(self, digest: str, outputs: Mapping[str, Any], persistent: bool) -> None:
        if persistent:
            self._persistent[digest] = outputs
            self._persistent.move_to_end(digest)
            self._sizes[digest] = nbytes(outputs) if self.max_bytes is not None else 0
            # The newest entry stays even alone over the bound: a run is using it.
            while len(self._persistent) > 1 and (len(self._persistent) > self.max_persistent or (
                    self.max_bytes is not None and sum(self._sizes.values()) > self.max_bytes)):
                dropped, _ = self._persistent.popitem(last=False)
                self._sizes.pop(dropped, None)
        else:
            self._run[digest] = outputs

    def release(self, digest: str) -> None:
        """No remaining stage of this run needs the result: let it go
        (a persistent one stays; with ``keep_small``, a small one too)."""
        outputs = self._run.pop(digest, None)
        if outputs is not None and self.keep_small and nbytes(outputs) <= SMALL_BYTES:
            self._small[digest] = outputs
            self._small.move_to_end(digest)
            while len(self._small) > SMALL_COUNT:
                self._small.popitem(last=False)

    def end_run(self) -> None:
        for digest in list(self._run):
            self.release(digest)
        self._run.clear()

    @property
    def persistent_bytes(self) -> int:
        return sum(self._sizes.values())

    def __contains__(self, digest: str) -> bool:
        return digest in self._persistent or digest in self._small or digest in self._run

    def __len__(self) -> int:
        return len(self._persistent) + len(self._small) + len(self._run)


def nbytes(value: Any, _seen: set[int] | None = None, _depth: int = 0) -> int:
    """The memory a value's tensors take, found without importing torch:
    a module's parameters and buffers, an array's ``nbytes``, and what
    dataclasses, mappings and sequences hold (each tensor counted once)."""
    seen = set() if _seen is None else _seen
    if id(value) in seen or _depth > 6 or value is None or isinstance(value, (str, bytes, int, float, bool)):
        return 0
    seen.add(id(value))
    if callable(getattr(value, "parameters", None)) and callable(getattr(value, "buffers", None)):
        return sum(_tensor_bytes(t, seen) for t in [*value.parameters(), *value.buffers()])
    if hasattr(value, "element_size") and hasattr(value, "nelement"):
        seen.discard(id(value))
        return _tensor_bytes(value, seen)
    if isinstance(getattr(value, "nbytes", None), int):
        return value.nbytes
    if isinstance(value, Mapping):
        items = list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    elif hasattr(value, "__dataclass_fields__"):
        items = [getattr(value, name) for name in value.__dataclass_fields__]
    else:
        return 0
    return sum(nbytes(item, seen, _depth + 1) for item in items)


def _tensor_bytes(tensor: Any, seen: set[int]) -> int:
    if id(tensor) in seen:  # a tied weight: counted once
        return 0
    seen.add(id(tensor))
    return int(tensor.element_size() * tensor.nelement())
