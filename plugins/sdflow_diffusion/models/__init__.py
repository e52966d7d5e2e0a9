"""Models: families, finding files by name, and loading checkpoints.

The loaders (single_file, diffusers_folder) are leaves: they import common,
files, diffusers_layout, families and tokenizer, never load.py, which
chooses between them.  files (what a file is: FIFO or device, safetensors
header, JSON) and diffusers_layout (what a folder holds, which of its files
a load reads) check a checkpoint before anything hashes or loads it.
"""
