"""Hostile input, as a user would meet it: an input in, the exact diagnostic out.

One test (or a few) for each class of failure that must never happen: a
traceback, a hang, memory or time that grows faster than the input, a caret
in the wrong column, one mistake reported as many, a file that is not what it
seems read anyway, an output problem found only after the work.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest

from sdflow.cli import main
from sdflow.format import format_recipe
from sdflow.parse import MAX_DEPTH, parse

HEADER = "sdflow 1\n"
GOOD = (
    'sdflow 1\n'
    'ckpt = load_checkpoint(name="sdflow-tiny")\n'
    'positive = clip_text_encode(clip=ckpt.clip, text="a red circle")\n'
    'negative = clip_text_encode(clip=ckpt.clip, text="")\n'
    'latent = empty_latent(width=64, height=64)\n'
    'denoised = sample(model=ckpt.model, positive=positive, negative=negative, latent=latent, steps=2)\n'
    'image = vae_decode(vae=ckpt.vae, latent=denoised)\n'
    'save_image(image=image, prefix="out")\n'
)


def check(tmp_path: Path, capsys, text: str | bytes, *args: str) -> tuple[int, str]:
    """``sdflow check`` on a recipe written as given: exit code and stderr."""
    path = tmp_path / "recipe.sdflow"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    code = main(["check", *args, str(path)])
    return code, capsys.readouterr().err.replace(str(path), "recipe.sdflow")


# depth ----------------------------------------------------------------------------


def test_a_list_nested_too_deep_is_one_diagnostic_at_the_bracket(tmp_path, capsys):
    deep = "[" * 500 + "]" * 500
    code, err = check(tmp_path, capsys, f"{HEADER}param p = {deep}\nsave_image(image=p)\n")
    assert code == 1
    column = len("param p = ") + MAX_DEPTH + 1
    assert err.startswith(f"recipe.sdflow:2:{column}: E107 lists nested more than {MAX_DEPTH} deep\n")
    assert err.count(": E107") == 1
    assert "RecursionError" not in err


def test_every_command_survives_deep_nesting(tmp_path, capsys):
    path = tmp_path / "deep.sdflow"
    path.write_text(f"{HEADER}x = empty_latent(width={'[' * 5000}{']' * 5000})\n", encoding="utf-8")
    for command in (["check"], ["fmt", "--check"], ["graph"], ["run", "--output", str(tmp_path / "o")]):
        assert main([*command, str(path)]) == 1
        assert ": E107 " in capsys.readouterr().err


def test_deeply_nested_json_on_the_command_line_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "r.sdflow"
    path.write_text(GOOD.replace("sdflow 1\n", "sdflow 1\nparam sizes = [64]\n"), encoding="utf-8")
    code = main(["check", "--set", "sizes=" + "[" * 100000 + "]" * 100000, str(path)])
    assert code == 2
    assert capsys.readouterr().err == f"sdflow: error: --set sizes=...: lists nested more than {MAX_DEPTH} deep\n"


# size and count ---------------------------------------------------------------------


def test_thousands_of_errors_print_the_first_fifty_and_count_them_all(tmp_path, capsys):
    lines = [HEADER.strip(), 'ckpt = load_checkpoint(name="sdflow-tiny")']
    for i in range(2000):
        lines.append(f"img{i} = vae_decode(vae=ckpt.vae, latent=latnt{i})")
        lines.append(f"save_image(image=img{i})")
    code, err = check(tmp_path, capsys, "\n".join(lines) + "\n")
    assert code == 1
    assert err.count(": E240 unknown name") == 50
    assert err.endswith("\n2000 errors (50 shown; --max-diagnostics 0 shows all)\n")
    code, err = check(tmp_path, capsys, "\n".join(lines) + "\n", "--max-diagnostics", "0")
    assert err.count(": E240 unknown name") == 2000


def test_a_near_miss_among_thousands_of_names_is_still_suggested(tmp_path, capsys):
    lines = [HEADER.strip(), 'ckpt = load_checkpoint(name="sdflow-tiny")']
    lines += [f"latent_{i} = empty_latent(width=64, height=64)" for i in range(3000)]
    lines.append("image = vae_decode(vae=ckpt.vae, latent=latnet_2999)")
    lines.append("save_image(image=image)")
    code, err = check(tmp_path, capsys, "\n".join(lines) + "\n")
    assert "E240 unknown name 'latnet_2999'" in err
    assert "= help: did you mean 'latent_2999'?" in err


def test_a_ten_megabyte_prompt_is_a_string_like_any_other(tmp_path, capsys):
    prompt = "a red circle " * 800_000
    code, err = check(tmp_path, capsys, GOOD.replace('"a red circle"', f'"{prompt}"'))
    assert (code, err) == (0, "recipe.sdflow: ok\n")


def test_a_number_too_long_to_be_a_number(tmp_path, capsys):
    code, err = check(tmp_path, capsys, GOOD.replace("steps=2", "steps=" + "9" * 5000))
    assert code == 1
    column = GOOD.splitlines()[5].index("steps=") + len("steps=") + 1
    assert err.startswith(f"recipe.sdflow:6:{column}: E109 a number of 5000 characters\n")


# files that are not what they seem -----------------------------------------------------


def test_a_folder_among_the_recipes_is_reported_and_the_rest_still_checked(tmp_path, capsys):
    (tmp_path / "good.sdflow").write_text(GOOD, encoding="utf-8")
    (tmp_path / "bad.sdflow").write_text(GOOD.replace("empty_latent", "empty_latnt"), encoding="utf-8")
    (tmp_path / "folder").mkdir()
    code = main(["check", str(tmp_path / "good.sdflow"), str(tmp_path / "folder"), str(tmp_path / "bad.sdflow")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"sdflow: error: {tmp_path / 'folder'}: is a folder, not a recipe\n" in err
    assert "E220 unknown stage type 'empty_latnt'" in err


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_is_never_read_as_a_recipe(capsys, device):
    if not os.path.exists(device):
        pytest.skip(f"no {device} here")
    assert main(["check", device]) == 2
    assert capsys.readouterr().err == f"sdflow: error: {device}: is a device, not a recipe file\n"


def test_a_pipe_is_never_opened(tmp_path, capsys):
    fifo = tmp_path / "recipe.sdflow"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    assert main(["fmt", str(fifo)]) == 2
    assert capsys.readouterr().err == f"sdflow: error: {fifo}: is a pipe, not a recipe file\n"


def test_bytes_that_are_not_utf8_are_reported_at_their_line_and_column(tmp_path, capsys):
    code, err = check(tmp_path, capsys, b'sdflow 1\nparam p = "caf\xe9"\nparam q = 1\n\nparam r = "\xff"\n')
    assert code == 1
    assert err == (
        "recipe.sdflow:2:15: E108 byte 0xe9 is not UTF-8 text\n"
        "  |\n"
        '2 | param p = "caf\ufffd"\n'
        "  |               ^\n"
        "  = help: recipes are UTF-8: save the file as UTF-8 in your editor\n"
        "\n"
        "recipe.sdflow:5:12: E108 byte 0xff is not UTF-8 text\n"
        "  |\n"
        '5 | param r = "\ufffd"\n'
        "  |            ^\n"
        "  = help: recipes are UTF-8: save the file as UTF-8 in your editor\n"
        "\n"
        "2 errors\n"
    )


# text the terminal misreads -------------------------------------------------------------


def test_the_caret_sits_under_the_mistake_after_wide_characters(tmp_path, capsys):
    code, err = check(tmp_path, capsys, f'{HEADER}param p = ["日本語", "e\u0301", 😀]\n')
    assert code == 1
    assert err.startswith(
        "recipe.sdflow:2:25: E106 unexpected character '😀' (U+1F600 GRINNING FACE)\n"
        "  |\n"
        '2 | param p = ["日本語", "e\u0301", 😀]\n'
        "  | " + " " * 26 + "^^\n"  # 26 columns: each of 日本語 takes two, é one
    )


def test_a_byte_order_mark_is_accepted(tmp_path, capsys):
    code, err = check(tmp_path, capsys, b"\xef\xbb\xbf" + GOOD.encode())
    assert (code, err) == (0, "recipe.sdflow: ok\n")


@pytest.mark.parametrize("char, name, help", [
    ("\u00a0", "U+00A0 NO-BREAK SPACE", "it looks like a space but is not one: retype it as a plain space"),
    ("\u200b", "U+200B ZERO WIDTH SPACE",
     "an invisible character (pasted from a web page or a document?): delete it"),
    ("\u3000", "U+3000 IDEOGRAPHIC SPACE", "it looks like a space but is not one: retype it as a plain space"),
])
def test_an_invisible_character_is_named_with_its_code_point(tmp_path, capsys, char, name, help):
    code, err = check(tmp_path, capsys, GOOD.replace("steps=2", f"steps={char}2"))
    assert code == 1
    column = GOOD.splitlines()[5].index("steps=") + len("steps=") + 1
    assert f"recipe.sdflow:6:{column}: E106 unexpected character {name}\n" in err
    assert f"= help: {help}\n" in err
    assert err.endswith("\n1 error\n")


def test_a_look_alike_inside_a_call_over_several_lines_is_one_error(tmp_path, capsys):
    recipe = GOOD.replace(
        "latent = empty_latent(width=64, height=64)",
        "latent = empty_latent(\n    width=64,\n    height=64\u2013,\n    batch=1,\n)",
    )
    code, err = check(tmp_path, capsys, recipe)
    assert code == 1
    assert err == (
        "recipe.sdflow:7:14: E106 unexpected character '–' (U+2013 EN DASH)\n"
        "  |\n"
        "7 |     height=64–,\n"
        "  |              ^\n"
        "  = help: it looks like '-' but is not: retype it as the ASCII '-'\n"
        "\n"
        "1 error\n"
    )


def test_a_string_in_typographic_quotes_is_one_error_with_the_fix(tmp_path, capsys):
    code, err = check(tmp_path, capsys, GOOD.replace('"a red circle"', "\u201ca red circle\u201d"))
    assert code == 1
    assert err == (
        "recipe.sdflow:3:50: E106 a string in typographic quotes ('\u201c' (U+201C LEFT DOUBLE QUOTATION MARK))\n"
        "  |\n"
        "3 | positive = clip_text_encode(clip=ckpt.clip, text=\u201ca red circle\u201d)\n"
        "  |                                                  ^^^^^^^^^^^^^^\n"
        '  = help: strings are written in plain double quotes: "a red circle"\n'
        "\n"
        "1 error\n"
    )


def test_an_unclosed_triple_quote_is_one_error(tmp_path, capsys):
    recipe = GOOD.replace('"a red circle"', '"""a red circle\n  on a blue background')
    code, err = check(tmp_path, capsys, recipe)
    assert code == 1
    assert err.startswith("recipe.sdflow:3:50: E102 unterminated triple-quoted string\n")
    assert err.endswith("\n1 error\n")


def test_control_characters_in_a_message_never_reach_the_terminal(tmp_path, capsys):
    code, err = check(tmp_path, capsys, GOOD.replace('sampler', 'x').replace(
        "steps=2", 'steps=2, sampler="\x1b[2J\x1b[31meuler"'))
    assert code == 1
    assert "\x1b" not in err
    assert "\\x1b[2J" in err


# showing an image that is not what it seems ------------------------------------------------


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0\0")
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + b"".join(chunk(k, b) for k, b in chunks)
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def test_show_refuses_a_text_chunk_that_inflates_without_end(tmp_path, capsys):
    bomb = zlib.compress(b"\0" * (200 * 2**20), 9)  # 200 MiB of zeros in about 200 KB
    path = tmp_path / "bomb.png"
    path.write_bytes(_png([(b"zTXt", b"sdflow.recipe\0\0" + bomb)]))
    assert main(["show", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"sdflow: error: {path}: a compressed text chunk inflates past 32 MiB: larger than sdflow reads\n"


def test_show_escapes_what_would_drive_the_terminal(tmp_path, capsys):
    recipe = 'sdflow 1\n# \x1b]0;owned\x07\x1b[2J\nsave_image(image=x)\n'
    path = tmp_path / "evil.png"
    path.write_bytes(_png([(b"tEXt", b"sdflow.recipe\0" + recipe.encode("latin-1")),
                           (b"tEXt", b"sdflow.seed\x1b[31m\0" + b"42\x1b[0m")]))
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "seed\\x1b[31m: 42\\x1b[0m\n" in out
    assert "    # \\x1b]0;owned\\x07\\x1b[2J\n" in out


def test_show_refuses_a_folder_and_a_device(tmp_path, capsys):
    assert main(["show", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"sdflow: error: {tmp_path}: is a folder, not an image\n"
    if os.path.exists("/dev/zero"):
        assert main(["show", "/dev/zero"]) == 2
        assert capsys.readouterr().err == "sdflow: error: /dev/zero: is not a regular file\n"


# outputs checked before the work ----------------------------------------------------------


@pytest.mark.parametrize("prefix, message", [
    ("cat\\nnext", "the prefix holds a control character (U+000A); file names take printable characters only"),
    ("cat\x1b[31m", "the prefix holds a control character (U+001B); file names take printable characters only"),
    ("a" * 240, f'the file name "{"a" * 20}..." is 240 bytes long; at most 200, leaving room for the counter and \'.png\''),
    ("d" * 300 + "/cat", f'the folder name "{"d" * 20}..." is 300 bytes long; file systems take at most 255'),
])
def test_a_prefix_no_file_system_takes_is_found_by_check(tmp_path, capsys, prefix, message):
    code, err = check(tmp_path, capsys, GOOD.replace('prefix="out"', f'prefix="{prefix}"'))
    assert code == 1
    assert err.startswith(f"recipe.sdflow:8:32: E409 'prefix': {message}\n")


def _run(tmp_path: Path, capsys, recipe: str, output: Path) -> tuple[int, str, list[dict]]:
    path = tmp_path / "recipe.sdflow"
    path.write_text(recipe, encoding="utf-8")
    code = main(["run", "--json", "--output", str(output), str(path)])
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    return code, captured.err.replace(str(path), "recipe.sdflow"), events


def test_an_output_folder_that_is_a_file_stops_the_run_before_any_stage(tmp_path, capsys):
    output = tmp_path / "out.png"
    output.write_bytes(b"not a folder")
    code, err, events = _run(tmp_path, capsys, GOOD, output)
    assert code == 1
    assert err.startswith(f"E604 the output folder '{output}' is a file\n")
    assert "help: give --output a folder you can write to (it is made if missing)" in err
    assert not [e for e in events if e["event"] == "stage_started"]
    assert output.read_bytes() == b"not a folder"


def test_an_output_folder_under_a_file_stops_the_run_before_any_stage(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err, events = _run(tmp_path, capsys, GOOD, tmp_path / "file" / "images")
    assert code == 1
    assert err.startswith(f"E604 the output folder '{tmp_path / 'file' / 'images'}' cannot be made: "
                          f"'{tmp_path / 'file'}' is a file\n")
    assert not [e for e in events if e["event"] == "stage_started"]


def test_a_missing_model_is_found_before_any_model_loads(tmp_path, capsys):
    recipe = GOOD.replace(
        "latent = empty_latent",
        'other = load_checkpoint(name="not-there.safetensors")\n'
        'again = clip_text_encode(clip=other.clip, text="x")\n'
        "latent = empty_latent",
    ).replace("save_image(image=image", 'save_image(image=image').replace(
        "negative=negative", "negative=again")
    code, err, events = _run(tmp_path, capsys, recipe, tmp_path / "out")
    assert code == 1
    assert ": E601 " in err and "not-there.safetensors" in err
    assert not [e for e in events if e["event"] == "stage_started"]


# the smaller ones ---------------------------------------------------------------------------


def test_fmt_through_a_link_rewrites_the_file_it_points_to(tmp_path, capsys):
    target = tmp_path / "real.sdflow"
    target.write_text(GOOD.replace("latent = empty_latent(width=64, height=64)",
                                   "latent = empty_latent( width=64,height=64 )"), encoding="utf-8")
    link = tmp_path / "link.sdflow"
    link.symlink_to(target)
    assert main(["fmt", str(link)]) == 0
    assert link.is_symlink()
    assert target.read_text(encoding="utf-8") == format_recipe(parse(GOOD)[0])


def test_fmt_where_nothing_can_be_written_says_so(tmp_path, capsys, monkeypatch):
    path = tmp_path / "r.sdflow"
    path.write_text(GOOD.replace("width=64, height=64", "width=64,height=64"), encoding="utf-8")
    import tempfile

    def refuse(*args, **kwargs):  # the folder is read-only (root ignores chmod, so say it so)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert main(["fmt", str(path)]) == 2
    assert capsys.readouterr().err == f"sdflow: error: {path}: cannot rewrite it: Permission denied\n"


def test_a_multiple_hint_never_suggests_a_value_out_of_range(tmp_path, capsys):
    code, err = check(tmp_path, capsys, GOOD.replace("width=64", "width=5"))
    assert code == 1
    assert "E402 'width' must be at least 16, got 5" in err or "E402 'width' must be a multiple of 8, got 5" in err
    assert "= help: try 16\n" in err or "ranges from 16" in err
    assert "try 8" not in err and "try 0" not in err
