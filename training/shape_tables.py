"""Write each shipped family's shape table from its configs.

Family detection compares a file's tensors with the shape table of each
family (``plugins/sdflow_diffusion/models/configs/<name>/shapes.json.gz``),
which lists every tensor a checkpoint of that family holds in the original
single-file layout.  The tables are derived from the families' configs by
building the models on the meta device (seconds, and the import of diffusers
and transformers); shipping them makes detection a matter of milliseconds.
Run this after adding a family folder or changing a config; with ``--check``
it writes nothing and says which tables differ (tests/test_loading_memory.py
checks the same)::

    HF_HUB_OFFLINE=1 .venv/bin/python training/shape_tables.py [--check] [NAME ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def main(argv: list[str] | None = None) -> int:
    from sdflow_diffusion.models.families import SHAPE_TABLE, family_dir, family_names, shape_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="families (default: every shipped one)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table differs")
    args = parser.parse_args(argv)
    stale = []
    for name in args.names or family_names():
        path = family_dir(name) / SHAPE_TABLE
        table = shape_table(name)
        if path.is_file() and path.read_bytes() == table:
            print(f"{name}: up to date")
            continue
        stale.append(name)
        if args.check:
            print(f"{name}: {'differs from its configs' if path.is_file() else 'missing'}")
            continue
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".shapes-")
        with os.fdopen(handle, "wb") as out:
            out.write(table)
        os.replace(temporary, path)
        print(f"{name}: wrote {path} ({len(table)} bytes)")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
