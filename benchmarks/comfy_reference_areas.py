"""Reference area pairings from a real ComfyUI checkout, written as JSON.

Run by hand; it asserts nothing about sdflow and sdflow never imports it.
It imports ComfyUI's ``comfy.samplers`` from the checkout given with
``--comfyui`` (GPL-3.0: only its module and function names are used here,
none of its code is copied) and records what ComfyUI's
``create_cond_with_same_area_if_none`` adds to a prompt and its negative
before sampling, so that sdflow's sampler (``numerics/denoiser.py``,
``_pair_areas``) can be checked against it (``tests/data/comfyui_areas.json``,
read by ``tests/test_conditioning.py``).

Each case is a prompt and a negative, each a list of entries, an entry an
area (height, width, y, x in latent cells) or none.  They are given to
ComfyUI's function in the order its ``process_conds`` visits them (every
entry of the prompt, then every entry of the negative, the ones added
included, each against the other prompt), and the result is recorded as
each prompt's entries after the pairing: ``[area, fields from, text from]``,
the names of the entries whose fields (area, strength...) and whose text
the entry has (``p0`` is the prompt's first entry, ``n1`` the negative's
second).  Cases: hand-picked ones (an area inside another, equal areas,
nested areas of different sizes, areas on both sides, no plain entry) and
300 random ones from a seeded generator.

Example::

    /work/comfy-venv/bin/python benchmarks/comfy_reference_areas.py \\
        --comfyui /work/comfyui --out tests/data/comfyui_areas.json
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import sys

from comfy_reference import comfyui_record, write_cases, _install_torchvision_stand_in, _torchvision_importable

HAND_PICKED = [
    ([None, (4, 4, 0, 0)], [None]),
    ([None, (4, 4, 0, 0), (4, 4, 0, 4)], [None]),
    ([(8, 8, 0, 0)], [None]),
    ([None, (4, 4, 2, 2)], [None, (6, 6, 1, 1)]),
    ([None, (4, 4, 2, 2)], [None, (6, 6, 1, 1), (5, 5, 1, 1)]),
    ([None, (4, 4, 2, 2)], [(4, 4, 2, 2)]),
    ([None], [None, (3, 5, 0, 1)]),
    ([(2, 2, 0, 0), (6, 6, 2, 2)], [(4, 4, 0, 0)]),
    ([None, (4, 4, 0, 0)], [(2, 2, 6, 6)]),
    ([None, (4, 8, 0, 0), (4, 4, 0, 0)], [None, (4, 8, 0, 0)]),
]


def _random_cases(count: int, seed: int) -> list:
    rng = random.Random(seed)

    def entry():
        if rng.random() < 0.35:
            return None
        height, width = rng.randint(1, 8), rng.randint(1, 8)
        return (height, width, rng.randint(0, 8 - height), rng.randint(0, 8 - width))

    return [([entry() for _ in range(rng.randint(1, 4))], [entry() for _ in range(rng.randint(1, 3))])
            for _ in range(count)]


def _pair(samplers, positive: list, negative: list) -> dict:
    def cond(area, name):
        c = {"model_conds": {"text": name}, "fields": name}
        if area is not None:
            c["area"] = tuple(area)
        return c

    conds = {"positive": [cond(a, f"p{i}") for i, a in enumerate(positive)],
             "negative": [cond(a, f"n{i}") for i, a in enumerate(negative)]}
    for k in conds:  # as process_conds visits them
        for c in conds[k]:
            for kk in conds:
                if k != kk:
                    samplers.create_cond_with_same_area_if_none(conds[kk], c)
    return {k: [[list(c["area"]) if "area" in c else None, c["fields"], c["model_conds"]["text"]] for c in v]
            for k, v in conds.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", required=True, help="path of a ComfyUI checkout")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--commit", default=None, help="ComfyUI commit to record (default: from the checkout)")
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.comfyui))
    if not _torchvision_importable():
        _install_torchvision_stand_in()
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    import comfy.samplers
    import torch

    cases = []
    for positive, negative in HAND_PICKED + _random_cases(300, seed=0):
        cases.append({"positive": [list(a) if a else None for a in positive],
                      "negative": [list(a) if a else None for a in negative],
                      "paired": _pair(comfy.samplers, positive, negative)})
    data = {
        "comfyui": comfyui_record(args.comfyui, args.commit),
        "environment": {"python": platform.python_version(), "torch": torch.__version__},
        "date": datetime.date.today().isoformat(),
        "cases": cases,
    }
    write_cases(args.out, data)  # one case a line


if __name__ == "__main__":
    main()
