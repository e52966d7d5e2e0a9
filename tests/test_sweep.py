"""run --sweep: every point checked before any runs, one executor for all
(each model loaded once), each point's PNG with its own params, and a
labelled contact sheet.  Through the CLI on the shipped default recipe."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli import sdflow_cli
from sdflow.cli import main
from sdflow.execute import Events
from sdflow.pngtext import read_png_text
from sdflow.parse import parse
from sdflow.sweep import SweepError, SweepProgress, parse_axis, plan, points

EXAMPLE = str(Path(__file__).resolve().parent.parent / "examples" / "txt2img.sdflow")


RECIPE, _ = parse("sdflow 1\nparam seed = 1\nparam cfg = 2.0\n")


def values(specs: list[str], zipped: bool = False) -> list[dict[str, str]]:
    return [p.values for p in points(plan(RECIPE, [parse_axis(s) for s in specs], zipped, ()))]


def test_axes_and_points():
    assert list(parse_axis("seed=1..4").values[0]) == ["1", "2", "3", "4"]
    assert list(parse_axis("seed=10..4..3").values[0]) == ["10", "7", "4"]
    assert list(parse_axis("cfg=5, 7.5").values[0]) == ["5", "7.5"]
    assert len(parse_axis("seed=1..1000000000000").values[0]) == 10**12  # counted, never listed
    assert values(["seed=1..2", "cfg=5,7"]) == [{"seed": "1", "cfg": "5"}, {"seed": "2", "cfg": "5"},
                                                {"seed": "1", "cfg": "7"}, {"seed": "2", "cfg": "7"}]
    assert values(["seed=1..2", "cfg=5,7"], zipped=True) == [{"seed": "1", "cfg": "5"}, {"seed": "2", "cfg": "7"}]
    for bad in ("seed", "seed=", "seed=1..x", "seed=1..5..0", "seed=1,,2"):
        with pytest.raises(SweepError):
            parse_axis(bad)
    with pytest.raises(SweepError, match="one length: seed has 3, cfg has 2"):
        values(["seed=1..3", "cfg=5,7"], zipped=True)
    with pytest.raises(SweepError, match="twice"):
        values(["seed=1..3", "seed=5,7"])
    with pytest.raises(SweepError, match="no param 'sed'; did you mean 'seed'"):
        values(["sed=1..3"])


def test_a_sweep_writes_each_point_and_a_labelled_sheet(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", EXAMPLE, "--output", str(out), "--set", "steps=4",
                 "--sweep", "seed=1..3", "--sweep", "cfg=2,4"]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 7 and printed[-1].endswith("sweep_00001_.png")
    params = [json.loads(read_png_text(Path(p))["params"]) for p in printed[:6]]
    assert [(p["seed"], p["cfg"]) for p in params] == [(1, 2.0), (2, 2.0), (3, 2.0), (1, 4.0), (2, 4.0), (3, 4.0)]
    assert all(p["steps"] == 4 for p in params)
    sheet = Image.open(printed[-1])
    assert sheet.size[0] > 3 * 64 and sheet.size[1] > 2 * 64  # three across, two down, and the labels
    record = json.loads(read_png_text(Path(printed[-1]))["sweep"])
    assert record["axes"] == [{"seed": ["1", "2", "3"]}, {"cfg": ["2", "4"]}] and len(record["points"]) == 6
    # A point is the run of its values alone, pixel for pixel.
    assert main(["run", EXAMPLE, "--output", str(tmp_path / "alone"), "--set", "steps=4", "--set", "seed=2",
                 "--set", "cfg=4"]) == 0
    (alone,) = (tmp_path / "alone").iterdir()
    assert np.array_equal(np.asarray(Image.open(alone)), np.asarray(Image.open(printed[4])))
    # The sheet is no image a recipe drew: replay says so, and which to replay.
    replayed = sdflow_cli("replay", printed[-1], "--output", str(tmp_path / "replayed"))
    assert (replayed.returncode, replayed.stdout) == (2, "")
    assert "is a sweep's contact sheet, drawn from its points' images: replay one of those" in replayed.stderr


def test_a_bad_point_is_named_before_anything_runs(tmp_path):
    result = sdflow_cli("run", EXAMPLE, "--output", str(tmp_path / "out"), "--sweep", "steps=4,0")
    assert result.returncode == 1
    assert "sweep point 2 of 2 (steps=0):" in result.stderr and "E402 'steps' must be at least 1" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_huge_sweep_is_refused_with_its_count_and_json_events_carry_the_point(tmp_path):
    huge = sdflow_cli("run", EXAMPLE, "--sweep", "seed=1..1000", "--sweep", "cfg=1..1000")
    assert huge.returncode == 2 and "the sweep has 1,000,000 points" in huge.stderr and "--yes" in huge.stderr
    zipped = sdflow_cli("run", EXAMPLE, "--output", str(tmp_path / "out"), "--json", "--zip", "--set", "steps=2",
                        "--sweep", "seed=1,2", "--sweep", "cfg=2,3")
    assert zipped.returncode == 0, zipped.stderr
    events = [json.loads(line) for line in zipped.stdout.splitlines()]
    assert [e["point"] for e in events if e["event"] == "sweep_point"] == [{"seed": "1", "cfg": "2"},
                                                                           {"seed": "2", "cfg": "3"}]
    assert sum(e["event"] == "file_written" for e in events) == 3  # two points and the sheet


def test_the_points_share_what_they_have_in_common(tmp_path):
    """A sweep over the seed encodes the prompts once: from the second point
    on their stages are reused; the sampler runs at every point."""
    result = sdflow_cli("run", EXAMPLE, "--output", str(tmp_path / "out"), "--json", "--set", "steps=2",
                        "--sweep", "seed=1..3")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    done = [(e["stage"], e["cached"]) for e in events if e["event"] == "stage_done"]
    assert [cached for stage, cached in done if stage == "positive"] == [False, True, True]
    assert [cached for stage, cached in done if stage == "denoised"] == [False, False, False]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_line_above_the_step_bar_on_a_terminal_and_plain_lines_elsewhere(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "100")  # the lines are cut to the terminal's width
    now = iter([0.0, 0.0, 20.0, 20.0, 30.0, 30.0, 40.0])  # the first point loads the models: 20 s
    screen = Terminal()
    events = Events(bar_stream=screen)
    progress = SweepProgress(events, 4, clock=lambda: next(now))
    first, second, third, _ = points(plan(RECIPE, [parse_axis("seed=1..4")], False, ()))
    progress.point(first)
    events.bar("denoised (steps)", 1, 2, 0.5)
    progress.point_done()
    progress.point(second)
    events.status("image (vae_decode) done in 0.10s", final=True)
    progress.point_done()
    progress.point(third)
    events.end()  # a point failed: what is printed next starts on a line of its own
    assert screen.getvalue() == (
        "\r\x1b[Ksweep: point 1/4  ................  0.0s  (seed=1)\n"
        "\r\x1b[Kdenoised (steps)             ############............ 1/2    0.5s"
        "\x1b[1A\r\x1b[Ksweep: point 2/4  ####............  20.0s, about 1m00s left  (seed=2)\n"
        "\r\x1b[Kimage (vae_decode) done in 0.10s"  # final, yet drawn in place under the heading
        "\x1b[1A\r\x1b[Ksweep: point 3/4  ########........  30.0s, about 20.0s left  (seed=3)\n"  # (4 - 2) x 10 s
        "\n")
    piped = io.StringIO()  # not a terminal: each point a plain line, and the end
    progress = SweepProgress(Events(bar_stream=piped), 1, clock=lambda: 0.0)
    progress.point(first)
    progress.point_done()
    progress.finish()
    assert piped.getvalue() == "sweep: point 1/1  ................  0.0s  (seed=1)\nsweep: 1 point in 0.0s\n"
