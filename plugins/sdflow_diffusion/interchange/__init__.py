"""Other tools' files read into recipes, for ``sdflow import`` (ComfyUI's
workflows; AUTOMATIC1111's parameters text is read in ``images/a1111.py``,
beside its writer)."""
