"""How the models sdflow ships were made: their data, training and
evaluation, run from the repository root (``python -m training.tiny.train``).
Not part of the installed package: nothing here runs when sdflow does."""
