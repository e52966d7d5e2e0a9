"""The executor, through a small pure-Python plugin: order, cache, events,
failures at their recipe line, interrupts.  No torch: the executor is generic."""

from __future__ import annotations

import io
import json

import pytest
from pydantic import BaseModel, Field

from sdflow import Port, hookimpl, stage
from sdflow.cache import CacheStore
from sdflow.execute import Events, Executor, Interrupted, RunError, RunOptions, StageError
from sdflow.graph import check_source
from sdflow.registry import build_registry, plugin_manager
from sdflow.settings import setting

CALLS: list[str] = []
INTERRUPT: dict = {}  # {"at": step, "executor": the Executor to interrupt}
WRITTEN: dict = {}  # what the write stage saw of its context


class NoParams(BaseModel):
    pass


class Value(BaseModel):
    value: int = 0


class Steps(BaseModel):
    steps: int = Field(3, ge=1)


class Name(BaseModel):
    name: str


def number(ctx, params):
    CALLS.append(f"number {params.value}")
    return {"out": params.value}


def add(ctx, params, a, b):
    CALLS.append(f"add {a}+{b}")
    return {"out": a + b}


def slow(ctx, params, x):
    CALLS.append("slow")
    with ctx.progress(params.steps, "steps") as progress:
        for step in range(params.steps):
            if INTERRUPT.get("at") == step:  # as if Ctrl-C came now
                INTERRUPT["executor"].interrupt()
            progress.step()
    return {"out": x}


def maybe(ctx, params, x):
    return {"out": -1 if x is None else x}


def half(ctx, params, x):
    CALLS.append(f"half {x}")
    ctx.record(precision=ctx.settings.precision)
    return {"out": round(x / 2, ctx.settings.precision)}


def broken(ctx, params, x):
    return {"out": x / 0}


def refuse(ctx, params, x):
    raise StageError("the model file is truncated", "download it again")


def write(ctx, params, x):
    CALLS.append(f"write {x}")
    path = ctx.output_dir / f"{params.name}.txt"
    path.write_text(str(x))
    ctx.file_written(path)
    WRITTEN.update(metadata=ctx.metadata(versions={"numbers": "1.0"}))


def typed(ctx, params, x):
    WRITTEN.setdefault("typed", []).append((params.name, ctx.from_command_line(params.name)))


class Precision(BaseModel):
    precision: int = setting(2, "decimal places of a fraction", flag="--precision")


@stage(params=NoParams, inputs={"x": "NUMBER"}, outputs={"out": "FRACTION"})
def tenth(ctx, params, x):
    """A tenth, rounded as the arithmetic plugin's settings say."""
    return {"out": round(x / 10, ctx.settings.precision)}


def via_other(ctx, params, x):
    return ctx.call(tenth, NoParams(), x=x)


class Other:
    """A plugin without settings whose stage runs the arithmetic plugin's."""

    @hookimpl
    def sdflow_stage_types(self, registry):
        registry.add_stage("via_other", params=NoParams, inputs={"x": "NUMBER"}, outputs={"out": "FRACTION"},
                           run=via_other)


class Arithmetic:
    @hookimpl
    def sdflow_port_types(self, registry):
        registry.add_port_type("NUMBER", "an integer", persistent=True)
        registry.add_port_type("FRACTION", "a rounded number")

    @hookimpl
    def sdflow_settings(self, registry):
        registry.add_settings(Precision)

    @hookimpl
    def sdflow_stage_types(self, registry):
        registry.add_stage("maybe", params=NoParams, inputs={"x": Port("NUMBER", optional=True)},
                           outputs={"out": "NUMBER"}, run=maybe)
        registry.add_stages(tenth)
        registry.add_stage("half", params=NoParams, inputs={"x": "NUMBER"}, outputs={"out": "FRACTION"}, run=half)
        registry.add_stage("show", params=Name, inputs={"x": "FRACTION"}, output=True, run=write)
        registry.add_stage("typed", params=Name, inputs={"x": "NUMBER"}, output=True, run=typed)
        registry.add_stage("number", params=Value, outputs={"out": "NUMBER"}, run=number)
        registry.add_stage("add", params=NoParams, inputs={"a": "NUMBER", "b": "NUMBER"},
                           outputs={"out": "NUMBER"}, run=add)
        registry.add_stage("slow", params=Steps, inputs={"x": "NUMBER"}, outputs={"out": "NUMBER"}, run=slow)
        registry.add_stage("broken", params=NoParams, inputs={"x": "NUMBER"}, outputs={"out": "NUMBER"},
                           run=broken)
        registry.add_stage("refuse", params=NoParams, inputs={"x": "NUMBER"}, outputs={"out": "NUMBER"},
                           run=refuse)
        # Named, not imported: as a plugin keeps torch out of `sdflow check`.
        registry.add_stage("write", params=Name, inputs={"x": "NUMBER"}, output=True,
                           run="test_execute:write")


@pytest.fixture
def registry():
    pm, problems, versions = plugin_manager(entry_points=False)
    pm.register(Arithmetic(), name="arithmetic")
    pm.register(Other(), name="other")
    yield build_registry(pm, problems, versions)
    pm.unregister(name="other")
    pm.unregister(name="arithmetic")


@pytest.fixture(autouse=True)
def fresh_calls():
    CALLS.clear()


def graph_of(text, registry, **overrides):
    _recipe, graph, diagnostics = check_source(text, "sum.sdflow", registry, overrides)
    assert graph is not None, diagnostics
    return graph


SUM = """\
sdflow 1

param b = 2

one = number(value=1)
two = number(value=b)
total = add(a=one, b=two)
double = add(a=total, b=total)
unused = add(a=one, b=one)
write(x=double, name="double")
write(x=total, name="total")
"""


def test_runs_what_leads_to_an_output_each_stage_once(registry, tmp_path):
    executor = Executor()
    result = executor.run(graph_of(SUM, registry), RunOptions(output_dir=tmp_path))
    assert CALLS == ["number 1", "number 2", "add 1+2", "add 3+3", "write 6", "write 3"]
    assert [p.name for p in result.files] == ["double.txt", "total.txt"]
    assert (tmp_path / "double.txt").read_text() == "6"


def test_a_second_run_in_the_process_reuses_unchanged_results(registry, tmp_path):
    executor = Executor()
    executor.run(graph_of(SUM, registry), RunOptions(output_dir=tmp_path))
    CALLS.clear()
    result = executor.run(graph_of(SUM, registry), RunOptions(output_dir=tmp_path))
    assert CALLS == ["write 6", "write 3"]  # output stages always run
    assert result.cached == ["one", "two", "total", "double"]


def test_a_changed_param_reruns_only_what_depends_on_it(registry, tmp_path):
    executor = Executor()
    executor.run(graph_of(SUM, registry), RunOptions(output_dir=tmp_path))
    CALLS.clear()
    executor.run(graph_of(SUM, registry, b="5"), RunOptions(output_dir=tmp_path))
    assert CALLS == ["number 5", "add 1+5", "add 6+6", "write 12", "write 6"]


def test_json_events_one_per_line(registry, tmp_path):
    out = io.StringIO()
    text = "sdflow 1\nx = number(value=4)\ny = slow(x=x, steps=2)\nwrite(x=y, name=\"y\")\n"
    Executor(Events(json_stream=out)).run(graph_of(text, registry), RunOptions(output_dir=tmp_path))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    summary = [(e["event"], e.get("stage"), e.get("step")) for e in events]
    assert summary == [
        ("run_started", None, None),
        ("stage_started", "x", None), ("stage_done", "x", None),
        ("stage_started", "y", None), ("step", "y", 1), ("step", "y", 2), ("stage_done", "y", None),
        ("stage_started", "write#1", None), ("file_written", "write#1", None), ("stage_done", "write#1", None),
        ("run_done", None, None),
    ]
    assert events[-1]["files"] == [str(tmp_path / "y.txt")]


def test_no_progress_bar_when_piped(registry, tmp_path):
    piped = io.StringIO()  # not a terminal
    text = "sdflow 1\nx = number(value=4)\ny = slow(x=x)\nwrite(x=y, name=\"y\")\n"
    Executor(Events(bar_stream=piped)).run(graph_of(text, registry), RunOptions(output_dir=tmp_path))
    assert piped.getvalue() == ""


def test_interrupt_stops_between_steps_before_any_file(registry, tmp_path):
    text = "sdflow 1\nx = number(value=4)\ny = slow(x=x, steps=5)\nwrite(x=y, name=\"y\")\n"
    executor = Executor()
    INTERRUPT.update(at=1, executor=executor)
    try:
        with pytest.raises(Interrupted):
            executor.run(graph_of(text, registry), RunOptions(output_dir=tmp_path))
    finally:
        INTERRUPT.clear()
    assert list(tmp_path.iterdir()) == []


def test_a_failing_stage_is_reported_at_its_line_with_its_inputs(registry, tmp_path):
    text = "sdflow 1\nx = number(value=4)\nbad = broken(x=x)\nwrite(x=bad, name=\"bad\")\n"
    with pytest.raises(RunError) as caught:
        Executor().run(graph_of(text, registry), RunOptions(output_dir=tmp_path))
    (diagnostic,) = caught.value.diagnostics
    assert (diagnostic.code, diagnostic.span.line, diagnostic.span.column) == ("E602", 3, 1)
    assert diagnostic.message == "stage 'bad' (broken) failed: ZeroDivisionError: division by zero"
    assert diagnostic.help == "its inputs: x=x.out"


def test_a_stage_error_carries_its_own_message_and_help(registry, tmp_path):
    text = "sdflow 1\nx = number(value=4)\nr = refuse(x=x)\nwrite(x=r, name=\"r\")\n"
    with pytest.raises(RunError) as caught:
        Executor().run(graph_of(text, registry), RunOptions(output_dir=tmp_path))
    (diagnostic,) = caught.value.diagnostics
    assert (diagnostic.code, diagnostic.message, diagnostic.help) == (
        "E601", "the model file is truncated", "download it again")
    assert diagnostic.span.line == 3


# the cache's policy, keys and reasons ----------------------------------------------------

HALF = """\
sdflow 1

param value = 5

x = number(value=value)
h = half(x=x)
show(x=h, name="half")
"""


def test_intermediate_results_are_dropped_after_the_run_and_models_kept(registry, tmp_path):
    executor = Executor()
    executor.run(graph_of(HALF, registry), RunOptions(output_dir=tmp_path))
    assert len(executor.cache) == 1  # x, a persistent NUMBER; h's FRACTION went with its run
    CALLS.clear()
    result = executor.run(graph_of(HALF, registry), RunOptions(output_dir=tmp_path))
    assert result.cached == ["x"]
    assert CALLS == ["half 5", "write 2.5"]


def test_the_persistent_results_kept_are_bounded_least_recently_used_first(registry, tmp_path):
    executor = Executor(cache=CacheStore(max_persistent=1))
    executor.run(graph_of(HALF, registry, value="1"), RunOptions(output_dir=tmp_path))
    executor.run(graph_of(HALF, registry, value="2"), RunOptions(output_dir=tmp_path))
    assert len(executor.cache) == 1
    CALLS.clear()
    executor.run(graph_of(HALF, registry, value="1"), RunOptions(output_dir=tmp_path))
    assert CALLS[0] == "number 1"  # pushed out by value=2


def test_explain_says_why_each_stage_ran_or_was_reused(registry, tmp_path):
    said = io.StringIO()
    executor = Executor(explain=said)
    executor.run(graph_of(HALF, registry), RunOptions(output_dir=tmp_path))
    executor.run(graph_of(HALF, registry, value="7"), RunOptions(output_dir=tmp_path))
    executor.run(graph_of(HALF, registry, value="7"), RunOptions(output_dir=tmp_path))
    reasons = [line.split(": ", 1)[1] for line in said.getvalue().splitlines()]
    assert reasons == [
        "ran: first run of this stage in this process",
        "ran: first run of this stage in this process",
        "ran: output stages always run",
        "ran: params.value: 5 -> 7",
        "ran: input x changed",
        "ran: output stages always run",
        "reused: nothing it depends on changed",
        "ran: its earlier result was not kept (only models stay between runs)",
        "ran: output stages always run",
    ]
    key = executor.keys["x"]
    assert (key.stage, key.params, key.files) == ("arithmetic.number", {"value": 7}, {})


def test_settings_reach_the_stage_and_are_part_of_its_key(registry, tmp_path):
    executor = Executor()
    graph = graph_of(HALF, registry, value="1")
    executor.run(graph, RunOptions(output_dir=tmp_path))
    assert (tmp_path / "half.txt").read_text() == "0.5"
    (tmp_path / "half.txt").unlink()
    executor.run(graph, RunOptions(output_dir=tmp_path, settings={"arithmetic": Precision(precision=0)}))
    assert (tmp_path / "half.txt").read_text() == "0.0"  # round(0.5, 0): to even
    assert executor.keys["h"].settings == {"precision": 0}


def test_an_output_records_the_recipe_the_stages_and_what_they_resolved(registry, tmp_path):
    Executor(plugin_versions={"arithmetic": "3.1"}).run(graph_of(HALF, registry, value="3"),
                                                       RunOptions(output_dir=tmp_path))
    metadata = WRITTEN["metadata"]
    assert metadata["sdflow.recipe"] == HALF
    assert json.loads(metadata["sdflow.params"]) == {"value": 3}
    assert json.loads(metadata["sdflow.run"]) == {"precision": 2}
    assert json.loads(metadata["sdflow.stages"]) == {
        "x": "arithmetic.number 0", "h": "arithmetic.half 0", "show#1": "arithmetic.show 0"}
    versions = json.loads(metadata["sdflow.versions"])
    assert (versions["plugin arithmetic"], versions["numbers"]) == ("3.1", "1.0")


def test_an_optional_input_left_out_reaches_the_run_function_as_none(registry, tmp_path):
    text = 'sdflow 1\nx = number(value=3)\nm = maybe()\nn = maybe(x=x)\nwrite(x=m, name="m")\nwrite(x=n, name="n")\n'
    Executor().run(graph_of(text, registry), RunOptions(output_dir=tmp_path))
    assert ((tmp_path / "m.txt").read_text(), (tmp_path / "n.txt").read_text()) == ("-1", "3")


def test_a_stage_that_calls_another_plugins_stage_gives_it_its_own_settings(registry, tmp_path):
    text = 'sdflow 1\nx = number(value=7)\nt = via_other(x=x)\nshow(x=t, name="t")\n'
    options = RunOptions(output_dir=tmp_path, settings={"arithmetic": Precision(precision=1)})
    Executor().run(graph_of(text, registry), options)
    assert (tmp_path / "t.txt").read_text() == "0.7"


def test_the_persistent_results_kept_are_bounded_by_their_memory_too():
    import numpy as np
    import torch

    from sdflow.cache import nbytes

    store = CacheStore(max_persistent=10, max_bytes=10_000)
    store.put("a", {"model": np.zeros(1000)}, persistent=True)  # 8000 bytes
    store.put("b", {"model": np.zeros(1000)}, persistent=True)
    assert ("a" in store, "b" in store, store.persistent_bytes) == (False, True, 8000)
    layer = torch.nn.Linear(10, 10)  # 110 float32 parameters, counted through what holds them
    assert nbytes({"model": [layer, layer], "weight": layer.weight}) == 440


def test_a_stage_can_tell_a_value_typed_with_set_from_one_written_in_the_recipe(registry, tmp_path):
    text = ('sdflow 1\nparam where = "a.png"\nparam count = 1\nx = number(value=count)\n'
            'typed(x=x, name=where)\ntyped(x=x, name="/data/b.png")\ntyped(x=x, name="1")\n')
    WRITTEN.pop("typed", None)
    Executor().run(graph_of(text, registry), RunOptions(output_dir=tmp_path))
    assert WRITTEN.pop("typed") == [("a.png", False), ("/data/b.png", False), ("1", False)]
    Executor().run(graph_of(text, registry, where="/data/b.png", count="1"), RunOptions(output_dir=tmp_path))
    # the value given, wherever it is used; not the int 1 given for count as the text "1"
    assert WRITTEN.pop("typed") == [("/data/b.png", True), ("/data/b.png", True), ("1", False)]
