"""Helpers for testing plugins: register a plugin for one test, check and run recipes.

For plugin authors and sdflow's own tests::

    from sdflow.testing import registry_with, run_recipe

    def test_blur(tmp_path):
        with registry_with(("blur", my_plugin)) as registry:
            result = run_recipe(RECIPE, registry, tmp_path)
        assert [p.name for p in result.files] == ["blurred_00001_.png"]

The installed plugins (the built-in diffusion stages among them) are
registered too, unless ``installed=False``; the plugin is gone again after
the ``with`` block, whatever happened in it.

The same as a pytest fixture (sdflow registers this module as a pytest
plugin, so any project with sdflow installed has it)::

    def test_blur(sdflow_plugins, tmp_path):
        registry = sdflow_plugins(("blur", my_plugin))
        run_recipe(RECIPE, registry, tmp_path)
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from sdflow.execute import Executor, RunError, RunOptions, RunResult
from sdflow.graph import check_source
from sdflow.registry import Registry, build_registry, plugin_manager

__all__ = ["Executor", "RunError", "RunOptions", "RunResult", "check_recipe", "registry_with", "run_recipe",
           "sdflow_plugins"]


@contextmanager
def registry_with(*plugins: tuple[str, Any], installed: bool = True) -> Iterator[Registry]:
    """A registry of the installed plugins plus ``plugins`` (``(name, module
    or object)`` pairs), for the ``with`` block.

    A plugin of that name that is installed (the one under test, installed
    in development mode) is replaced by the one given.  Misspelled hook
    names fail here, as they do when a plugin is loaded for a user.
    """
    pm, problems, versions = plugin_manager(entry_points=installed)
    for name, plugin in plugins:
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
        pm.register(plugin, name=name)
    pm.check_pending()
    try:
        yield build_registry(pm, problems, versions)
    finally:
        for name, _plugin in plugins:
            pm.unregister(name=name)


def check_recipe(text: str, registry: Registry, overrides: Mapping[str, str] | None = None,
                 file: str = "recipe.sdflow"):
    """``(graph, diagnostics)`` of a recipe's text, as ``sdflow check`` sees it."""
    _recipe, graph, diagnostics = check_source(text, file, registry, dict(overrides or {}))
    return graph, diagnostics


def run_recipe(text: str, registry: Registry, output_dir: Path, overrides: Mapping[str, str] | None = None,
               settings: Mapping[str, Any] | None = None, executor: Executor | None = None,
               recipe_dir: Path | None = None) -> RunResult:
    """Check and run a recipe's text, as from a file in ``recipe_dir``; an
    error in the recipe fails with its diagnostics, one at run time raises
    :class:`RunError` (its ``diagnostics`` say what and where).  ``settings``:
    a settings object by plugin name; ``executor``: one to reuse across
    runs (its ``keys`` are each stage's cache key)."""
    graph, diagnostics = check_recipe(text, registry, overrides)
    if graph is None:
        raise AssertionError("the recipe has errors:\n" + "\n".join(f"{d.span}: {d.code} {d.message}" for d in diagnostics))
    options = RunOptions(output_dir=Path(output_dir), settings=dict(settings or {}),
                         recipe_dir=None if recipe_dir is None else Path(recipe_dir))
    return (executor or Executor()).run(graph, options)


try:  # the fixture, where pytest is there to use it
    import pytest
except ImportError:  # pragma: no cover - a plugin's own code may import this module without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture
    def sdflow_plugins():
        """Register plugins for one test: ``sdflow_plugins(("blur", module),
        installed=False)`` returns the registry with them (see
        :func:`registry_with`); they are unregistered when the test ends."""
        with ExitStack() as stack:
            yield lambda *plugins, installed=True: stack.enter_context(registry_with(*plugins, installed=installed))
