"""The engine's and the built-in plugin's tests see sdflow as a user with
only the built-in plugin does: other installed plugins (the extras plugin
of this repository, installed by the test command) are disabled for them,
through the same ``SDFLOW_DISABLE_PLUGINS`` a user would set.  The extras
plugin's own tests, under ``plugins/sdflow_extras/tests``, see it."""

from __future__ import annotations

import pytest

from sdflow import registry


@pytest.fixture(autouse=True)
def only_the_built_in_plugin(monkeypatch):
    monkeypatch.setenv("SDFLOW_DISABLE_PLUGINS", "extras")
    if registry._DEFAULT is not None and "extras" in registry._DEFAULT.plugins \
            and not registry._DEFAULT.plugins["extras"].disabled:
        registry._DEFAULT = None  # built by a test that saw it: build it again without
    yield
