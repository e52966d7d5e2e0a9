"""The diffusion plugin's stage types, one declaration each (``@stage``).

Every module here is read by the plugin's ``sdflow_stage_types`` hook
(``registry.add_stages(this package)``): adding a stage type is adding a
module, or a function to one.  Declaring imports pydantic only; each run
function imports torch and the numerics it needs when it runs.
"""
