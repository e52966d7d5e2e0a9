"""The CLIP tokenizer, built offline from the BPE merges this package ships.

A single-file checkpoint carries no tokenizer, and nothing may be downloaded,
so the vocabulary is derived from OpenAI's merges list
(``data/bpe_simple_vocab_16e6.txt.gz``, MIT licensed) exactly as CLIP's own
``simple_tokenizer`` derives it: the 256 byte symbols, the same with the
end-of-word mark ``</w>``, every merge joined, then ``<|startoftext|>`` and
``<|endoftext|>`` (49408 tokens).  Every Stable Diffusion text encoder uses
this vocabulary; they differ only in the padding token.
"""

from __future__ import annotations

import functools
import gzip
import inspect
import json
import tempfile
from pathlib import Path

MERGES_FILE = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
MAX_LENGTH = 77  # CLIP's context: 75 prompt tokens between start and end
START, END = "<|startoftext|>", "<|endoftext|>"
# The merges file's first line is a version header; CLIP uses the next
# 49152 - 256 - 2 lines, so that the vocabulary has 49408 entries.
MERGE_COUNT = 49152 - 256 - 2


def _byte_symbols() -> list[str]:
    """The printable stand-in of every byte, in CLIP's vocabulary order.

    GPT-2's byte-level BPE trick: a printable byte stands for itself, the
    others are shifted past 255 so that no symbol is whitespace or a control
    character.  CLIP lists the printable bytes first, then the shifted ones,
    and that order fixes the ids ("a" is 64, "a</w>" is 256 + 64).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


@functools.lru_cache(maxsize=1)
def vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's token -> id map and its ordered merges."""
    lines = gzip.decompress(MERGES_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:MERGE_COUNT + 1]]
    byte_symbols = _byte_symbols()
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols]
    tokens += ["".join(pair) for pair in merges] + [START, END]
    return {token: i for i, token in enumerate(tokens)}, merges


@functools.cache
def clip_tokenizer(pad_token: str = END):
    """A ``transformers.CLIPTokenizer`` as Stable Diffusion uses it.

    SD 1.x and SDXL's first encoder pad with ``<|endoftext|>``; SD 2.x and
    SDXL's second (OpenCLIP) pad with ``"!"`` (id 0).  Cached per pad token:
    the tokenizer is read-only in use, so one instance serves every model.
    """
    from transformers import CLIPTokenizer

    vocab, merges = vocabulary()
    settings = dict(pad_token=pad_token, model_max_length=MAX_LENGTH)
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:
        # transformers 5: the tokenizers-backed class takes them in memory.
        return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), **settings)
    # transformers 4 reads vocab.json and merges.txt from a folder.
    with tempfile.TemporaryDirectory(prefix="sdflow-clip-") as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(folder, "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True, **settings)
