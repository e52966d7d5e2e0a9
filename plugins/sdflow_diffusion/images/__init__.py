"""Images in and out of files: PNG output that carries its recipe."""
