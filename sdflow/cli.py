"""The ``sdflow`` command: check, fmt, stages, plugins, graph.

Exit codes: 0 when clean (warnings allowed), 1 when a recipe has errors or
is not formatted (``fmt --check``), 2 for a mistake on the command line (a
file that is not a recipe), 130 when interrupted.  An unexpected failure is
one line on stderr and exit 1, never a traceback (``SDFLOW_DEBUG=1`` shows
it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from sdflow import __version__
from sdflow.diagnostics import MAX_SHOWN, did_you_mean, print_diagnostics

EXIT_OK, EXIT_DIAGNOSTICS, EXIT_USAGE = 0, 1, 2


class _Usage(Exception):
    pass


class _PluginFailure(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(with_settings=_command_of(argv) in ("run", "lock", "check", "replay"))
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _COMMAND.strict = args.strict_plugins or os.environ.get("SDFLOW_STRICT_PLUGINS", "") not in ("", "0")
    _COMMAND.warned = False
    try:
        return args.handler(args)
    except _Usage as err:
        print(f"sdflow: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except _PluginFailure:
        return EXIT_DIAGNOSTICS
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sdflow stages | head`: the reader has gone
        sys.stderr.close()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as err:  # a bug in sdflow or a plugin: one clear line, never a traceback
        if os.environ.get("SDFLOW_DEBUG"):
            raise
        from sdflow.text import visible

        print(f"sdflow: internal error: {type(err).__name__}: {visible(str(err))[:500]}\n"
              "  this is a bug; set SDFLOW_DEBUG=1 to see where it happened, and please report it",
              file=sys.stderr)
        return EXIT_DIAGNOSTICS


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named on the command line (before argparse runs)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _parser(with_settings: bool = False) -> argparse.ArgumentParser:
    """The command line; ``run``'s flags include every plugin's settings
    when ``with_settings`` (loading the plugins only when they are needed)."""
    parser = argparse.ArgumentParser(prog="sdflow", description="Stable Diffusion pipelines as recipes.")
    parser.add_argument("--version", action="version", version=f"sdflow {__version__}")
    parser.add_argument("--strict-plugins", action="store_true",
                        help="a plugin that fails to load or register is an error (exit 1), not a warning")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser("check", help="check recipes without running them")
    check.add_argument("files", nargs="+", metavar="FILE")
    _add_set(check)
    check.add_argument("--strict", action="store_true", help="treat warnings as errors")
    check.add_argument("--locked", action="store_true",
                       help="also check that the models each FILE.lock pins are found, unchanged (loads nothing)")
    check.add_argument("--no-sweep", action="store_true",
                       help="check the recipe as a run of its params' defaults, not each point of its sweep")
    from sdflow.sweep import MAX_POINTS

    check.add_argument("--yes", action="store_true", help=f"check a sweep of more than {MAX_POINTS} points")
    if with_settings:
        from sdflow.settings import add_arguments

        add_arguments(check, _registry(quiet=True))
    check.set_defaults(handler=_cmd_check)

    fmt = sub.add_parser("fmt", help="rewrite recipes in the canonical layout")
    fmt.add_argument("files", nargs="+", metavar="FILE")
    fmt.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    fmt.set_defaults(handler=_cmd_fmt)

    stages = sub.add_parser("stages", help="list stage types, or describe one")
    stages.add_argument("name", nargs="?")
    stages.add_argument("--markdown", action="store_true", help="the stage reference, as Markdown")
    stages.set_defaults(handler=_cmd_stages)

    run = sub.add_parser("run", help="run a recipe: load models, sample, write images")
    run.add_argument("file", metavar="FILE")
    _add_set(run)
    run.add_argument("--output", default="output", metavar="DIR", help="folder for images (default ./output)")
    run.add_argument("--json", action="store_true", help="print one JSON event per line on stdout")
    run.add_argument("--explain", action="store_true",
                     help="say for each stage why it ran or was reused (on stderr)")
    run.add_argument("--profile", action="store_true",
                     help="after the run, a table of each stage's seconds and memory (on stderr; "
                          "with --json, the figures in each stage_done event too); in a sweep, one a point")
    run.add_argument("--sweep", action="append", default=[], metavar="NAME=VALUES",
                     help="run once per value: 1..8 (a range), 5,7.5 (a list); several --sweep: every combination;"
                          " replaces the values the recipe's sweep gives NAME")
    run.add_argument("--zip", action="store_true", help="pair the --sweep axes value by value instead")
    run.add_argument("--no-sweep", action="store_true",
                     help="run the recipe once with its params' defaults (and --set), not its sweep")
    run.add_argument("--yes", action="store_true", help=f"run a sweep of more than {MAX_POINTS} points")
    run.add_argument("--locked", action="store_true",
                     help="refuse to run unless the models are those FILE.lock pins (versions that differ: a warning)")
    if with_settings:
        from sdflow.settings import add_arguments

        add_arguments(run, _registry(quiet=True))
    run.set_defaults(handler=_cmd_run)

    lock = sub.add_parser("lock", help="write FILE.lock: the models, stage versions and versions a run depends on")
    lock.add_argument("file", metavar="FILE")
    _add_set(lock)
    lock.add_argument("--sweep", action="append", default=[], metavar="NAME=VALUES",
                      help="lock the models of every point of this sweep too (as run --sweep takes it)")
    lock.add_argument("--zip", action="store_true", help="pair the --sweep axes value by value")
    lock.add_argument("--no-sweep", action="store_true", help="lock the recipe's defaults alone, not its sweep")
    lock.add_argument("--yes", action="store_true", help="lock a sweep of more than 256 points")
    if with_settings:
        from sdflow.settings import add_arguments

        add_arguments(lock, _registry(quiet=True))
    lock.set_defaults(handler=_cmd_lock)

    show = sub.add_parser("show", help="print the recipe and settings stored in an image")
    show.add_argument("image", metavar="IMAGE.png")
    show.add_argument("--recipe", action="store_true", help="print only the recipe text")
    show.set_defaults(handler=_cmd_show)

    plugins = sub.add_parser("plugins", help="list plugins, their versions and what they add")
    plugins.set_defaults(handler=_cmd_plugins)

    replay = sub.add_parser("replay", help="render an image again from what it recorded; say if it is the same")
    replay.add_argument("image", metavar="IMAGE.png")
    _add_set(replay)
    replay.add_argument("--output", default="output", metavar="DIR", help="folder for the new images (default ./output)")
    if with_settings:
        from sdflow.settings import add_arguments

        add_arguments(replay, _registry(quiet=True))
    replay.set_defaults(handler=_cmd_replay)

    imp = sub.add_parser("import", help="make a recipe from an image or file of another tool (AUTOMATIC1111...)")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--output", "-o", metavar="RECIPE", default=None,
                     help="write the recipe here (a new file) instead of printing it")
    imp.set_defaults(handler=_cmd_import)

    graph = sub.add_parser("graph", help="print a recipe's stage graph")
    graph.add_argument("file", metavar="FILE")
    graph.add_argument("--format", choices=("dot", "mermaid"), default="dot")
    _add_set(graph)
    graph.set_defaults(handler=_cmd_graph)

    export = sub.add_parser("export", help="write a recipe in another tool's format (ComfyUI's workflows...)")
    export.add_argument("file", metavar="FILE")
    export.add_argument("--format", required=True, metavar="FORMAT",
                        help="the format, from a plugin: comfyui-api, comfyui-ui (sdflow plugins lists them)")
    export.add_argument("--output", "-o", metavar="PATH", default=None,
                        help="write it here (a new file) instead of printing it")
    _add_set(export)
    export.set_defaults(handler=_cmd_export)

    diff = sub.add_parser("diff", help="compare two recipes or images by meaning: params, stages, models, versions")
    diff.add_argument("files", nargs="+", metavar="FILE", help="two recipes or PNGs (with --git: git's arguments)")
    diff.add_argument("--json", action="store_true", help="print the differences as a JSON list")
    diff.add_argument("--git", action="store_true",
                      help="act as git's diff driver: git config diff.sdflow.command 'sdflow diff --git'")
    diff.set_defaults(handler=_cmd_diff)
    for command in (check, fmt, run, lock, graph, diff, replay, export):
        command.add_argument("--max-diagnostics", type=_count, default=MAX_SHOWN, metavar="N",
                             help=f"print at most N diagnostics of a recipe (default {MAX_SHOWN}; 0 for all)")
    for command in sub.choices.values():  # `sdflow check --strict-plugins ...` works too
        command.add_argument("--strict-plugins", action="store_true", default=argparse.SUPPRESS,
                             help="a plugin that fails to load or register is an error (exit 1)")
    return parser


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a count (0, 1, 2, ...)")
    return value


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a param of the recipe (repeatable)")


def _overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise _Usage(f"--set {pair}: write --set name=value")
        overrides[name.strip()] = value
    return overrides


def _read(path: str):
    """The recipe at ``path`` (a :class:`sdflow.source.Source`), or a usage
    error when it is not a recipe file at all."""
    from sdflow.source import SourceError, read_source

    try:
        return read_source(path)
    except SourceError as err:
        raise _Usage(str(err)) from None


class _Command:
    """What one command line asked of the plugins: strict or not, and
    whether their problems were shown yet (once per command)."""

    strict = False
    warned = False


_COMMAND = _Command()


def _registry(quiet: bool = False):
    """The registry of the installed plugins; its problems are warnings on
    stderr (once a command), or with ``--strict-plugins`` errors that end
    the command (exit 1)."""
    from sdflow.registry import default_registry

    registry = default_registry()
    if quiet or _COMMAND.warned:
        return registry
    _COMMAND.warned = True
    for problem in registry.problems:
        print(f"sdflow: {'error' if _COMMAND.strict else 'warning'}: {problem}", file=sys.stderr)
    if _COMMAND.strict and registry.problems:
        raise _PluginFailure()
    return registry


def _check_file(path: str, registry, overrides):
    from sdflow.graph import UsageError, check_source

    read = _read(path)
    if read.diagnostics:  # not UTF-8: nothing more can be said of it
        return read.text, None, list(read.diagnostics)
    try:
        _recipe, graph, diagnostics = check_source(read.text, path, registry, overrides)
    except UsageError as err:
        raise _Usage(str(err)) from None
    return read.text, graph, diagnostics


def _checked_graph(args):
    """Check ``args.file`` with ``args.set``; print its diagnostics; return
    its source and its graph (None when it has errors)."""
    source, graph, diagnostics = _check_file(args.file, _registry(), _overrides(args.set))
    print_diagnostics(diagnostics, {args.file: source}, sys.stderr, args.max_diagnostics)
    return source, graph


def _cmd_check(args) -> int:
    registry = _registry()
    overrides = _overrides(args.set)
    status = EXIT_OK
    for path in args.files:
        swept = 0
        try:
            source, graph, diagnostics = _check_file(path, registry, overrides)
            if graph is not None and not args.no_sweep:  # each point of the recipe's sweep too
                _axes, checked = _sweep_points(args, registry, graph, overrides)
                if checked is not None:
                    diagnostics = sorted([*diagnostics, *checked.diagnostics], key=lambda d: d.sort_key())
                    graph, swept = (graph if checked.ok else None), len(checked.points)
        except _Usage as err:  # one file that is not a recipe; the others are still checked
            print(f"sdflow: error: {err}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        if graph is not None and args.locked:
            graphs = list(checked.graphs) if swept else [graph]
            diagnostics = [*diagnostics, *_lock_problems(registry, args, path, source, graphs)]
            graph = None if any(d.is_error for d in diagnostics) else graph
        print_diagnostics(diagnostics, {path: source}, sys.stderr, args.max_diagnostics)
        failed = graph is None or (args.strict and diagnostics)
        if failed:
            status = max(status, EXIT_DIAGNOSTICS)
        elif not diagnostics:
            print(f"{path}: ok" + (f" (a sweep of {swept:,} point{'s' * (swept != 1)})" if swept else ""),
                  file=sys.stderr)
    return status


def _run_options(registry, args, recipe_dir: Path):
    """How to run: the output folder, the recipe's folder, the plugins' settings from the command line."""
    from sdflow.execute import RunOptions
    from sdflow.settings import SettingsError, resolve

    try:
        settings = resolve(registry, args)
    except SettingsError as err:
        raise _Usage(str(err)) from None
    return RunOptions(output_dir=Path(getattr(args, "output", "output")), recipe_dir=recipe_dir, settings=settings)


def _folder_of(file: str) -> Path:
    return Path(file).resolve().parent


def _lock_of(registry, args, file: str, source: str, graphs: list) -> dict:
    """The lock ``file``'s run would have here (raises RunError): of every
    point of its sweep when ``graphs`` are the points', each model of each
    point in it."""
    from sdflow.execute import Executor
    from sdflow.lock import make_lock, merged

    versions = {name: info.version for name, info in registry.plugins.items()}
    options = _run_options(registry, args, _folder_of(file))
    executor = Executor(plugin_versions=versions)
    return merged([make_lock(graph, executor, options, file, source, _overrides(args.set), versions)
                   for graph in graphs])


def _points_of(args, registry, graph) -> list:
    """The graphs of each point of the recipe's sweep (with the command
    line's ``--sweep``, if it has one), or the graph alone."""
    if args.no_sweep:
        return [graph]
    from sdflow.sweep import SweepError, parse_axis

    try:
        command = [parse_axis(spec) for spec in args.sweep]
    except SweepError as err:
        raise _Usage(str(err)) from None
    _axes, checked = _sweep_points(args, registry, graph, _overrides(args.set), command)
    return [graph] if checked is None or not checked.ok else list(checked.graphs)


def _lock_problems(registry, args, file: str, source: str, graphs: list) -> list:
    """What differs from ``file``'s lock file (``--locked``), for every
    point of a sweep when ``graphs`` are the points'."""
    from sdflow.execute import RunError
    from sdflow.lock import compare, lock_path, read_lock

    path = lock_path(Path(file))
    lock, problem = read_lock(path)
    if problem is not None:
        return [problem]
    try:
        now = _lock_of(registry, args, file, source, graphs)
    except RunError as err:
        return list(err.diagnostics)
    return compare(lock, path, now, graphs[0])


def _cmd_lock(args) -> int:
    from sdflow.execute import RunError
    from sdflow.lock import dump, lock_path

    registry = _registry()
    source, graph = _checked_graph(args)
    if graph is None:
        return EXIT_DIAGNOSTICS
    try:
        lock = _lock_of(registry, args, args.file, source, _points_of(args, registry, graph))
    except RunError as err:
        print_diagnostics(err.diagnostics, {args.file: source}, sys.stderr, args.max_diagnostics)
        return EXIT_DIAGNOSTICS
    path = lock_path(Path(args.file))
    _write_atomic(path, dump(lock))
    print(path)
    return EXIT_OK


def _cmd_fmt(args) -> int:
    from sdflow.format import format_recipe
    from sdflow.parse import parse

    status = EXIT_OK
    for path in args.files:
        try:
            read = _read(path)
        except _Usage as err:
            print(f"sdflow: error: {err}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        recipe, diagnostics = (None, list(read.diagnostics)) if read.diagnostics else parse(read.text, path)
        if diagnostics:
            print_diagnostics(diagnostics, {path: read.text}, sys.stderr, args.max_diagnostics)
            status = max(status, EXIT_DIAGNOSTICS)
            continue
        formatted = format_recipe(recipe)
        if formatted == read.text:
            continue
        if args.check:
            print(f"{path}: would reformat", file=sys.stderr)
            status = max(status, EXIT_DIAGNOSTICS)
            continue
        try:
            _write_atomic(Path(path), formatted)
        except OSError as err:
            print(f"sdflow: error: {path}: cannot rewrite it: {err.strerror or err}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        print(f"{path}: reformatted", file=sys.stderr)
    return status


def _write_atomic(path: Path, text: str) -> None:
    """Replace a file's text in one step: a crash leaves the old or the new
    (a new file gets an ordinary file's permissions).

    A symbolic link stays a link: the file it points to is the one rewritten.
    The new text is written beside that file and renamed over it, keeping
    its permissions.
    """
    from sdflow.files import ordinary_mode

    path = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else ordinary_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cmd_stages(args) -> int:
    from sdflow.describe import stage_detail, stage_reference, stage_summary

    registry = _registry()
    if args.name is None:
        print(stage_reference(registry) if args.markdown else stage_summary(registry), end="\n" * (not args.markdown))
        return EXIT_OK
    found = registry.candidates(args.name)
    if len(found) > 1:
        raise _Usage(f"stage type '{args.name}' is defined by several plugins; name one: "
                     + ", ".join(s.qualified for s in found))
    if not found:
        hint = did_you_mean(args.name, registry.names()) or "run 'sdflow stages' to list them"
        raise _Usage(f"unknown stage type '{args.name}'; {hint}")
    print(stage_detail(found[0]))
    return EXIT_OK


def _cmd_run(args) -> int:
    from sdflow.execute import Events, Executor
    from sdflow.sweep import declares_sweep

    if args.sweep and args.no_sweep:
        raise _Usage("--sweep and --no-sweep ask for opposite things; give one")
    registry = _registry()
    options = _run_options(registry, args, _folder_of(args.file))
    source, graph = _checked_graph(args)
    if graph is None:
        return EXIT_DIAGNOSTICS
    if args.sweep or (declares_sweep(graph.recipe) and not args.no_sweep):
        swept = _cmd_sweep(args, registry, options, source, graph)
        if swept is not None:
            return swept
    if args.locked:
        problems = _lock_problems(registry, args, args.file, source, [graph])
        print_diagnostics(problems, {args.file: source}, sys.stderr, args.max_diagnostics)
        if any(d.is_error for d in problems):
            return EXIT_DIAGNOSTICS
    versions = {name: info.version for name, info in registry.plugins.items()}
    executor = Executor(Events(json_stream=sys.stdout if args.json else None), plugin_versions=versions,
                        explain=sys.stderr if args.explain else None, profile=args.profile)
    result = _run_graph(executor, graph, options, {args.file: source}, args)
    if isinstance(result, int):
        return result
    if args.profile:
        from sdflow.profile import profile_table

        print(profile_table(result.profile, result.seconds), file=sys.stderr)
    if not args.json:
        for path in result.files:
            print(path)
    return EXIT_OK


def _sweep_points(args, registry, graph, overrides: dict[str, str], command=()):
    """The sweep of a checked recipe (its ``graph``) with the command line's
    axes and ``--set`` values: its axes and every point checked, or
    ``([], None)`` when there is nothing to sweep.  More than MAX_POINTS
    points without ``--yes``: a usage error when the command line sweeps
    too, else a diagnostic at the recipe's sweep."""
    from sdflow.graph import UsageError
    from sdflow.sweep import MAX_POINTS, CheckedSweep, SweepError, check_points, count, plan, points, too_many

    try:
        axes = plan(graph.recipe, command, getattr(args, "zip", False), overrides)
    except SweepError as err:
        raise _Usage(str(err)) from None
    if not axes:
        return [], None
    total = count(axes)
    if total > MAX_POINTS and not args.yes:
        if command:
            raise _Usage(f"the sweep has {total:,} points (more than {MAX_POINTS}); add --yes to run them all")
        return axes, CheckedSweep([], [], [too_many(graph.recipe, axes, total)], [])
    try:  # what the recipe as written gave (its graph's warnings) is not said again for each point
        return axes, check_points(graph.recipe, registry, overrides, graph.warnings, points(axes), total)
    except UsageError as err:
        raise _Usage(str(err)) from None


def _cmd_sweep(args, registry, options, source: str, graph):
    """A sweep, the recipe's and ``--sweep``'s (see :mod:`sdflow.sweep`):
    every point checked, then run with one executor, each point's images
    written as a run writes them, and a labelled contact sheet beside them.
    None when ``--set`` left no axis to sweep: the recipe runs once."""
    from sdflow.cache import CacheStore
    from sdflow.execute import Events, Executor
    from sdflow.sweep import SweepError, SweepProgress, contact_sheets, parse_axis, sheet_record, write_sheet

    try:
        command = [parse_axis(spec) for spec in args.sweep]
    except SweepError as err:
        raise _Usage(str(err)) from None
    axes, checked = _sweep_points(args, registry, graph, _overrides(args.set), command)
    if checked is None:
        return None
    sources = {args.file: source}
    print_diagnostics(checked.diagnostics, sources, sys.stderr, args.max_diagnostics)
    for point, found in checked.elsewhere:  # problems of the command line's values, where they are used
        print(f"sdflow: sweep point {point.number} of {len(checked.points)} ({point.label}):", file=sys.stderr)
        print_diagnostics(found, sources, sys.stderr, args.max_diagnostics)
    if not checked.ok:
        return EXIT_DIAGNOSTICS
    planned, graphs = checked.points, checked.graphs
    if args.locked:  # each point's models must be the ones the lock pins
        problems = _lock_problems(registry, args, args.file, source, graphs)
        print_diagnostics(problems, sources, sys.stderr, args.max_diagnostics)
        if any(d.is_error for d in problems):
            return EXIT_DIAGNOSTICS
    versions = {name: info.version for name, info in registry.plugins.items()}
    events = Events(json_stream=sys.stdout if args.json else None)
    # The points share what they have in common (an encoded prompt), not what is large (an image).
    executor = Executor(events, cache=CacheStore(keep_small=True), plugin_versions=versions,
                        explain=sys.stderr if args.explain else None, profile=args.profile)
    progress = SweepProgress(events, len(planned))
    firsts, written = [], []
    for point, graph in zip(planned, graphs):
        progress.point(point)
        where = f"sweep point {point.number} ({point.label})"
        result = _run_graph(executor, graph, options, sources, args, where)
        if isinstance(result, int):
            return result
        progress.point_done()
        if args.profile:  # each point's own table, as it ends: what it ran and what it reused
            from sdflow.profile import profile_table

            print(f"{where}:\n{profile_table(result.profile, result.seconds)}", file=sys.stderr)
        firsts.append((point.values, next(iter(result.files), None)))
        written += result.files
    progress.finish()
    for title, sheet in contact_sheets(axes, firsts):
        path = write_sheet(sheet, Path(args.output).resolve(), {
            "sdflow.sweep": sheet_record(axes, firsts), "sdflow.sheet": title, "sdflow.recipe": source})
        written.append(path)
        events.emit("file_written", path=str(path))
    if not args.json:
        for path in written:
            print(path)
    return EXIT_OK


def _run_graph(executor, graph, options, sources: dict[str, str], args, where: str = ""):
    """``executor.run`` with Ctrl-C between steps and a run's errors printed
    (after ``where``, a sweep point, when given): the RunResult, or the exit code."""
    from sdflow.execute import Interrupted, RunError

    with _interrupt_between_steps(executor):
        try:
            return executor.run(graph, options)
        except RunError as err:
            executor.events.end()
            if where:
                print(f"sdflow: {where}:", file=sys.stderr)
            print_diagnostics(err.diagnostics, sources, sys.stderr, args.max_diagnostics)
            return EXIT_DIAGNOSTICS
        except Interrupted:
            executor.events.end()
            print(f"sdflow: interrupted{' at ' + where if where else ''}; no partial file was written",
                  file=sys.stderr)
            return 130


class _interrupt_between_steps:
    """The first Ctrl-C asks the run to stop after the current step; a
    second one stops at once."""

    def __init__(self, executor):
        self.executor = executor

    def __enter__(self):
        import signal

        self.signal = signal
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C as it is
            self.previous = None
        return self

    def _handle(self, signum, frame):
        if self.executor.interrupted:
            raise KeyboardInterrupt
        self.executor.interrupt()
        print("\nsdflow: stopping after this step (Ctrl-C again to stop now)", file=sys.stderr)

    def __exit__(self, *exc):
        if self.previous is not None:
            self.signal.signal(self.signal.SIGINT, self.previous)


def _cmd_show(args) -> int:
    from sdflow.metadata import recorded_recipe
    from sdflow.pngtext import read_png_text
    from sdflow.text import visible, visible_lines

    try:
        text = read_png_text(Path(args.image))
    except FileNotFoundError:
        raise _Usage(f"{args.image}: no such file") from None
    except ValueError as err:
        raise _Usage(f"{args.image}: {err}") from None
    except OSError as err:
        raise _Usage(f"{args.image}: {err.strerror or err}") from None
    if "recipe" not in text:
        raise _Usage(f"{args.image}: no sdflow recipe in this image")
    recipe = text["recipe"]
    if args.recipe:
        # The params as they were resolved (--set included) become the
        # defaults, so the recipe reproduces the image by itself.
        recipe = recorded_recipe(text)
        # Piped to a file, the recipe is written as it was; on a terminal,
        # characters that could move the cursor or recolour it are escaped.
        shown = visible_lines(recipe) if sys.stdout.isatty() else recipe
        print(shown, end="" if shown.endswith("\n") else "\n")
        return EXIT_OK
    for key, value in text.items():
        if key != "recipe":
            print(f"{visible(key)}: {visible(value)}")
    print("recipe:")
    print("    " + visible_lines(recipe.rstrip("\n")).replace("\n", "\n    "))
    return EXIT_OK


def _cmd_replay(args) -> int:
    """Render an image again (see :mod:`sdflow.replay`): exit 0 when it is
    the same pixel for pixel (or when --set asked for a change), else 1."""
    from sdflow.execute import Executor
    from sdflow.pngtext import read_png_text
    from sdflow.replay import FILE, changed_conditions, counterpart, pixel_difference, prepare

    image = Path(args.image)
    try:
        fields = read_png_text(image)
    except FileNotFoundError:
        raise _Usage(f"{image}: no such file") from None
    except (ValueError, OSError) as err:
        raise _Usage(f"{image}: {err}") from None
    if "recipe" not in fields:
        raise _Usage(f"{image}: no sdflow recipe in this image (sdflow import reads other tools' images)")
    if "sweep" in fields:
        raise _Usage(f"{image} is a sweep's contact sheet, drawn from its points' images: replay one of those "
                     "(sdflow show lists them)")
    registry = _registry()
    options = _run_options(registry, args, Path.cwd())
    executor = Executor(plugin_versions={name: info.version for name, info in registry.plugins.items()})
    job = prepare(fields, _overrides(args.set), registry, executor, options)
    print_diagnostics(job.diagnostics, {FILE: job.text}, sys.stderr, args.max_diagnostics)
    if job.graph is None:
        return EXIT_DIAGNOSTICS
    for label, place in job.moved.items():
        print(f"sdflow: {label} was found by its SHA-256 at {place}", file=sys.stderr)
    result = _run_graph(executor, job.graph, options, {FILE: job.text}, args)
    if isinstance(result, int):
        return result
    for path in result.files:
        print(path)
    new = counterpart(fields, result.files)
    if new is None:
        print(f"sdflow: the replay wrote {len(result.files)} images and none stands where {image} did",
              file=sys.stderr)
        return EXIT_DIAGNOSTICS
    difference = pixel_difference(image, new)
    if difference == 0:
        print(f"sdflow: {new} is {image} again, pixel for pixel", file=sys.stderr)
        return EXIT_OK
    what = "is another size" if difference is None else f"differs by up to {difference}/255 in a pixel"
    print(f"sdflow: {new} {what} from {image}", file=sys.stderr)
    conditions = changed_conditions(fields, read_png_text(new))
    print("  recorded conditions that differ: " + ("; ".join(conditions) if conditions else "none"), file=sys.stderr)
    return EXIT_OK if args.set else EXIT_DIAGNOSTICS


def _cmd_import(args) -> int:
    """An sdflow image gives its own recipe (its params written in); any
    other file goes to the plugins' importers, the first that reads it
    wins.  The recipe is formatted and checked."""
    from sdflow.errors import StageError
    from sdflow.format import format_recipe
    from sdflow.graph import check
    from sdflow.metadata import recorded_recipe
    from sdflow.parse import parse
    from sdflow.pngtext import read_png_text

    path = Path(args.file)
    if not path.is_file():
        raise _Usage(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    if args.output is not None and Path(args.output).exists():
        raise _Usage(f"{args.output} exists; sdflow import never replaces a file: name a new one")
    registry = _registry()
    try:
        fields = read_png_text(path)
    except (ValueError, OSError):
        fields = {}
    text = recorded_recipe(fields) if "recipe" in fields else None
    for importer in registry.importers.values() if text is None else ():
        try:
            text = importer.read(path)
        except StageError as err:
            raise _Usage(f"{path}: {err.message}" + (f" ({err.help})" if err.help else "")) from None
        if text is not None:
            break
    if text is None:
        kinds = ", ".join(["sdflow images", *registry.importers]) or "sdflow images"
        raise _Usage(f"{path}: nothing sdflow can import here (it reads: {kinds})")
    recipe, diagnostics = parse(text, args.output or "<imported>")
    if not diagnostics:  # checked as printed, so that a diagnostic points at the printed line
        text = format_recipe(recipe)
        recipe, diagnostics = parse(text, args.output or "<imported>")
        diagnostics = diagnostics or check(recipe, registry)[1]
    if args.output is None:
        print(text, end="")
    else:
        _write_atomic(Path(args.output), text)
        print(args.output)
    print_diagnostics(diagnostics, {args.output or "<imported>": text}, sys.stderr, MAX_SHOWN)
    return EXIT_DIAGNOSTICS if any(d.is_error for d in diagnostics) else EXIT_OK


def _cmd_plugins(args) -> int:
    from sdflow.describe import plugin_table

    print(plugin_table(_registry(quiet=not args.strict_plugins)))
    return EXIT_OK


def _cmd_graph(args) -> int:
    from sdflow.export import to_dot, to_mermaid

    _source, graph = _checked_graph(args)
    if graph is None:
        return EXIT_DIAGNOSTICS
    print(to_dot(graph) if args.format == "dot" else to_mermaid(graph), end="")
    return EXIT_OK


def _cmd_export(args) -> int:
    """A recipe in a format a plugin writes (``sdflow_exporters``): every
    stage it cannot write is a diagnostic at that stage's line."""
    from sdflow.diagnostics import Diagnostic
    from sdflow.errors import StageError
    from sdflow.execute import stages_of

    registry = _registry()
    exporter = registry.exporters.get(args.format)
    if exporter is None:
        known = ", ".join(registry.exporters) or "none: no plugin adds one"
        raise _Usage(f"--format {args.format}: no such format (the installed plugins write: {known})")
    if args.output is not None and Path(args.output).exists():
        raise _Usage(f"{args.output} exists; sdflow export never replaces a file: name a new one")
    source, graph = _checked_graph(args)
    if graph is None:
        return EXIT_DIAGNOSTICS
    try:
        text = exporter.write(stages_of(graph))
    except StageError as err:
        problems = [Diagnostic("E630", f"{args.format} cannot express stage '{key}': {why}", graph.nodes[key].span,
                               err.help) for key, why in err.stages.items() if key in graph.nodes]
        if not problems:
            raise _Usage(f"{args.file}: {err.message}" + (f" ({err.help})" if err.help else "")) from None
        print_diagnostics(problems, {args.file: source}, sys.stderr, args.max_diagnostics)
        return EXIT_DIAGNOSTICS
    if args.output is None:
        print(text, end="")
    else:
        _write_atomic(Path(args.output), text)
        print(args.output)
    return EXIT_OK


def _cmd_diff(args) -> int:
    from sdflow.diff import run_diff
    from sdflow.graph import UsageError

    try:
        return run_diff(args.files, _registry(), json_output=args.json, git=args.git,
                        max_shown=args.max_diagnostics)
    except UsageError as err:
        raise _Usage(str(err)) from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
