"""The engine's and the built-in plugin's tests see sdflow as a user with
only the built-in plugin does: other installed plugins (the extras plugin
of this repository, installed by the test command) are disabled for them,
through the same ``SDFLOW_DISABLE_PLUGINS`` a user would set.  The extras
plugin's own tests, under ``plugins/sdflow_extras/tests``, see it."""

from __future__ import annotations

import pytest

from sdflow import registry


@pytest.fixture(scope="session", autouse=True)
def hash_cache_of_the_tests(tmp_path_factory):
    """The tests keep file hashes in a folder of their own, not the user's cache."""
    import os

    previous = os.environ.get("SDFLOW_CACHE_DIR")
    os.environ["SDFLOW_CACHE_DIR"] = str(tmp_path_factory.mktemp("sdflow-cache"))
    yield
    if previous is None:
        os.environ.pop("SDFLOW_CACHE_DIR", None)
    else:
        os.environ["SDFLOW_CACHE_DIR"] = previous


@pytest.fixture(autouse=True)
def only_the_built_in_plugin(monkeypatch):
    monkeypatch.setenv("SDFLOW_DISABLE_PLUGINS", "extras")
    if registry._DEFAULT is not None and "extras" in registry._DEFAULT.plugins \
            and not registry._DEFAULT.plugins["extras"].disabled:
        registry._DEFAULT = None  # built by a test that saw it: build it again without
    yield
