"""Models: families, finding files by name, and loading checkpoints.

The loaders (single_file, diffusers_folder) are leaves: they import common,
families and tokenizer, never load.py, which chooses between them.
"""
