"""The model sdflow ships: sdflow-tiny's weights (``sdflow-tiny.safetensors``,
found by :func:`sdflow_diffusion.models.lookup.shipped_models`) and its model
card (``MODEL_CARD.md``).  Only what runs lives here; its data, training and
evaluation live in ``training/tiny/`` at the repository root."""
