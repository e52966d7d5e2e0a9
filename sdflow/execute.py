"""Runs a checked :class:`StageGraph`: order, cache, progress, interrupt.

The executor knows nothing of diffusion.  It runs the stages that lead to
an output stage, each after its inputs, calling the ``run`` function that
the stage's plugin declared::

    def run(ctx: RunContext, params: BaseModel, **inputs) -> dict[str, Any]

which returns the stage's outputs by port name.  Results are cached in the
process by content: the stage id, its plugin's version, its parameters, the
keys of its inputs, the device options, and what the stage's ``identify``
function says of the files it reads (a model's SHA-256, not its name).  So a
stage used by several consumers, or unchanged between two runs of one
process, runs once.  Output stages always run.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from sdflow.ast import Span
from sdflow.diagnostics import Diagnostic, DiagnosticError
from sdflow.graph import StageGraph, StageNode, upstream


class StageError(Exception):
    """A stage cannot run, for a reason the user can fix (a missing file, a
    corrupt checkpoint).  Shown at the stage's line as a diagnostic."""

    def __init__(self, message: str, help: str | None = None, code: str = "E601"):
        super().__init__(message)
        self.message, self.help, self.code = message, help, code


class Interrupted(Exception):
    """The user asked to stop (Ctrl-C); raised between steps."""


class RunError(DiagnosticError):
    """A stage failed at run time; carries the diagnostic at its line."""


@dataclass
class RunOptions:
    """How to run: given by the command line, read by the stages."""

    device: str = "auto"
    dtype: str = "auto"
    output_dir: Path = Path("output")
    models_dirs: tuple[Path, ...] = ()
    recipe_dir: Path | None = None
    allow_pickle: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, str]:
        """The options that change what a stage computes."""
        return {"device": self.device, "dtype": self.dtype}


@dataclass
class RunResult:
    """What a run did: the files written, the stages run and reused."""

    files: list[Path] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Events:
    """Progress for people (a bar on a terminal, nothing when piped) and for
    tools (``--json``: one JSON object per line on ``json_stream``)."""

    def __init__(self, json_stream: TextIO | None = None, bar_stream: TextIO | None = None):
        self.json_stream = json_stream
        stream = bar_stream if bar_stream is not None else sys.stderr
        self.bar_stream = stream if (json_stream is None and _is_tty(stream)) else None

    def emit(self, event: str, **fields: Any) -> None:
        if self.json_stream is not None:
            self.json_stream.write(json.dumps({"event": event, **fields}, default=str) + "\n")
            self.json_stream.flush()

    def status(self, text: str, final: bool = False) -> None:
        """One line about a stage, rewritten in place until it is final."""
        if self.bar_stream is not None:
            self.bar_stream.write(f"\r{text:<72}" + ("\n" if final else ""))
            self.bar_stream.flush()

    def bar(self, label: str, done: int, total: int, seconds: float, final: bool = False) -> None:
        if self.bar_stream is None:
            return
        width = 24
        filled = int(width * done / total) if total else width
        text = f"\r{label:<28} {'#' * filled}{'.' * (width - filled)} {done}/{total} {seconds:6.1f}s"
        self.bar_stream.write(text + ("\n" if final else ""))
        self.bar_stream.flush()


def _is_tty(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """Steps of one long piece of work inside a stage (sampling steps)."""

    def __init__(self, ctx: RunContext, total: int, what: str):
        self.ctx, self.total, self.what, self.done = ctx, total, what, 0
        self.start = time.perf_counter()

    def step(self, n: int = 1) -> None:
        """Count ``n`` steps done; raises :class:`Interrupted` if asked to stop."""
        self.done += n
        self.ctx.events.emit("step", stage=self.ctx.key, what=self.what, step=self.done, total=self.total)
        self.ctx.events.bar(f"{self.ctx.key} ({self.what})", self.done, self.total,
                            time.perf_counter() - self.start, final=self.done >= self.total)
        self.ctx.check_interrupt()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        return None


class RunContext:
    """What a stage's ``run`` function is handed besides its parameters and inputs."""

    def __init__(self, executor: Executor, graph: StageGraph, node: StageNode, options: RunOptions):
        self.executor, self.graph, self.node, self.options = executor, graph, node, options
        self.events = executor.events

    @property
    def key(self) -> str:
        return self.node.key

    def progress(self, total: int, what: str = "steps") -> Progress:
        return Progress(self, total, what)

    def check_interrupt(self) -> None:
        if self.executor.interrupted:
            raise Interrupted()

    def emit(self, event: str, **fields: Any) -> None:
        self.events.emit(event, stage=self.key, **fields)

    def file_written(self, path: Path) -> None:
        """Report a file a stage wrote (listed in the run's result)."""
        self.executor.result.files.append(Path(path))
        self.emit("file_written", path=str(path))

    def file_identity(self, path: Path) -> str:
        return file_sha256(path)

    def upstream_identities(self) -> dict[str, str]:
        """What the ``identify`` functions of this stage and every stage it
        depends on reported (a model's name -> its SHA-256)."""
        merged: dict[str, str] = {}
        for key in upstream(self.graph.nodes, [self.node.key]):
            merged.update(self.executor.identities.get(key, {}))
        return merged


_HASHES: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file (or of every file in a folder, by relative path),
    computed once per process for each (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if file != path:
                digest.update(str(file.relative_to(path)).encode() + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def resolve_callable(target: Callable | str | None) -> Callable | None:
    """A plugin's ``run``/``identify``: a function, or ``"module:function"``
    imported only when the stage first runs (so declaring stays light)."""
    if target is None or callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class Executor:
    """Runs checked graphs; keeps its cache between runs in one process."""

    def __init__(self, events: Events | None = None):
        self.events = events or Events()
        self.cache: dict[str, Mapping[str, Any]] = {}
        self.identities: dict[str, dict[str, str]] = {}
        self.interrupted = False
        self.result = RunResult()

    def interrupt(self) -> None:
        """Ask the run to stop at the next step (safe from a signal handler)."""
        self.interrupted = True

    def run(self, graph: StageGraph, options: RunOptions) -> RunResult:
        """Run every stage that leads to an output; raises :class:`RunError`
        when a stage fails and :class:`Interrupted` when asked to stop."""
        self.result = RunResult()
        self.interrupted = False
        start = time.perf_counter()
        results: dict[str, Mapping[str, Any]] = {}
        keys: dict[str, str] = {}
        self.events.emit("run_started", stages=list(graph.order))
        for key in graph.order:
            node = graph.nodes[key]
            ctx = RunContext(self, graph, node, options)
            inputs = {port: results[c.stage][c.port] for port, c in node.inputs.items()}
            identity = self._identify(ctx, node)
            self.identities[key] = identity
            keys[key] = cache_key(node, {p: f"{keys[c.stage]}:{c.port}" for p, c in node.inputs.items()},
                                  identity, options)
            cached = None if node.spec.output else self.cache.get(keys[key])
            if cached is not None:
                results[key] = cached
                self.result.cached.append(key)
                self.events.emit("stage_done", stage=key, type=node.spec.id, cached=True, seconds=0.0)
                continue
            results[key] = self._run_stage(ctx, node, inputs)
            if not node.spec.output:
                self.cache[keys[key]] = results[key]
            self.result.ran.append(key)
        self.result.seconds = time.perf_counter() - start
        self.events.emit("run_done", seconds=round(self.result.seconds, 3),
                         files=[str(f) for f in self.result.files])
        return self.result

    def _identify(self, ctx: RunContext, node: StageNode) -> dict[str, str]:
        identify = resolve_callable(getattr(node.spec, "identify", None))
        if identify is None:
            return {}
        try:
            return dict(identify(ctx, node.params) or {})
        except StageError as err:
            raise RunError([_diagnostic(node, err.code, err.message, err.help)]) from None

    def _run_stage(self, ctx: RunContext, node: StageNode, inputs: dict[str, Any]) -> Mapping[str, Any]:
        run = resolve_callable(node.spec.run)
        if run is None:
            raise RunError([_diagnostic(node, "E603", f"stage type '{node.spec.id}' cannot run",
                                        f"plugin '{node.spec.plugin}' declares it without a run function")])
        self.events.emit("stage_started", stage=node.key, type=node.spec.id, line=node.span.line)
        label = f"{node.key} ({node.spec.id})"
        self.events.status(f"{label} ...")
        start = time.perf_counter()
        try:
            outputs = run(ctx, node.params, **inputs) or {}
        except (Interrupted, KeyboardInterrupt):
            raise Interrupted() from None
        except StageError as err:
            raise RunError([_diagnostic(node, err.code, err.message, err.help)]) from None
        except Exception as err:  # a stage's own failure, shown at its line
            inputs_text = ", ".join(f"{p}={c.stage}.{c.port}" for p, c in node.inputs.items())
            raise RunError([_diagnostic(
                node, "E602", f"stage '{node.key}' ({node.spec.id}) failed: {type(err).__name__}: {err}",
                f"its inputs: {inputs_text}" if inputs_text else None)]) from err
        missing = set(node.spec.outputs) - set(outputs)
        if missing:
            raise RunError([_diagnostic(node, "E603", f"stage type '{node.spec.id}' gave no {sorted(missing)}",
                                        f"a bug in plugin '{node.spec.plugin}'")])
        seconds = time.perf_counter() - start
        self.events.status(f"{label} done in {seconds:.2f}s", final=True)
        self.events.emit("stage_done", stage=node.key, type=node.spec.id, cached=False, seconds=round(seconds, 3))
        return outputs


def cache_key(node: StageNode, input_keys: Mapping[str, str], identity: Mapping[str, str],
              options: RunOptions) -> str:
    payload = {
        "stage": node.spec.id,
        "plugin": node.spec.plugin,
        "version": node.spec.version,
        "params": node.params.model_dump(mode="json"),
        "inputs": dict(input_keys),
        "identity": dict(identity),
        "options": options.fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _diagnostic(node: StageNode, code: str, message: str, help: str | None) -> Diagnostic:
    span = node.span
    head = Span(span.file, span.line, span.column, span.line,
                span.end_column if span.end_line == span.line else span.column + 1)
    return Diagnostic(code, message, head, help)

