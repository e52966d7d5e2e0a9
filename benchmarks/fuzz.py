"""Fuzz ``sdflow check`` and ``sdflow fmt --check``: a script run by hand, not in CI.

It makes ``--count`` recipes (default 100,000) from a seed, a mix of

- token soups: random sequences of the language's own tokens;
- mutations of the example recipes in ``examples/*.sdflow``: characters
  deleted, inserted, duplicated or swapped, lines deleted, duplicated or
  swapped, the file cut short; Unicode look-alikes (no-break space,
  zero-width space, smart quotes, en dash, full-width ``=``, Cyrillic
  letters), wide characters, emoji, combining marks, C0 and C1 control
  characters, a byte order mark, invalid UTF-8 bytes, brackets nested up to
  thousands deep, very long strings, names and comments, an unclosed ``\"\"\"``,
  CRLF line ends;
- Unicode soups: random text over the characters above and the language's;
- random bytes.

Each recipe is written to a file and given, in this process, to what
``sdflow check FILE`` and ``sdflow fmt --check FILE`` do:
``sdflow.cli.main(["check", path])`` and ``main(["fmt", "--check", path])``,
stdout and stderr captured, with ``SDFLOW_DEBUG=1`` (so that the CLI lets a
bug's exception through rather than print its one line; ``--no-debug`` to
leave it unset).  A crash is any exception that escapes ``main``, a return
code not in {0, 1, 2, 130}, output holding "Traceback" or the CLI's
"sdflow: internal error", a return code of 1 or 2 with nothing said, or one command
taking longer than ``--time-limit`` seconds (default 5; the command is
interrupted by SIGALRM at that point, so a hang is a crash, not a stuck
run).  Every crashing input is saved under ``--save DIR`` (default: a new
temporary folder) with a ``crashes.tsv`` that says what each one did;
``--replay FILE...`` runs saved files again and prints their tracebacks.

The run is deterministic: recipe ``i`` is made by ``random.Random(f"{seed}:{i}")``
only, so ``--seed S --only I`` makes recipe ``I`` again.

Run from the repository root::

    .venv/bin/python benchmarks/fuzz.py                    # 100,000 recipes
    .venv/bin/python benchmarks/fuzz.py --count 2000 --seed 1
    .venv/bin/python benchmarks/fuzz.py --replay /tmp/sdflow-fuzz-xyz/*.sdflow
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.sdflow"))
OK_CODES = {0, 1, 2, 130}
COMMANDS = (("check",), ("fmt", "--check"))


# what goes in ------------------------------------------------------------------

NAMES = ["ckpt", "latent", "image", "prompt", "seed", "x", "_a1", "sample", "empty_latent",
         "save_image", "load_checkpoint", "clip_text_encode", "vae_decode", "clip", "model",
         "vae", "width", "height", "batch", "steps", "cfg", "sampler", "scheduler", "denoise",
         "text", "name", "prefix", "true", "false", "sdflow", "param", "require", "diffusion",
         "positive", "negative", "denoised", "extras", "diffusion.sample"]
TOKENS = [
    *NAMES, "=", "(", ")", ",", "[", "]", ".", "0", "1", "42", "-7", "+3", "7.5", ".5", "1e3", "1e999",
    "99999999999999999999999", '"text"', '""', '"a\\"b"', '"\\q"', '"unclosed', '"""', '"""long\ntext"""',
    "'single'", "# a comment", "#", "\n", "\n", "\n", "\n", " ", "\t", "sdflow 1", "sdflow 2", "\r\n", "\r",
    ":", "{", "}", "é", "\\", "\x00", "\ufeff", "\u00a0", "\u200b", "\u201c", "\u201d", "\u2013", "＝",
    "漢字", "🎨", "e\u0301", "\u0301", "\x85", "\u2028", '"sd15.safetensors"', '"euler"', '"eulr"',
]
LOOKALIKES = [
    "\u00a0",  # NO-BREAK SPACE
    "\u200b",  # ZERO WIDTH SPACE
    "\u200c", "\u200d", "\u2060",  # zero-width (non-)joiner, word joiner
    "\ufeff",  # ZERO WIDTH NO-BREAK SPACE (BOM)
    "\u2013", "\u2014", "\u2212",  # EN DASH, EM DASH, MINUS SIGN
    "\u201c", "\u201d", "\u2018", "\u2019", "\u00ab", "\u00bb", "\u2033",  # smart quotes, guillemets
    "\uff1d", "\uff08", "\uff09", "\uff3b", "\uff3d", "\uff0c", "\uff0e",  # full-width = ( ) [ ] , .
    "\u0430", "\u0435", "\u043e", "\u0440", "\u0441",  # Cyrillic а е о р с
    "\u03bf", "\u0391",  # Greek omicron, Alpha
    "\u2024", "\u00b7", "\u2215", "\u02bc",  # one dot leader, middle dot, division slash, modifier apostrophe
    "\u3000", "\u2002", "\u2009", "\u202f",  # ideographic, en, thin, narrow no-break spaces
]
WIDE = ["漢", "字", "가", "ｱ", "🎨", "👩\u200d👩\u200d👧", "🇫🇷", "❤\ufe0f", "𝔸", "\U0001f600", "\u4e00" * 8]
COMBINING = ["\u0301", "\u0308", "\u0327", "\u20dd", "\u0336" * 5, "e\u0301", "a" + "\u0300" * 30]
CONTROLS = [chr(c) for c in range(0x00, 0x20) if c != 0x0A] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)] + [
    "\u2028", "\u2029", "\u200e", "\u200f", "\u202e", "\u2066", "\ufffd", "\ufff9"]
INVALID_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc3", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
                b"\xed\xbf\xbf", b"\xf0\x9f\x98", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82",
                b"\xc3\x28", b"\xa0\xa1"]
SPECIALS = LOOKALIKES + WIDE + COMBINING + CONTROLS


def _examples() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in EXAMPLES]


def _pick_len(rng: random.Random, big: int) -> int:
    """A length up to ``big``, spread over the orders of magnitude."""
    return int(10 ** rng.uniform(0, max(1.0, math.log10(big))))


def nested(rng: random.Random, depth: int) -> str:
    """A value nested ``depth`` deep: lists, or stage calls given as values."""
    kind = rng.randrange(6)
    if kind == 0:
        return "[" * depth + "1" + "]" * depth
    if kind == 1:
        return "[" * depth + "]" * depth
    if kind == 2:
        return "[1, " * depth + "2" + "]" * depth
    if kind == 3:
        return "[\n" * depth + "1" + "\n]" * depth
    if kind == 4:  # calls given as values: `f(a=f(a=...))`
        return "vae_decode(latent=" * depth + "x" + ")" * depth
    return "".join(rng.choice("[(") for _ in range(depth)) + "1" + "".join(rng.choice("])") for _ in range(depth))


def long_text(rng: random.Random, n: int) -> str:
    piece = rng.choice(["a", "ab ", "a red circle, ", "漢字", "🎨", "\\\"", "e\u0301", "x" * 63 + " ", "\t"])
    return (piece * (n // len(piece) + 1))[:n]


# mutations of a recipe's text: each takes (rng, text) and gives text

def _pos(rng, text):
    return rng.randrange(len(text) + 1)


def m_delete(rng, text):
    i = _pos(rng, text)
    n = rng.choice([1, 1, 1, 2, 5, 20])
    return text[:i] + text[i + n:]


def m_insert_char(rng, text):
    i = _pos(rng, text)
    return text[:i] + rng.choice('()[]=,."#\n \t\\\'{}:+-_0a') + text[i:]


def m_duplicate(rng, text):
    i = _pos(rng, text)
    n = rng.choice([1, 1, 3, 10])
    return text[:i] + text[i:i + n] + text[i:]


def m_swap(rng, text):
    i = _pos(rng, text)
    return text[:i] + text[i + 1:i + 2] + text[i:i + 1] + text[i + 2:]


def m_token(rng, text):
    i = _pos(rng, text)
    return text[:i] + rng.choice(TOKENS) + text[i:]


def m_special(rng, text):
    """A look-alike, wide character, emoji, combining mark or control character."""
    i = _pos(rng, text)
    return text[:i] + rng.choice(SPECIALS) + text[i:]


def m_replace_lookalike(rng, text):
    """Replace an ASCII character by the look-alike a word processor would put."""
    table = {" ": ["\u00a0", "\u3000", "\u2009"], '"': ["\u201c", "\u201d", "\u2033"], "-": ["\u2013", "\u2212"],
             "=": ["\uff1d"], "(": ["\uff08"], ")": ["\uff09"], ",": ["\uff0c"], "a": ["\u0430"], "o": ["\u043e"],
             "e": ["\u0435"], "'": ["\u2019"], ".": ["\u2024"]}
    spots = [i for i, c in enumerate(text) if c in table]
    if not spots:
        return text
    for _ in range(rng.choice([1, 1, 2, 5])):
        i = rng.choice(spots)
        if text[i] in table:
            text = text[:i] + rng.choice(table[text[i]]) + text[i + 1:]
    return text


def m_inside_string(rng, text):
    """Something odd inside an existing string literal."""
    quotes = [i for i, c in enumerate(text) if c == '"']
    if not quotes:
        return m_special(rng, text)
    i = rng.choice(quotes) + 1
    return text[:i] + rng.choice(SPECIALS + ["\\", '\\"', '"', '"""', "\\n", "\\u00e9"]) + text[i:]


def m_bom(rng, text):
    i = 0 if rng.random() < 0.7 else _pos(rng, text)
    return text[:i] + "\ufeff" * rng.choice([1, 1, 2]) + text[i:]


def m_lines(rng, text):
    lines = text.split("\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    op = rng.randrange(4)
    if op == 0:
        del lines[i]
    elif op == 1:
        lines.insert(i, lines[j])
    elif op == 2:
        lines[i], lines[j] = lines[j], lines[i]
    else:
        lines[i] = lines[i] * rng.choice([2, 3])
    return "\n".join(lines)


def m_truncate(rng, text):
    return text[:_pos(rng, text)]


def m_deep(rng, text):
    """A value nested up to thousands deep, as a param or a stage argument."""
    depth = rng.choice([rng.randint(1, 50), rng.randint(50, 500), rng.randint(500, 5000)])
    value = nested(rng, depth)
    where = rng.randrange(3)
    if where == 0:
        return text + f"\nparam deep = {value}\n"
    if where == 1:
        return text + f"\nsave_image(image=image, prefix={value})\n"
    i = text.find("(")
    if i < 0:
        return text + value
    return text[:i + 1] + f"deep={value}, " + text[i + 1:]


JUNK = ["x'", "'", "\u00a0", "\U0001f3a8", "(", "[", '"', "x\u201c", "1 ", "\u200b", "\x00", "a.", "=", ","]


def m_long(rng, text):
    """A very long string, name, comment or line; or a line of one piece of
    junk repeated, outside any string."""
    n = _pick_len(rng, 2_000_000)
    body = long_text(rng, n)
    kind = rng.randrange(8)
    piece = [
        f'param long = "{body}"\n',
        f'param long = """{body}"""\n',
        f'param long = "{body}\n',  # unclosed
        f'param long = """{body}\n',  # unclosed triple quote
        f"param {'a' * n} = 1\n",
        f"# {body}\n",
        f"save_image(image=image, prefix=\"{body}\")\n",
        "param junk = 1 " + rng.choice(JUNK) * (n // 2 + 1) + "\n",
    ][kind]
    i = text.find("\n", _pos(rng, text))
    i = len(text) if i < 0 else i + 1
    return text[:i] + piece + text[i:]


def m_unclosed(rng, text):
    i = _pos(rng, text)
    return text[:i] + rng.choice(['"""', '"', "(", "[", '"""\n' * 3, "((((", "[[[[", '"""""']) + text[i:]


def m_crlf(rng, text):
    return text.replace("\n", rng.choice(["\r\n", "\r", "\n\r", "\u2028", "\x85"]))


def m_many_errors(rng, text):
    """The same broken line many times: many diagnostics at once."""
    line = rng.choice(["x = sampel(a=1)\n", "param : 1\n", "y = vae_decode(vae=ckpt.vea)\n", "'q'\n", "(\n",
                       "z = empty_latent(width=513)\n"])
    return text + line * _pick_len(rng, 20_000)


MUTATIONS = [
    (m_delete, 6), (m_insert_char, 6), (m_duplicate, 4), (m_swap, 4), (m_token, 6), (m_special, 8),
    (m_replace_lookalike, 5), (m_inside_string, 5), (m_bom, 3), (m_lines, 5), (m_truncate, 2),
    (m_deep, 2), (m_long, 0.5), (m_unclosed, 3), (m_crlf, 1), (m_many_errors, 0.3),
]
_MUTATION_FUNCS = [m for m, _ in MUTATIONS]
_MUTATION_WEIGHTS = [w for _, w in MUTATIONS]


def invalid_bytes(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.choice([1, 1, 2, 4])):
        i = rng.randrange(len(data) + 1)
        data = data[:i] + rng.choice(INVALID_UTF8) + data[i:]
    return data


# generators: each takes rng and gives (bytes, a short description)

def gen_mutated(rng, examples):
    text = rng.choice(examples)
    names = []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 5])):
        mutation = rng.choices(_MUTATION_FUNCS, _MUTATION_WEIGHTS)[0]
        text = mutation(rng, text)
        names.append(mutation.__name__[2:])
    data = text.encode("utf-8")
    if rng.random() < 0.04:
        data = invalid_bytes(rng, data)
        names.append("invalid_utf8")
    return data, "mutated:" + "+".join(names)


def gen_token_soup(rng, examples):
    pieces = [rng.choice(TOKENS) for _ in range(rng.randint(0, 80))]
    if rng.random() < 0.5:
        pieces.insert(0, "sdflow 1\n")
    text = "".join(p if p in "()[],.=\n" else f" {p} " if rng.random() < 0.7 else p for p in pieces)
    return text.encode("utf-8"), "token_soup"


def gen_unicode_soup(rng, examples):
    alphabet = list('abcxyz_019 =(),[].+-"#\n\t\\\'é:') + SPECIALS
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
    return text.encode("utf-8"), "unicode_soup"


def gen_deep(rng, examples):
    depth = int(10 ** rng.uniform(0, 3.7))  # 1 .. about 5000
    head = "sdflow 1\n" if rng.random() < 0.8 else ""
    value = nested(rng, depth)
    if rng.random() < 0.2:  # left open
        value = value[: len(value) * rng.randint(1, 9) // 10]
    stmt = rng.choice([f"param p = {value}\n", f"x = sample(seed={value})\n", f"save_image(image={value})\n",
                       f"{value}\n"])
    return (head + stmt).encode("utf-8"), f"deep:{depth}"


def gen_long(rng, examples):
    text = rng.choice(examples)
    return m_long(rng, text).encode("utf-8"), "long"


def gen_random_bytes(rng, examples):
    n = rng.choice([rng.randint(0, 16), rng.randint(0, 300), rng.randint(0, 3000)])
    if rng.random() < 0.5:  # mostly ASCII, some high bytes
        data = bytes(rng.choice(b"abc_=()[],.\"#\n 019\xff\xc3\xa9\x00\r\t") for _ in range(n))
    else:
        data = rng.randbytes(n)
    return data, "random_bytes"


GENERATORS = [(gen_mutated, 55), (gen_token_soup, 15), (gen_unicode_soup, 10), (gen_random_bytes, 10),
              (gen_deep, 7), (gen_long, 3)]
_GEN_FUNCS = [g for g, _ in GENERATORS]
_GEN_WEIGHTS = [w for _, w in GENERATORS]


def make_case(seed: int, index: int, examples: list[str]) -> tuple[bytes, str]:
    rng = random.Random(f"{seed}:{index}")
    generator = rng.choices(_GEN_FUNCS, _GEN_WEIGHTS)[0]
    return generator(rng, examples)


# what must come out --------------------------------------------------------------


class _Timeout(BaseException):
    """Raised by SIGALRM when one command runs past the time limit."""


def _alarm(signum, frame):
    raise _Timeout()


def run_command(argv: list[str], limit: float) -> tuple[object, str, float, str | None]:
    """Run ``sdflow.cli.main(argv)`` in this process: (return code or None,
    captured output, seconds, traceback text of an escaping exception)."""
    from sdflow.cli import main

    out = io.StringIO()
    tb = None
    rc: object = None
    start = time.perf_counter()
    if limit > 0:
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            rc = main(argv)
    except _Timeout:
        rc = "timeout"
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - anything escaping main is what we look for
        tb = traceback.format_exc()
    finally:
        if limit > 0:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return rc, out.getvalue(), time.perf_counter() - start, tb


def crash_kind(command: str, rc, output: str, seconds: float, tb: str | None, limit: float) -> str | None:
    """None when the command behaved; else a short name of what went wrong."""
    if tb is not None:
        return f"{command}: {_exception_summary(tb)}"
    if rc == "timeout":
        return f"{command}: timeout (over {limit:g} s, interrupted)"
    if rc not in OK_CODES:
        return f"{command}: return code {rc!r}"
    if "Traceback" in output:
        return f"{command}: 'Traceback' in output"
    internal = next((line for line in output.splitlines() if line.startswith("sdflow: internal error")), None)
    if internal:  # the CLI's catch-all caught it (run with SDFLOW_DEBUG unset)
        kind = internal[len("sdflow: internal error"):].lstrip(": ").split(":")[0]
        return f"{command}: internal error: {kind} (the CLI's catch-all)"
    if limit > 0 and seconds > limit:
        return f"{command}: slow (over {limit:g} s)"
    if rc in (1, 2) and not output.strip():
        return f"{command}: exit {rc} with nothing said"
    return None


def _exception_summary(tb: str) -> str:
    """'RecursionError at sdflow/format.py:157 in _value': the exception and
    the innermost frame in sdflow's own code (else the innermost frame)."""
    lines = tb.rstrip().splitlines()
    last = lines[-1].split(":")[0] if lines else "?"
    frames = [line.strip() for line in lines if line.strip().startswith('File "')]
    ours = [f for f in frames if "/sdflow/" in f or "/sdflow_" in f] or frames
    where = ""
    if ours:
        # File "/x/sdflow/format.py", line 157, in _value
        parts = ours[-1].split('"')
        path = parts[1] if len(parts) > 1 else "?"
        rest = parts[2] if len(parts) > 2 else ""
        short = "/".join(Path(path).parts[-2:])
        where = f" at {short}{rest.replace(', line ', ':').replace(', in ', ' in ')}"
    return f"{last}{where}"


def check_case(data: bytes, path: Path, limit: float) -> tuple[list[str], dict[str, tuple]]:
    path.write_bytes(data)
    kinds, detail = [], {}
    for command in COMMANDS:
        name = " ".join(command)
        rc, output, seconds, tb = run_command([*command, str(path)], limit)
        kind = crash_kind(name, rc, output, seconds, tb, limit)
        if kind:
            kinds.append(kind)
            detail[name] = (rc, seconds, tb or output[-2000:])
    return kinds, detail


# the run -------------------------------------------------------------------------


def cache_gettext_lookups() -> None:
    """Remember ``gettext.find``'s answers for this process.

    ``sdflow.cli.main`` builds its argparse parser on every call, and argparse
    asks gettext to translate each help text, which looks for catalogue files
    on disk every time: about a third of the time of checking a small recipe
    in-process.  The answers cannot change during a run, so they are kept;
    nothing of sdflow's behaviour changes (``--no-gettext-cache`` to compare).
    """
    import gettext

    if getattr(gettext.find, "_fuzz_cached", False):
        return
    find = gettext.find
    memo: dict = {}

    def cached_find(domain, localedir=None, languages=None, all=False):
        key = (domain, localedir, tuple(languages) if languages else None, all)
        if key not in memo:
            memo[key] = find(domain, localedir, languages, all)
        found = memo[key]
        return list(found) if isinstance(found, list) else found

    cached_find._fuzz_cached = True
    gettext.find = cached_find


def fuzz(count: int, seed: int, save: Path, limit: float, max_saved: int, only: list[int] | None,
         progress: bool) -> int:
    from sdflow.registry import default_registry

    default_registry()  # loaded once, as the first command would
    examples = _examples()
    save.mkdir(parents=True, exist_ok=True)
    manifest = save / "crashes.tsv"
    work = Path(tempfile.mkdtemp(prefix="sdflow-fuzz-work-"))
    path = work / "recipe.sdflow"
    crashes: Counter[str] = Counter()
    first_example: dict[str, str] = {}
    by_generator: Counter[str] = Counter()
    crashed_by_generator: Counter[str] = Counter()
    saved = unsaved = crashed = 0
    slowest: list[tuple[float, int, str]] = []
    total_bytes = 0
    indices = only if only is not None else range(count)
    start = time.perf_counter()
    last_report = start
    done = 0
    try:
        with manifest.open("a", encoding="utf-8") as log:
            for index in indices:
                data, description = make_case(seed, index, examples)
                generator = description.split(":")[0]
                by_generator[generator] += 1
                total_bytes += len(data)
                t0 = time.perf_counter()
                kinds, detail = check_case(data, path, limit)
                elapsed = time.perf_counter() - t0
                slowest.append((elapsed, index, description))
                if len(slowest) > 50:
                    slowest.sort(reverse=True)
                    del slowest[5:]
                done += 1
                if kinds:
                    crashed += 1
                    crashed_by_generator[generator] += 1
                    for kind in kinds:
                        crashes[kind] += 1
                        first_example.setdefault(kind, f"seed {seed} index {index} ({description})")
                    if not max_saved or any(crashes[k] <= max_saved for k in kinds):
                        name = f"crash_{seed}_{index:07d}.sdflow"
                        (save / name).write_bytes(data)
                        reasons = " | ".join(kinds).replace("\t", " ")
                        log.write(f"{name}\t{seed}\t{index}\t{description}\t{reasons}\n")
                        log.flush()
                        saved += 1
                    else:
                        unsaved += 1
                now = time.perf_counter()
                if progress and now - last_report > 10:
                    last_report = now
                    print(f"  ... {done} recipes, {done / (now - start):.0f}/s, {crashed} crashing",
                          file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: the figures below are for the recipes run so far", file=sys.stderr)
    finally:
        path.unlink(missing_ok=True)
        work.rmdir()
    seconds = time.perf_counter() - start

    print(f"recipes run: {done} (seed {seed}), {total_bytes / 1e6:.1f} MB in all, "
          f"in {seconds:.1f} s: {done / seconds if seconds else 0:.0f} recipes/s "
          f"({len(COMMANDS)} commands each: {' and '.join(' '.join(c) for c in COMMANDS)})")
    print("by generator: " + ", ".join(
        f"{g} {n} ({crashed_by_generator[g]} crashing)" for g, n in by_generator.most_common()))
    slowest.sort(reverse=True)
    print("slowest: " + ", ".join(f"{s * 1e3:.0f} ms (index {i}, {d})" for s, i, d in slowest[:3]))
    print(f"recipes with a crash: {crashed}")
    if crashes:
        print("crashes by kind (count: kind; first seen):")
        for kind, n in crashes.most_common():
            print(f"  {n:>7}: {kind}; {first_example[kind]}")
        note = f" ({unsaved} more not saved: --max-saved-per-kind {max_saved})" if unsaved else ""
        print(f"saved {saved} crashing inputs to {save}{note}; what each did: {manifest}")
        print(f"reproduce one: .venv/bin/python benchmarks/fuzz.py --replay {save}/crash_...sdflow")
    return 1 if crashes else 0


def replay(files: list[str], limit: float) -> int:
    """Run saved inputs again; print each command's outcome and traceback."""
    status = 0
    for file in files:
        data = Path(file).read_bytes()
        with tempfile.TemporaryDirectory(prefix="sdflow-fuzz-replay-") as tmp:
            path = Path(tmp) / "recipe.sdflow"
            path.write_bytes(data)
            for command in COMMANDS:
                name = " ".join(command)
                rc, output, seconds, tb = run_command([*command, str(path)], limit)
                kind = crash_kind(name, rc, output, seconds, tb, limit)
                print(f"{file}: sdflow {name}: rc {rc!r}, {seconds * 1e3:.1f} ms: {kind or 'ok'}")
                if kind:
                    status = 1
                    print(textwrap_indent(tb or output[-3000:]))
    return status


def textwrap_indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="recipes to make and run (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="the seed (default 0)")
    parser.add_argument("--save", type=Path, default=None,
                        help="folder for crashing inputs (default: a new temporary folder)")
    parser.add_argument("--time-limit", type=float, default=5.0,
                        help="seconds one command may take before it counts as a crash (default 5; 0: none)")
    parser.add_argument("--max-saved-per-kind", type=int, default=0,
                        help="save at most this many inputs of each crash kind (default 0: all)")
    parser.add_argument("--only", type=int, nargs="+", metavar="INDEX", help="run only these recipe indices")
    parser.add_argument("--replay", nargs="+", metavar="FILE", help="run saved inputs again and show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--no-debug", action="store_true",
                        help="leave SDFLOW_DEBUG unset: a bug is the CLI's one line 'sdflow: internal error: ...' "
                             "(still counted as a crash) rather than an exception with its place")
    parser.add_argument("--no-gettext-cache", action="store_true",
                        help="let argparse look up translations on disk at every call, as a fresh process does")
    args = parser.parse_args(argv)
    os.environ.setdefault("NO_COLOR", "1")
    if not args.no_debug:  # the CLI lets a bug's exception through, so its place is known
        os.environ["SDFLOW_DEBUG"] = "1"
    if not args.no_gettext_cache:
        cache_gettext_lookups()
    if args.replay:
        return replay(args.replay, args.time_limit)
    save = args.save or Path(tempfile.mkdtemp(prefix="sdflow-fuzz-"))
    print(f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; "
          f"{len(EXAMPLES)} example recipes; time limit {args.time_limit:g} s per command")
    return fuzz(args.count, args.seed, save, args.time_limit, args.max_saved_per_kind, args.only, not args.quiet)


if __name__ == "__main__":
    sys.exit(main())
