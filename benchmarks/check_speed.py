"""How fast is ``sdflow check``?  A benchmark run by hand; it prints figures
and asserts nothing.

(a) the whole process: ``sdflow check examples/txt2img.sdflow`` started as a
    subprocess (``python -m sdflow.cli`` and the ``sdflow`` console script),
    against a bare ``python -c pass`` started the same way; and, in another
    subprocess, whether checking imported torch, diffusers or transformers.
    Target: median under 0.2 s.

(b) the parser and checker on generated recipes of 1,000 and 10,000 stages:
    ``check_source`` (parse + check), ``parse`` alone and ``check`` alone,
    in-process, median of several runs.  Target: 10,000 stages under 1 s.

Run from the repository root::

    .venv/bin/python benchmarks/check_speed.py            # full run
    .venv/bin/python benchmarks/check_speed.py --quick    # fewer runs
    .venv/bin/python benchmarks/check_speed.py --profile  # + cProfile of 10k
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "examples/txt2img.sdflow"
HEAVY = ("torch", "diffusers", "transformers")
PROCESS_TARGET_S = 0.2
LARGE_TARGET_S = 1.0

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# formatting ---------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def rule(title: str) -> None:
    print()
    print(title)
    print("-" * len(title))


# (a) whole process ----------------------------------------------------------


def time_command(argv: list[str], runs: int, warmups: int) -> tuple[list[float], int, str]:
    """Wall times of ``runs`` runs of a command (after ``warmups``), its last
    exit status and the tail of its stderr."""
    times: list[float] = []
    rc, err = 0, ""
    for i in range(warmups + runs):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        rc, err = proc.returncode, proc.stderr.decode(errors="replace").strip()
        if i >= warmups:
            times.append(elapsed)
    return times, rc, err


_IMPORT_PROBE = """
import json, sys
from sdflow.cli import main
rc = main(["check", {path!r}])
heavy = {heavy!r}
loaded = {{h: sorted(m for m in sys.modules if m == h or m.startswith(h + ".")) for h in heavy}}
print(json.dumps({{"rc": rc, "loaded": loaded, "modules": len(sys.modules)}}))
"""


def heavy_imports() -> dict:
    code = _IMPORT_PROBE.format(path=EXAMPLE, heavy=HEAVY)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"error": (proc.stderr or proc.stdout).strip()[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_process(runs: int, warmups: int) -> dict:
    rule(f"(a) whole process: sdflow check {EXAMPLE}  ({runs} runs after {warmups} warm-up{'s' if warmups != 1 else ''})")
    commands = [("python -c pass", [sys.executable, "-c", "pass"])]
    commands.append(("python -m sdflow.cli check", [sys.executable, "-m", "sdflow.cli", "check", EXAMPLE]))
    script = Path(sys.executable).parent / "sdflow"
    if script.is_file() and os.access(script, os.X_OK):
        commands.append(("sdflow check (console script)", [str(script), "check", EXAMPLE]))
    else:
        print(f"(no console script at {script}; skipped)")

    print(f"{'command':<31} {'min':>11} {'median':>11} {'max':>11}  vs python -c pass")
    results = {}
    baseline = None
    for label, argv in commands:
        times, rc, err = time_command(argv, runs, warmups)
        med = statistics.median(times)
        results[label] = med
        if baseline is None:
            baseline = med
            versus = ""
        else:
            versus = f"x{med / baseline:5.1f}, +{(med - baseline) * 1000:.1f} ms"
        status = "" if rc == 0 else f"  [exit {rc}: {err.splitlines()[-1] if err else ''}]"
        print(f"{label:<31} {ms(min(times)):>11} {ms(med):>11} {ms(max(times)):>11}  {versus}{status}")

    checks = [v for k, v in results.items() if k != "python -c pass"]
    worst = max(checks) if checks else float("nan")
    verdict = "met" if worst < PROCESS_TARGET_S else "NOT met"
    print(f"target: median under {PROCESS_TARGET_S:.1f} s -> {verdict} (slowest median {worst * 1000:.1f} ms)")

    probe = heavy_imports()
    if "error" in probe:
        print(f"heavy-import probe failed: {probe['error']}")
    else:
        loaded = probe["loaded"]
        words = ", ".join(f"{h}: {'LOADED' if loaded[h] else 'no'}" for h in HEAVY)
        clean = not any(loaded.values())
        print(f"after main(['check', ...]) (exit {probe['rc']}, {probe['modules']} modules in sys.modules): {words}")
        print(f"torch, diffusers and transformers all absent: {'yes' if clean else 'NO'}")
    return results


# (b) large generated recipes ------------------------------------------------

_HEADER = """\
# Generated by benchmarks/check_speed.py: {n} stages.
sdflow 1

param prompt = "a red circle on a blue background"
param negative_prompt = "blurry, watermark"
param seed = 42
param steps = 20
param cfg = 7.5

ckpt = load_checkpoint(name="sd15.safetensors")
"""

_BLOCK = """
positive_{i} = clip_text_encode(clip=ckpt.clip, text=prompt)
negative_{i} = clip_text_encode(clip=ckpt.clip, text=negative_prompt)
latent_{i} = empty_latent(width=512, height=512, batch=1)
denoised_{i} = sample(
    model=ckpt.model,
    positive=positive_{i},
    negative=negative_{i},
    latent=latent_{i},
    seed=seed,
    steps=steps,
    cfg=cfg,
    sampler="euler",
    scheduler="normal",
    denoise=1.0,
)
image_{i} = vae_decode(vae=ckpt.vae, latent=denoised_{i})
save_image(image=image_{i}, prefix="block_{i}")
"""
_BLOCK_STAGES = 6


def generate_recipe(stages: int) -> str:
    """A valid recipe of exactly ``stages`` stages: one load_checkpoint, then
    blocks of the default workflow (each using the recipe's params and the
    one checkpoint), then, to make up the count, extra save_image stages on
    the last block's image.  It checks with no diagnostics."""
    if stages < 1 + _BLOCK_STAGES:
        raise ValueError(f"a generated recipe needs at least {1 + _BLOCK_STAGES} stages")
    blocks, extra = divmod(stages - 1, _BLOCK_STAGES)
    parts = [_HEADER.format(n=stages)]
    parts.extend(_BLOCK.format(i=i) for i in range(blocks))
    for j in range(extra):
        parts.append(f'save_image(image=image_{blocks - 1}, prefix="extra_{j}")\n')
    return "".join(parts)


class GcWatch:
    """Time spent in the garbage collector, and its full (gen 2) collections."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.full += info["generation"] == 2

    def __enter__(self) -> "GcWatch":
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self)


def median_time(fn, repeat: int, gc_enabled: bool = True) -> tuple[float, object, GcWatch]:
    """The median wall time of ``repeat`` calls, the last call's result, and
    the garbage collector's share of the median call.  Each call starts
    after a ``gc.collect()``, with the previous call's result released."""
    runs: list[tuple[float, GcWatch]] = []
    result = None
    for _ in range(repeat):
        result = None
        gc.collect()
        if not gc_enabled:
            gc.disable()
        try:
            with GcWatch() as watch:
                start = time.perf_counter()
                result = fn()
                elapsed = time.perf_counter() - start
        finally:
            gc.enable()
        runs.append((elapsed, watch))
    runs.sort(key=lambda r: r[0])
    median = statistics.median(r[0] for r in runs)
    return median, result, runs[len(runs) // 2][1]


def bench_large(sizes: list[int], repeat: int, tmp: Path) -> dict[int, dict]:
    from sdflow.graph import check, check_source
    from sdflow.parse import parse
    from sdflow.registry import default_registry

    rule(f"(b) large generated recipes: in-process, median of {repeat} runs")
    registry = default_registry()  # built once, outside the timings

    # The first parse in a process loads the grammar (Lark, cache=True).
    example = (ROOT / EXAMPLE).read_text(encoding="utf-8")
    start = time.perf_counter()
    check_source(example, EXAMPLE, registry)
    print(f"first check_source in this process (loads the grammar): {ms(time.perf_counter() - start).strip()}")

    results: dict[int, dict] = {}
    for n in sizes:
        path = tmp / f"generated_{n}.sdflow"
        path.write_text(generate_recipe(n), encoding="utf-8")
        text = path.read_text(encoding="utf-8")  # as the CLI reads a user's file
        file = str(path)

        total, (recipe, graph, diagnostics), watch = median_time(
            lambda: check_source(text, file, registry), repeat)
        nodes = len(graph.nodes) if graph is not None else 0
        del recipe, graph
        total_nogc, _, _ = median_time(lambda: check_source(text, file, registry), repeat, gc_enabled=False)
        parse_s, (parsed, syntax), _ = median_time(lambda: parse(text, file), repeat)
        check_s, _, _ = median_time(lambda: check(parsed, registry, syntax_ok=not syntax), repeat)
        results[n] = {
            "total": total, "parse": parse_s, "check": check_s, "nogc": total_nogc,
            "gc": watch.seconds, "full_gc": watch.full,
            "lines": text.count("\n"), "nodes": nodes, "diagnostics": len(diagnostics),
        }

    print(f"{'stages':>7} {'lines':>6} {'nodes':>6} {'diags':>5} | {'check_source':>12} {'us/stage':>8} "
          f"| {'parse':>9} {'check':>9} | {'of it GC':>8} {'gen2':>4} {'GC off':>9}")
    for n, r in results.items():
        print(f"{n:>7} {r['lines']:>6} {r['nodes']:>6} {r['diagnostics']:>5} | "
              f"{r['total'] * 1e3:>9.1f} ms {r['total'] / n * 1e6:>8.1f} | "
              f"{r['parse'] * 1e3:>6.1f} ms {r['check'] * 1e3:>6.1f} ms | "
              f"{r['gc'] * 1e3:>5.1f} ms {r['full_gc']:>4} {r['nogc'] * 1e3:>6.1f} ms")
        if r["diagnostics"] or r["nodes"] != n:
            print(f"        note: expected {n} nodes and no diagnostics")
    print("(parse and check are timed apart; 'of it GC' is the collector's time within the median\n"
          " check_source run, 'gen2' its full collections; 'GC off' is check_source with gc disabled)")
    small, large = min(results), max(results)
    if small != large:
        ratio = {k: results[large][k] / results[small][k] for k in ("total", "parse", "check", "nogc")}
        print(f"ratio {large}/{small} (linear ~ {large / small:.0f}): check_source {ratio['total']:.1f}, "
              f"parse {ratio['parse']:.1f}, check {ratio['check']:.1f}, check_source GC off {ratio['nogc']:.1f}")
    biggest = results[large]["total"]
    verdict = "met" if biggest < LARGE_TARGET_S else "NOT met"
    print(f"target: {large} stages under {LARGE_TARGET_S:.0f} s -> {verdict} ({biggest:.3f} s)")
    return results


def profile_large(n: int, tmp: Path, top: int = 25) -> None:
    from sdflow.graph import check_source
    from sdflow.registry import default_registry

    rule(f"cProfile of check_source on {n} stages (top {top})")
    registry = default_registry()
    path = tmp / f"profiled_{n}.sdflow"
    path.write_text(generate_recipe(n), encoding="utf-8")
    text = path.read_text(encoding="utf-8")
    check_source(text, str(path), registry)  # warm: grammar loaded, caches filled
    print("(gc is disabled for the profiled run, so that collector pauses are not charged to\n"
          " whichever function happened to allocate; the table above shows the collector's share)")
    gc.collect()
    gc.disable()
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        check_source(text, str(path), registry)
        profiler.disable()
    finally:
        gc.enable()
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(key).print_stats(top)
        print(f"\n-- by {key} --")
        lines = out.getvalue().splitlines()
        start = next((i for i, l in enumerate(lines) if "function calls" in l), 0)
        print("\n".join(l for l in lines[start:] if l.strip()))


# main -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None,
                        help="timed subprocess runs in (a) (default 15; 5 with --quick)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="in-process runs per measure in (b) (default 5; 3 with --quick)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000],
                        help="stage counts in (b) (default 1000 10000)")
    parser.add_argument("--quick", action="store_true", help="fewer runs, one warm-up")
    parser.add_argument("--only", choices=("process", "large"), help="run one part only")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile check_source on the largest size")
    args = parser.parse_args(argv)
    runs = max(1, args.runs if args.runs is not None else (5 if args.quick else 15))
    repeat = max(1, args.repeat if args.repeat is not None else (3 if args.quick else 5))
    warmups = 1 if args.quick else 2

    print(f"python {sys.version.split()[0]} ({sys.executable}); {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    if args.only != "large":
        bench_process(runs, warmups)
    if args.only != "process" or args.profile:
        with tempfile.TemporaryDirectory(prefix="sdflow-bench-") as tmp:
            if args.only != "process":
                bench_large(sorted(set(args.sizes)), repeat, Path(tmp))
            if args.profile:
                profile_large(max(args.sizes), Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
