"""Reference prompt tokenizations from a real ComfyUI checkout, written as JSON.

Run by hand; it asserts nothing about sdflow and sdflow never imports it.
It imports ComfyUI's own tokenizers from the checkout given with
``--comfyui`` (ComfyUI is GPL-3.0: none of its code is copied here, only its
module, class and function names are used) and records what they make of a
list of tricky prompts, so that sdflow's tests can compare its own prompt
reading with them (``tests/data/comfyui_prompts.json``, described in
``tests/data/README.md``).

For each prompt it records:

* ``segments``: ``comfy.sd1_clip.token_weights(escape_important(prompt), 1.0)``,
  each text passed through ``unescape_important``: the runs of text and
  their weights, before tokenizing;
* ``chunks``: ``comfy.sd1_clip.SD1Tokenizer.tokenize_with_weights(prompt)["l"]``,
  each chunk as its 77 ``tokens`` and 77 ``weights``.  The tokenizer is
  ComfyUI's own (``comfy/sd1_tokenizer``, CLIP's vocabulary), with an
  embeddings folder of test files (below); a vector of an embedding is
  written as ``"NAME:INDEX"``;
* for a few prompts, ``chunks_g``: the same from
  ``comfy.sdxl_clip.SDXLClipGTokenizer`` (pads with token 0, reads the
  ``clip_g`` vectors of an SDXL embedding).

The embeddings folder holds ``one`` (1 vector), ``three`` (3), ``ten`` (10),
each ``.safetensors`` with one tensor ``emb_params`` [n, 768], and ``pair``
(SDXL: ``clip_l`` [2, 768], ``clip_g`` [2, 1280]).  Vector i of an
embedding is filled with a value that says which it is.

It needs a Python with ComfyUI's import chain installed (torch, numpy,
safetensors, transformers, ...) and no model weights.  Example::

    /work/comfy-venv/bin/python benchmarks/comfy_reference_prompts.py \\
        --comfyui /work/comfyui --out tests/data/comfyui_prompts.json
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile

from comfy_reference import comfyui_record, write_cases, _install_torchvision_stand_in, _torchvision_importable

EMBEDDINGS = {"one": 1, "three": 3, "ten": 10}  # name: vectors, width 768
PAIR = ("pair", 2)  # an SDXL embedding: clip_l and clip_g


def _words(n: int) -> str:
    """``n`` single-token words."""
    cycle = ["cat", "dog", "red", "blue", "tree", "house"]
    return " ".join(cycle[i % len(cycle)] for i in range(n))


PROMPTS = [
    "a photo of a cat",
    "",
    "a (red:1.5) ball",
    "((nested)) and (((deeper)))",
    "((a:1.5) b), (c:0.5)",
    "(a:1.2:1.3) (:1.5) (x :  0.8 )",
    "\\(escaped\\) (real) \\\\(x\\) \\[s\\]",
    "[bracket] stays [[text]]",
    "one BREAK two",
    "(word:abc) and (word: 1.2) and (1.2:)",
    "unbalanced ) paren (group)",
    "a) ((b)) c",
    "unclosed (paren here",
    "((a)",
    "a (b (c:1.3) d) e",
    "(a) (b:0.5) (d:0) (e:-1) (f:1e1)",
    "café naïve 東京 straße ÜNÏCÖDÉ",
    "🐱🔥 cat 👩‍🚀 emoji",
    "line one\nline two\tand tab",
    "a embedding:three cat",
    "(embedding:one:1.2) dog",
    "embedding:three.safetensors, art",
    "embedding:one, embedding:three and more",
    "a\nembedding:one b",
    "x,embedding:one y",
    "embedding:pair sdxl",
    _words(70) + " (red ball on a wooden table:1.2) end",
    _words(71) + " (a b c d e) f",
    _words(73) + " (one two three four five six seven eight nine ten:1.1) tail",
    _words(60) + " (" + "supercalifragilisticexpialidocious" * 3 + ") tail",
    _words(72) + " embedding:ten tail",
    _words(74) + " embedding:three tail",
    "(" + _words(100) + ":1.3)",
    ", ".join(["a red circle on a blue background"] * 20),
    _words(74) + " (x) " + _words(80) + " BREAK z",
]
CLIP_G = {"a (red:1.5) ball", "embedding:pair sdxl", _words(74) + " embedding:three tail"}


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", required=True, help="path of a ComfyUI checkout")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--commit", default=None, help="ComfyUI commit to record (default: from the checkout)")
    return p.parse_args(argv)


def _import_comfy(path):
    sys.path.insert(0, os.path.abspath(path))
    if not _torchvision_importable():
        _install_torchvision_stand_in()
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    import comfy.sd1_clip
    import comfy.sdxl_clip

    return comfy


def _write_embeddings(torch, folder):
    """The test embeddings; each vector's first value names it."""
    from safetensors.torch import save_file

    names = {}
    for k, (name, count) in enumerate(EMBEDDINGS.items()):
        vectors = torch.zeros(count, 768)
        for i in range(count):
            vectors[i] = 1000 * (k + 1) + i
            names[float(vectors[i, 0])] = f"{name}:{i}"
        save_file({"emb_params": vectors}, os.path.join(folder, name + ".safetensors"))
    name, count = PAIR
    pair = {"clip_l": torch.zeros(count, 768), "clip_g": torch.zeros(count, 1280)}
    for i in range(count):
        for key, tensor in pair.items():
            tensor[i] = 9000 + i
        names[float(9000 + i)] = f"{name}:{i}"
    save_file(pair, os.path.join(folder, name + ".safetensors"))
    return names


def _chunks(torch, tokenizer, prompt, names):
    out = []
    for chunk in tokenizer.tokenize_with_weights(prompt):
        tokens = [names[float(t.reshape(-1)[0])] if torch.is_tensor(t) else int(t) for t, _ in chunk]
        out.append({"tokens": tokens, "weights": [float(w) for _, w in chunk]})
    return out


def main(argv=None):
    args = _parse_args(argv)
    comfy = _import_comfy(args.comfyui)
    import torch
    import transformers

    sd1 = comfy.sd1_clip
    with tempfile.TemporaryDirectory(prefix="sdflow-embeddings-") as folder:
        names = _write_embeddings(torch, folder)
        clip_l = sd1.SD1Tokenizer(embedding_directory=folder).clip_l
        clip_g = comfy.sdxl_clip.SDXLClipGTokenizer(embedding_directory=folder)
        cases = []
        for prompt in PROMPTS:
            segments = [[sd1.unescape_important(text), weight]
                        for text, weight in sd1.token_weights(sd1.escape_important(prompt), 1.0)]
            case = {"prompt": prompt, "segments": segments, "chunks": _chunks(torch, clip_l, prompt, names)}
            if prompt in CLIP_G:
                case["chunks_g"] = _chunks(torch, clip_g, prompt, names)
            cases.append(case)
    data = {
        "comfyui": comfyui_record(args.comfyui, args.commit),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__},
        "date": datetime.date.today().isoformat(),
        "embeddings": {**EMBEDDINGS, PAIR[0]: PAIR[1]},
        "cases": cases,
    }
    write_cases(args.out, data)  # one case a line


if __name__ == "__main__":
    main()
