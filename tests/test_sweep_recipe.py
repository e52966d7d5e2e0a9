"""The ``sweep`` statement: a recipe's own sweep, parsed, formatted, checked
point by point (each point's problem at the value that caused it) and run,
through the real parser, checker and CLI on the shipped sdflow-tiny model.
The command line's ``--sweep`` is in tests/test_sweep.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdflow import ast
from sdflow.cli import main
from sdflow.diagnostics import render
from sdflow.format import format_recipe
from sdflow.graph import check_source
from sdflow.parse import parse
from sdflow.pngtext import read_png_text
from sdflow.registry import default_registry
from sdflow.sweep import parse_axis, plan, points
from training.tiny.score import score

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

ROOT = Path(__file__).resolve().parent.parent
TXT2IMG = (ROOT / "examples" / "txt2img.sdflow").read_text()
SWEEP_EXAMPLE = ROOT / "examples" / "sweep.sdflow"


def with_sweep(lines: str, recipe: str = TXT2IMG) -> str:
    """The default recipe with ``lines`` after its params."""
    return recipe.replace("param cfg = 3.0\n", "param cfg = 3.0\n" + lines)


def diagnostics(source: str) -> list[tuple]:
    _recipe, _graph, found = check_source(source, "r.sdflow", default_registry())
    return [(d.code, d.span.line, d.span.column, d.message) for d in found]


# the statement ----------------------------------------------------------------------


def test_a_sweep_line_is_one_axis_of_ranges_and_lists():
    recipe, errors = parse("sdflow 1\nsweep seed = -2..2..2, cfg = [5.0, 7.5, 10]\nsweep steps = 8..1\n"
                           'sweep prompt = ["a", """b"""]\n', "r.sdflow")
    assert errors == []
    zipped, down, prompts = recipe.statements[1:]
    assert [e.name for e in zipped.entries] == ["seed", "cfg"]
    seed = zipped.entries[0].values
    assert (seed.start, seed.end, seed.step, list(seed.values)) == (-2, 2, 2, [-2, 0, 2])
    assert seed.span == ast.Span("r.sdflow", 2, 14, 2, 22)  # `-2..2..2` is one token, not 2. and .2
    assert [item.value for item in zipped.entries[1].values.items] == [5.0, 7.5, 10]
    assert list(down.entries[0].values.values) == [8, 7, 6, 5, 4, 3, 2, 1]  # counting down
    assert [item.value for item in prompts.entries[0].values.items] == ["a", "b"]


FMT_CASES = {
    "spacing": ("sweep   seed=1..8\n", "sweep seed = 1..8\n"),
    "signs, commas and a comment": ("sweep seed = +1..+8..+2 ,cfg=[ 5.0,7.50 ]  # why\n",
                                    "sweep seed = 1..8..2, cfg = [5.0, 7.50]  # why\n"),
    "a trailing comma keeps one value a line": (
        'sweep prompt = ["a red circle",\n  "a blue circle",]\n',
        'sweep prompt = [\n    "a red circle",\n    "a blue circle",\n]\n'),
    "a comment inside the list moves above": (
        "sweep cfg = [5.0,  # low\n 7.5]\n", "# low\nsweep cfg = [5.0, 7.5]\n"),
}


@pytest.mark.parametrize("messy, canonical", FMT_CASES.values(), ids=list(FMT_CASES))
def test_fmt_writes_sweep_lines_canonically(messy, canonical):
    recipe, errors = parse("sdflow 1\n\n" + messy)
    assert errors == []
    assert format_recipe(recipe) == "sdflow 1\n\n" + canonical
    again, errors = parse(format_recipe(recipe))
    assert errors == [] and format_recipe(again) == format_recipe(recipe)


def test_syntax_errors_in_a_sweep_say_how_to_write_one():
    source = "sdflow 1\nsweep seed = 1.5..3\nsweep seed = 5\nparam x = 1..8\nsweep seed = [1, 2] cfg = [1]\n"
    _recipe, found = parse(source, "r.sdflow")
    assert [(d.code, d.span.line, d.span.column, d.message, d.help) for d in found] == [
        ("E101", 2, 14, "unexpected '1.5'; expected '[' or a range",
         "a range is whole numbers, written A..B or A..B..STEP without spaces; other values go in a list: "
         "[0.5, 1.0, 1.5]"),
        ("E101", 3, 14, "unexpected '5'; expected '[' or a range",
         "a sweep's values are a range (1..8) or a list; one value is a list of one: [5]"),
        ("E104", 4, 11, "unexpected '1..8'; expected '[', 'false', 'true', a name, a number, a string or an integer",
         "a range is a sweep's values, not a value: write 'sweep NAME = 1..8' on a line of its own"),
        ("E105", 5, 21, "unexpected 'cfg'; expected ',' or end of line",
         "separate the names of one sweep line with ','"),
    ]


def test_every_mistake_in_the_sweep_lines_is_reported_at_once():
    source = with_sweep("sweep seed = 1..4, cfg = [4.0, 5.0, 6.0]\n"
                        "sweep sed = [1]\n"
                        "sweep steps = [2], latent = [3]\n"
                        "sweep prompt = 1..3\n"
                        "sweep size = [64.0, 32, x]\n"
                        "sweep negative_prompt = []\n"
                        "sweep seed = 8..1..0\n")
    assert diagnostics(source) == [
        ("E262", 18, 1, "the names of one sweep line move together, so they need as many values: "
                        "seed has 4, cfg has 3"),
        ("E260", 19, 7, "the recipe has no param 'sed' to sweep"),
        ("E260", 20, 20, "'latent' is a stage's result; only a param can be swept"),
        ("E264", 21, 16, "param 'prompt' is a string, like its default; a range gives integers"),
        ("E264", 22, 15, "param 'size' is an integer, like its default, not a number"),
        ("E412", 22, 25, "a sweep's value must be a value, not a reference to 'x'"),
        ("E263", 23, 25, "a sweep of 'negative_prompt' over no values"),
        ("E261", 24, 7, "param 'seed' is swept twice"),
        ("E263", 24, 14, "a range's step must be positive, got 0"),
    ]


# checking every point -----------------------------------------------------------------


def check(tmp_path, capsys, source: str, *options: str) -> tuple[int, str]:
    path = tmp_path / "r.sdflow"
    path.write_text(source)
    code = main(["check", str(path), *options])
    return code, capsys.readouterr().err.replace(str(path), "r.sdflow")


def test_a_point_that_does_not_check_is_shown_at_its_value(tmp_path, capsys):
    code, err = check(tmp_path, capsys, with_sweep("sweep seed = 1..3\nsweep cfg = [2.0, -1.0]\n"))
    assert code == 1
    assert err == (
        "r.sdflow:19:19: E402 sweep point 4 (seed=1, cfg=-1.0): 'cfg' must be at least 0.0, got -1.0\n"
        "   |\n"
        "19 | sweep cfg = [2.0, -1.0]\n"
        "   |                   ^^^^\n"
        "   = help: 'cfg' ranges from 0.0 to 100.0; used at line 32, column 9;"
        " 2 more points of the sweep fail the same way\n"
        "\n"
        "1 error\n")
    # --set fixes a swept param, taking it off its axis; --no-sweep checks the defaults alone
    assert check(tmp_path, capsys, with_sweep("sweep seed = 1..3\nsweep cfg = [2.0, -1.0]\n"), "--set", "cfg=2") \
        == (0, "r.sdflow: ok (a sweep of 3 points)\n")
    assert check(tmp_path, capsys, with_sweep("sweep cfg = [-1.0]\n"), "--no-sweep") == (0, "r.sdflow: ok\n")


def test_more_than_256_points_are_refused_with_their_count_unless_yes(tmp_path, capsys):
    source = with_sweep("sweep seed = 1..30\nsweep steps = 1..10\n")
    code, err = check(tmp_path, capsys, source)
    assert code == 1
    assert err.startswith("r.sdflow:18:1: E265 the sweep has 300 points (30 x 10), more than 256\n")
    assert "help: add --yes to run them all, or sweep fewer values" in err
    assert check(tmp_path, capsys, source, "--yes") == (0, "r.sdflow: ok (a sweep of 300 points)\n")


def test_the_command_line_replaces_and_fixes_the_recipes_axes():
    recipe, _ = parse(with_sweep("sweep seed = 1..2, cfg = [2.0, 3.0]\nsweep steps = [2, 3]\n"))

    def planned(command: list[str], fixed: tuple[str, ...] = ()) -> list[dict[str, str]]:
        return [p.values for p in points(plan(recipe, [parse_axis(c) for c in command], False, fixed))]

    assert planned([]) == [{"seed": "1", "cfg": "2.0", "steps": "2"}, {"seed": "2", "cfg": "3.0", "steps": "2"},
                           {"seed": "1", "cfg": "2.0", "steps": "3"}, {"seed": "2", "cfg": "3.0", "steps": "3"}]
    # --sweep seed takes seed off its line (cfg stays), and comes after the recipe's axes
    assert planned(["seed=7..8"], fixed=("steps",)) == [
        {"cfg": "2.0", "seed": "7"}, {"cfg": "3.0", "seed": "7"}, {"cfg": "2.0", "seed": "8"},
        {"cfg": "3.0", "seed": "8"}]
    # a line left empty is dropped: nothing is left to sweep
    assert planned([], fixed=("seed", "cfg", "steps")) == [{}] and \
        plan(recipe, [], False, ("seed", "cfg", "steps")) == []


# running ------------------------------------------------------------------------------


def test_the_example_draws_each_colour_and_a_point_reproduces_alone(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(SWEEP_EXAMPLE), "--output", str(out), "--set", "seed=3", "--set", "steps=8"]) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed] == ["circle_00001_.png", "circle_00002_.png", "circle_00003_.png",
                                               "sweep_00001_.png"]
    for path, colour in zip(printed, ["red", "green", "blue"]):
        drawn = score(np.asarray(Image.open(path).convert("RGB")))
        assert (drawn.colour, drawn.shape) == (colour, "circle"), (path, drawn)
        assert json.loads(read_png_text(Path(path))["params"])["seed"] == 3
    sheet = read_png_text(Path(printed[-1]))
    assert "sweep prompt = [" in sheet["recipe"]  # the sheet keeps the whole recipe
    assert [list(axis) for axis in json.loads(sheet["sweep"])["axes"]] == [["prompt"]]  # seed was fixed
    # One point's recipe has its values as the defaults and no sweep: it draws
    # that image alone (replay runs exactly the recipe show --recipe prints).
    green = printed[1]
    assert main(["show", "--recipe", green]) == 0
    again = capsys.readouterr().out
    standalone, errors = parse(again)
    assert errors == [] and not any(isinstance(s, ast.Sweep) for s in standalone.statements)
    assert 'param prompt = "a large green circle in the center on a white background"' in again
    assert "param seed = 3\nparam steps = 8\n" in again
    assert main(["replay", green, "--output", str(tmp_path / "replayed")]) == 0
    assert "pixel for pixel" in capsys.readouterr().err


def test_sweep_on_the_command_line_replaces_an_axis_and_no_sweep_runs_once(tmp_path, capsys):
    recipe = tmp_path / "r.sdflow"
    recipe.write_text(with_sweep("sweep seed = 1..2, cfg = [2.0, 3.0]\n").replace("param steps = 20", "param steps = 2"))
    assert main(["run", str(recipe), "--output", str(tmp_path / "swept"), "--json", "--sweep", "seed=7"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["point"] for e in events if e["event"] == "sweep_point"] == [{"cfg": "2.0", "seed": "7"},
                                                                           {"cfg": "3.0", "seed": "7"}]
    assert main(["run", str(recipe), "--output", str(tmp_path / "once"), "--no-sweep"]) == 0
    (once,) = capsys.readouterr().out.split()
    assert json.loads(read_png_text(Path(once))["params"])["seed"] == 42
    assert main(["run", str(recipe), "--sweep", "seed=1", "--no-sweep"]) == 2


def test_diff_reports_sweep_axes_added_removed_and_changed(tmp_path, capsys):
    before, after = tmp_path / "before.sdflow", tmp_path / "after.sdflow"
    before.write_text(with_sweep("sweep seed = 1..3\nsweep cfg = [2.0, 4]\n"))
    after.write_text(with_sweep("sweep seed = [1, 2, 3, 4]\nsweep steps = [4, 8], cfg = [2, 4.0]\n"))
    assert main(["diff", str(before), str(after)]) == 1
    assert capsys.readouterr().out == ("~ sweep seed: 1..3 -> [1, 2, 3, 4]\n"
                                       "+ sweep steps = [4, 8], cfg = [2, 4.0]\n"
                                       "- sweep cfg = [2.0, 4]\n")
    after.write_text(with_sweep("sweep seed = [1, 2, 3]\nsweep cfg = [2, 4.0]  # the same values\n"))
    assert main(["diff", str(before), str(after)]) == 0
    after.write_text(with_sweep("sweep cfg = [2.0, 4]\nsweep seed = 1..3  # the same points, another sheet\n"))
    assert main(["diff", str(before), str(after)]) == 1
    assert capsys.readouterr().out == "~ sweep order (the contact sheet's layout): seed / cfg -> cfg / seed\n"
