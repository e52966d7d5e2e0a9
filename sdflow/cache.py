"""The executor's cache: readable keys, and a policy for what stays.

A stage's result is found by a :class:`CacheKey` that keeps its inputs in
plain view: the stage type's full name and version, its parameters, the
keys of the results it consumes, the identities of the files it reads, and
its plugin's settings.  Its digest is what the store looks up; the fields
are what ``sdflow run --explain``, JSON events and lock files read back, and
what :meth:`CacheKey.differences` compares to say why a stage ran again.

The policy (:class:`CacheStore`):

* a result whose outputs include a *persistent* port type (a model) stays
  while the process may use it, up to ``max_persistent`` entries, the least
  recently used dropped first (the memory bound);
* any other result lives only while the run that made it still has a stage
  that needs it, then it is dropped: a sweep over a hundred seeds keeps no
  hundred latents alive.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
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

    @property
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


class CacheStore:
    """Stage results by key digest, kept by the policy above."""

    def __init__(self, max_persistent: int = 4) -> None:
        self.max_persistent = max_persistent
        self._persistent: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._run: dict[str, Mapping[str, Any]] = {}

    def get(self, digest: str) -> Mapping[str, Any] | None:
        if digest in self._persistent:
            self._persistent.move_to_end(digest)
            return self._persistent[digest]
        return self._run.get(digest)

    def put(self, digest: str, outputs: Mapping[str, Any], persistent: bool) -> None:
        if persistent:
            self._persistent[digest] = outputs
            self._persistent.move_to_end(digest)
            while len(self._persistent) > self.max_persistent:
                self._persistent.popitem(last=False)
        else:
            self._run[digest] = outputs

    def release(self, digest: str) -> None:
        """No remaining stage of this run needs the result: let it go
        (a persistent one stays)."""
        self._run.pop(digest, None)

    def end_run(self) -> None:
        self._run.clear()

    def __contains__(self, digest: str) -> bool:
        return digest in self._persistent or digest in self._run

    def __len__(self) -> int:
        return len(self._persistent) + len(self._run)
