"""sdflow-tiny's making: a small text-to-image Stable Diffusion trained from
scratch on synthetic pictures, so that sdflow ships a default model that
draws what it is asked for, offline, on a CPU, and whose every output can be
checked.

The pictures are one coloured shape (circle, square or triangle; small or
large; left, right, top, bottom or centre) on a plain background of another
colour, captioned in plain English (:mod:`.dataset`); :mod:`.model` is the
architecture and :mod:`.train` the seeded training run; a deterministic pixel
scorer reads those attributes back from any 64x64 image (:mod:`.score`), so
that the model's accuracy, held-out combinations included, is a number
(``benchmarks/tiny_eval.py``, drawing through :mod:`.evaluate`) rather than
an impression.  The weights and the model card ship in
``plugins/sdflow_diffusion/models/tiny/``.
"""
