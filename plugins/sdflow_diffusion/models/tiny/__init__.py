"""The models sdflow ships: sdflow-tiny's weights (``sdflow-tiny.safetensors``)
and a LoRA for it (``sdflow-tiny-corners.safetensors``), found by
:func:`sdflow_diffusion.models.lookup.shipped_models`, and their cards
(``MODEL_CARD.md``, ``LORA_CARD.md``).  Only what runs lives here; their
data, training and evaluation live in ``training/tiny/`` at the repository
root."""
