"""What each stage of a run cost: wall time and memory (``sdflow run --profile``).

The executor measures around each stage when asked (``Executor(profile=True)``)
and keeps one :class:`StageProfile` per stage in ``RunResult.profile``;
:func:`profile_table` renders them for people, :meth:`StageProfile.event_fields`
for the ``stage_done`` event of ``--json``.

Memory is the process's, read from the operating system with nothing to
install: the peak resident set from ``getrusage`` (so the stage that set the
peak shows a growth), the current one from ``/proc/self/statm`` where there
is one.  GPU memory is read from torch only when torch is already imported
and CUDA is in use: profiling never imports torch, so a recipe without a
torch stage stays torch-free.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Iterable

try:
    import resource
except ImportError:  # pragma: no cover - Windows has no getrusage
    resource = None

MIB = 1024 * 1024


@dataclass(frozen=True)
class StageProfile:
    """One stage's cost.  Memory in MiB; None where the system cannot say."""

    key: str  # the stage's key in the recipe
    type: str  # its stage type's id
    cached: bool  # reused from the cache, not run
    seconds: float  # the run function's wall time (0.0 when reused), as stage_done reports it
    rss_mib: float | None  # the process's resident memory after the stage
    peak_rss_mib: float | None  # the process's peak resident memory after the stage
    peak_rss_growth_mib: float | None  # how much that peak grew during the stage
    cuda_peak_mib: float | None  # the most CUDA memory allocated during it (torch in use only)

    def event_fields(self) -> dict[str, Any]:
        """The memory figures as ``stage_done`` carries them under ``--profile``."""
        return {name: None if value is None else round(value, 1) for name, value in (
            ("rss_mib", self.rss_mib), ("peak_rss_mib", self.peak_rss_mib),
            ("peak_rss_growth_mib", self.peak_rss_growth_mib), ("cuda_peak_mib", self.cuda_peak_mib))}


class StageMeter:
    """Started just before a stage runs, stopped just after: reads the peak
    RSS on both sides and, where CUDA is in use, resets torch's peak so
    that what it reads after is this stage's own."""

    def __init__(self) -> None:
        self.peak_before = peak_rss_mib()
        torch = _torch_on_cuda()
        if torch is not None:
            torch.cuda.reset_peak_memory_stats()

    def stop(self, key: str, type: str, cached: bool, seconds: float) -> StageProfile:
        peak = peak_rss_mib()
        growth = None if peak is None or self.peak_before is None else max(0.0, peak - self.peak_before)
        # A stage that first touched CUDA was not reset before it; its peak
        # since CUDA started is still its own.
        torch = _torch_on_cuda()
        cuda = None if torch is None else torch.cuda.max_memory_allocated() / MIB
        return StageProfile(key, type, cached, seconds, rss_mib(), peak, growth, cuda)


def peak_rss_mib() -> float | None:
    """The process's peak resident memory so far (``ru_maxrss``: KiB on
    Linux, bytes on macOS), never below the current one (Linux updates the
    peak lazily, so it may lag the current figure by a little)."""
    if resource is None:  # pragma: no cover
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak / MIB if sys.platform == "darwin" else peak / 1024
    return max(peak, rss_mib() or 0.0)


def rss_mib() -> float | None:
    """The process's resident memory now, where ``/proc/self/statm`` tells it."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def _torch_on_cuda() -> Any:
    """torch, if something already imported it and CUDA is initialised; else None."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        return torch if cuda is not None and cuda.is_initialized() else None
    except Exception:  # a torch half imported, or built without CUDA
        return None


def profile_table(rows: Iterable[StageProfile], total_seconds: float) -> str:
    """The rows as a table, in run order, and a total line: the run's wall
    time (its preflight included), the memory at its end, and how much the
    peak grew during its stages.  The CUDA column only where a stage used CUDA."""
    rows = list(rows)
    cuda = any(row.cuda_peak_mib is not None for row in rows)
    head = ["stage", "type", "", "seconds", "RSS MiB", "peak MiB", "+peak"] + ["CUDA MiB"] * cuda
    lines = [[_cut(row.key, 20), _cut(row.type, 22), "reused" if row.cached else "ran", f"{row.seconds:.3f}",
              _mib(row.rss_mib), _mib(row.peak_rss_mib), _mib(row.peak_rss_growth_mib, "+")]
             + [_mib(row.cuda_peak_mib)] * cuda for row in rows]
    growths = [row.peak_rss_growth_mib for row in rows if row.peak_rss_growth_mib is not None]
    last = rows[-1] if rows else None
    total = ["total", "", "", f"{total_seconds:.3f}", _mib(last and last.rss_mib), _mib(last and last.peak_rss_mib),
             _mib(sum(growths) if growths else None, "+")]
    total += [_mib(max((r.cuda_peak_mib for r in rows if r.cuda_peak_mib is not None), default=None))] * cuda
    widths = [max(len(line[i]) for line in [head, *lines, total]) for i in range(len(head))]
    rule = ["-" * width for width in widths]

    def render(cells: list[str]) -> str:
        text = "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))
        return text.rstrip()

    return "\n".join(render(cells) for cells in [head, *lines, rule, total])


def _mib(value: float | None, sign: str = "") -> str:
    return "-" if value is None else f"{sign}{value:.1f}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "~"
