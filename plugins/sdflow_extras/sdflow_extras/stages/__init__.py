"""The extras plugin's stage types, one declaration each (``@stage``).

The plugin's ``sdflow_stage_types`` hook hands this package to
``registry.add_stages``, which reads every module in it: ``prompts`` (a
wildcard prompt, encoded) and ``post`` (image post-processing).  Declaring
imports pydantic only; each run function imports torch when it runs.
"""
