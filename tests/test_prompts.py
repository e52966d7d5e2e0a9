"""Prompts as ComfyUI and AUTOMATIC1111 read them: weights, BREAK, long-prompt
chunks, textual-inversion embeddings, and clip_set_last_layer.

ComfyUI's reading is checked against ComfyUI's own tokenizer, token for token
and weight for weight (``tests/data/comfyui_prompts.json``, made by
``benchmarks/comfy_reference_prompts.py``); A1111's against its documented
rules (its ``parse_prompt_attention`` doctests and ``tokenize_line``), worked
out by hand below.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdflow.plugin import StageError
from sdflow.testing import Executor, RunError, check_recipe, registry_with, run_recipe
from sdflow_diffusion.models.embeddings import read_embedding
from sdflow_diffusion.models.tokenizer import clip_tokenizer
from sdflow_diffusion.numerics.encode import encode_text, final_layer_norm
from sdflow_diffusion.numerics.prompt import SpecialTokens, Vector, chunk_prompt, parse_prompt
from sdflow_diffusion.settings import DiffusionSettings
from sdflow_diffusion.testing import tiny_handles

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

COMFY = json.loads((Path(__file__).parent / "data" / "comfyui_prompts.json").read_text(encoding="utf-8"))
START, END, COMMA = 49406, 49407, 267
SD1 = SpecialTokens(START, END, END, COMMA)
CAT = 2368  # "cat</w>"


def tokenize(text: str) -> list[int]:
    return clip_tokenizer()(text, add_special_tokens=False, truncation=False, verbose=False).input_ids


def chunks(prompt: str, convention: str = "comfy", vectors=None, special=SD1):
    """[(tokens, weights)] per chunk, a vector written "NAME:INDEX"."""
    out = chunk_prompt(parse_prompt(prompt, convention), tokenize, vectors or {}, special, convention)
    return [([f"{t.name.removesuffix('.safetensors')}:{t.index}" if isinstance(t, Vector) else t for t, _ in c],
             [w for _, w in c]) for c in out]


def segments(prompt: str, convention: str = "comfy"):
    return [(s.text, s.weight, s.kind) for s in parse_prompt(prompt, convention).segments]


def problems(prompt: str, convention: str = "comfy"):
    return [(p.column, p.message) for p in parse_prompt(prompt, convention).problems]


# ComfyUI, against its own tokenizer ----------------------------------------

def _comfy_vectors():
    counts = COMFY["embeddings"]
    return {**counts, **{name + ".safetensors": n for name, n in counts.items()}}


@pytest.mark.parametrize("case", COMFY["cases"], ids=lambda case: repr(case["prompt"][:40]))
def test_comfy_chunks_are_comfyuis_tokens_and_weights(case):
    for key, pad in (("chunks", END), ("chunks_g", 0)):  # SDXL's OpenCLIP tokenizer pads with "!"
        if key in case:
            mine = chunks(case["prompt"], vectors=_comfy_vectors(), special=SpecialTokens(START, END, pad, COMMA))
            assert mine == [(c["tokens"], c["weights"]) for c in case[key]]
    if "embedding:" not in case["prompt"]:  # ComfyUI's own runs keep an embedding's name inside the text
        assert [(t, w) for t, w, _ in segments(case["prompt"])] == [tuple(s) for s in case["segments"]]


def test_the_reference_covers_the_tricky_cases():
    prompts = [case["prompt"] for case in COMFY["cases"]]
    assert len(prompts) >= 20 and "" in prompts
    assert sum(len(case["chunks"]) > 1 for case in COMFY["cases"]) >= 8  # prompts that cross the cut
    assert COMFY["comfyui"]["commit"]


def test_comfy_weights_nest_by_multiplying_and_an_explicit_weight_replaces():
    assert segments("((a:1.5) b), (c:0.5)") == [
        ("a", 1.5, "text"), (" b", 1.1, "text"), (", ", 1.0, "text"), ("c", 0.5, "text")]
    assert [w for _, w, _ in segments("(((deep)))")] == [1.1 * 1.1 * 1.1]
    assert segments("[a] BREAK b") == [("[a] BREAK b", 1.0, "text")]  # A1111's syntax is text here


def test_comfy_keeps_a_short_weighted_run_whole_at_the_cut():
    prompt = " ".join(["cat"] * 71) + " (a b c d e) f"
    (first, first_weights), (second, second_weights) = chunks(prompt)
    assert first[:72] == [START] + [CAT] * 71 and first[72:] == [END] * 5  # padded after 71 cats
    assert second[:8] == [START, *tokenize("a b c d e"), *tokenize(" f"), END]
    assert second_weights[:8] == [1.0] + [1.1] * 5 + [1.0, 1.0] and set(first_weights) == {1.0}


# A1111, by its rules -------------------------------------------------------

def test_a1111_weights_are_its_doctests():
    # modules/prompt_parser.py, parse_prompt_attention's doctests.
    assert [(t, w) for t, w, _ in segments("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", "a1111")] == [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]
    assert [(t, w) for t, w, _ in segments("an (important) word", "a1111")] == [
        ("an ", 1.0), ("important", 1.1), (" word", 1.0)]
    assert [(t, w) for t, w, _ in segments("(unbalanced", "a1111")] == [("unbalanced", 1.1)]
    assert [(t, w) for t, w, _ in segments("\\(literal\\]", "a1111")] == [("(literal]", 1.0)]
    assert [(t, w) for t, w, _ in segments("(unnecessary)(parens)", "a1111")] == [("unnecessaryparens", 1.1)]
    # [x] divides by 1.1; an explicit weight multiplies what encloses it.
    assert [(t, w) for t, w, _ in segments("[x] ((y:1.5))", "a1111")] == [
        ("x", 1 / 1.1), (" ", 1.0), ("y", 1.5 * 1.1)]


def test_a1111_break_starts_a_chunk():
    assert [len(c) for c, _ in chunks("a BREAK b", "a1111")] == [77, 77]
    (first, _), (second, _) = chunks("a BREAK b", "a1111")
    assert first[:4] == [START, 320, END, END] and second[:4] == [START, 321, END, END]
    # BREAK first: an empty chunk, as tokenize_line's next_chunk() makes one; last: none.
    assert [c[:3] for c, _ in chunks("BREAK cat", "a1111")] == [[START, END, END], [START, CAT, END]]
    assert len(chunks("cat BREAK", "a1111")) == 1
    assert len(chunks("cat break", "a1111")) == 1  # upper case only


def test_a1111_backs_up_to_a_comma_within_20_tokens():
    # tokenize_line: at the 76th token, if the last comma is within 20 tokens of
    # the end of the chunk, the tokens after it move to the next chunk.
    prompt = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    (first, _), (second, _) = chunks(prompt, "a1111")
    assert first[1:72] == [CAT] * 70 + [COMMA] and first[72:] == [END] * 5
    assert second[:12] == [START] + [1929] * 10 + [END]
    # ComfyUI cuts at 75.
    (first, _), (second, _) = chunks(prompt)
    assert first[72:76] == [1929] * 4 and second[1:7] == [1929] * 6
    # A comma further back than 20 tokens: cut at 75.
    prompt = " ".join(["cat"] * 40) + ", " + " ".join(["dog"] * 50)
    (first, _), _ = chunks(prompt, "a1111")
    assert first[75] == 1929 and first[76] == END


def test_a1111_never_splits_an_embedding():
    words = " ".join(["cat"] * 73)
    (first, _), (second, _) = chunks(words + " embedding:three", "a1111", {"three": 3})
    assert first[74:] == [END] * 3 and second[1:5] == ["three:0", "three:1", "three:2", END]
    (first, _), (second, _) = chunks(words + " embedding:ten", vectors={"ten": 10})  # ComfyUI splits 8 or more
    assert first[74:76] == ["ten:0", "ten:1"] and second[1] == "ten:2"


# problems: warnings at a column of the prompt ------------------------------

@pytest.mark.parametrize("convention", ["comfy", "a1111"])
def test_malformed_weights_are_problems_at_their_column(convention):
    assert problems("a (word:abc) b", convention) == [
        (9, "'abc' is not a weight" + (" (A1111 reads digits and '.', no spaces)" if convention == "a1111" else "")
         + ": the group is weighted 1.1 and keeps it as text")]
    assert problems("a (b (c:1.3) d) e", convention) == []  # a nested weight is not a malformed one
    assert [c for c, _ in problems("x) (y", convention)] == ([2] if convention == "comfy" else [2, 4])
    assert problems("café (b", convention)[0][0] == 6  # columns count characters, not bytes


def test_embeddings_are_found_after_a_space_or_at_a_runs_start():
    assert segments("a embedding:three, (embedding:one:1.2) x,embedding:no") == [
        ("a", 1.0, "text"), ("three", 1.0, "embedding"), (", ", 1.0, "text"), ("one", 1.2, "embedding"), (" x,embedding:no", 1.0, "text")]
    assert [s.column for s in parse_prompt("a embedding:three").embeddings] == [3]


# encoding on tiny models ---------------------------------------------------

@functools.cache
def clip(kind="sd1"):
    return tiny_handles(kind)[1]


def raw(encoder, ids, layer=None):
    out = encoder(torch.tensor([ids]), output_hidden_states=True)
    return out.last_hidden_state if layer is None else out.hidden_states[layer]


def window(text):
    ids = tokenize(text)
    return [START, *ids, END] + [END] * (75 - len(ids))


@torch.no_grad()
def test_weights_of_one_give_the_unweighted_encoding_bit_for_bit():
    plain = encode_text(clip(), "a red circle")
    assert torch.equal(plain.embeds, raw(clip().encoders[0], window("a red circle")))
    for convention in ("comfy", "a1111"):
        assert torch.equal(encode_text(clip(), "a (red:1.0) circle", convention).embeds, plain.embeds)


@torch.no_grad()
def test_comfy_weighting_moves_a_token_away_from_the_empty_prompt():
    encoder = clip().encoders[0]
    z, empty = raw(encoder, window("a red circle")), raw(encoder, window(""))
    expected = z.clone()
    expected[0, 2] = (z[0, 2] - empty[0, 2]) * 1.5 + empty[0, 2]  # "red" is token 2
    got = encode_text(clip(), "a (red:1.5) circle").embeds
    assert torch.equal(got, expected)


@torch.no_grad()
def test_a1111_weighting_scales_then_keeps_the_chunks_mean():
    z = raw(clip().encoders[0], window("a red circle"))
    weights = torch.ones(77)
    weights[2] = 1.5
    scaled = z * weights[None, :, None]
    got = encode_text(clip(), "a (red:1.5) circle", "a1111").embeds
    assert torch.equal(got, scaled * (z.mean() / scaled.mean()))
    assert torch.allclose(got.mean(), z.mean(), atol=1e-6) and not torch.equal(got, z)


def _table_rows(encoder, text):
    return encoder.get_input_embeddings().weight[tokenize(text)].detach().clone()


@torch.no_grad()
def test_an_embedding_takes_the_place_of_tokens(tmp_path):
    encoder = clip().encoders[0]
    save_file({"emb_params": _table_rows(encoder, "red circle")}, tmp_path / "shape.safetensors")
    shape = read_embedding("shape", tmp_path / "shape.safetensors", allow_pickle=False)
    # Vectors equal to the token embeddings of "red circle" encode as those words.
    got = encode_text(clip(), "a embedding:shape on blue", embeddings={"shape": shape}).embeds
    assert torch.equal(got, encode_text(clip(), "a red circle on blue").embeds)
    # Other vectors change the positions from theirs on (attention is causal), not before.
    save_file({"emb_params": torch.randn(2, encoder.config.hidden_size)}, tmp_path / "other.safetensors")
    other = encode_text(clip(), "a embedding:other on blue",
                        embeddings={"other": read_embedding("other", tmp_path / "other.safetensors", False)}).embeds
    assert torch.equal(other[0, :2], got[0, :2]) and not torch.equal(other[0, 2], got[0, 2])


@torch.no_grad()
def test_an_sdxl_embedding_gives_each_encoder_its_vectors(tmp_path):
    l_enc, g_enc = clip("sdxl").encoders
    save_file({"clip_l": _table_rows(l_enc, "red circle"), "clip_g": _table_rows(g_enc, "red circle")},
              tmp_path / "pair.safetensors")
    pair = read_embedding("pair", tmp_path / "pair.safetensors", allow_pickle=False)
    got = encode_text(clip("sdxl"), "(embedding:pair:1.2) on blue", embeddings={"pair": pair})
    want = encode_text(clip("sdxl"), "(red circle:1.2) on blue")
    assert torch.equal(got.embeds, want.embeds) and torch.equal(got.pooled, want.pooled)


def test_an_embedding_of_the_wrong_width_names_file_width_and_family(tmp_path):
    width = clip().encoders[0].config.hidden_size
    save_file({"emb_params": torch.zeros(1, width + 1)}, tmp_path / "wide.safetensors")
    wide = read_embedding("wide", tmp_path / "wide.safetensors", allow_pickle=False)
    with pytest.raises(StageError, match=rf"'wide' \(wide.safetensors\) has vectors of width {width + 1}, "
                                         rf"but the sd1-tiny model's clip_l text encoder takes {width}"):
        encode_text(clip(), "embedding:wide", embeddings={"wide": wide})
    # An SD 1.x file on SDXL: its one tensor fits clip_l, not clip_g.
    save_file({"emb_params": torch.zeros(1, clip("sdxl").encoders[0].config.hidden_size)}, tmp_path / "l.safetensors")
    with pytest.raises(StageError, match="sdxl-tiny model's clip_g text encoder takes"):
        encode_text(clip("sdxl"), "embedding:l", embeddings={"l": read_embedding("l", tmp_path / "l.safetensors", False)})


def test_an_a1111_pickle_is_read_only_when_allowed(tmp_path):
    vectors = torch.randn(3, clip().encoders[0].config.hidden_size)
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": {"*": vectors}, "name": "old",
                "step": 100}, tmp_path / "old.pt")
    with pytest.raises(StageError, match="is a pickle"):
        read_embedding("old", tmp_path / "old.pt", allow_pickle=False)
    old = read_embedding("old", tmp_path / "old.pt", allow_pickle=True)
    assert torch.equal(old.vectors("clip_l", vectors.shape[1], "sd1-tiny"), vectors)


# clip_set_last_layer -------------------------------------------------------

@torch.no_grad()
def test_clip_skip_is_the_earlier_layer_through_the_final_norm():
    from dataclasses import replace

    sd1 = clip()
    encoder = sd1.encoders[0]
    default = encode_text(sd1, "a red circle").embeds
    assert torch.equal(encode_text(replace(sd1, last_layer=-1), "a red circle").embeds, default)
    skipped = encode_text(replace(sd1, last_layer=-2), "a red circle").embeds
    assert torch.equal(skipped, final_layer_norm(encoder)(raw(encoder, window("a red circle"), -2)))
    # SDXL (ComfyUI): raw hidden states; -2 is its default, -1 the last layer, unnormed.
    xl = clip("sdxl")
    assert torch.equal(encode_text(replace(xl, last_layer=-2), "a red circle").embeds,
                       encode_text(xl, "a red circle").embeds)
    last = encode_text(replace(xl, last_layer=-1), "a red circle").embeds
    ids = window("a red circle")
    assert torch.equal(last[..., :xl.encoders[0].config.hidden_size], raw(xl.encoders[0], ids, -1))


# through a recipe, with the shipped model ----------------------------------

RECIPE = """\
sdflow 1
param prompt = "a small red circle at the left on a blue background"
ckpt = load_checkpoint(name="sdflow-tiny.safetensors")
clip = clip_set_last_layer(clip=ckpt.clip, stop_at_clip_layer={layer})
positive = clip_text_encode(clip=clip, text=prompt, convention="{convention}")
negative = clip_text_encode(clip=clip, text="")
latent = empty_latent(width=32, height=32, batch=1)
denoised = sample(model=ckpt.model, positive=positive, negative=negative, latent=latent, seed=3, steps=2, cfg=3.0)
image = vae_decode(vae=ckpt.vae, latent=denoised)
save_image(image=image, prefix="{prefix}")
"""


def _pixels(result):
    (path,) = result.files
    return np.asarray(Image.open(path), dtype=np.int16)


def test_a_weighted_prompt_through_a_recipe(tmp_path):
    settings, executor = {"diffusion": DiffusionSettings()}, Executor()  # one executor: the checkpoint loads once
    with registry_with() as registry:
        def run(prompt, prefix, layer=-1, convention="comfy"):
            text = RECIPE.format(layer=layer, convention=convention, prefix=prefix)
            return _pixels(run_recipe(text, registry, tmp_path, {"prompt": prompt}, settings, executor, tmp_path))

        plain = run("a small red circle at the left on a blue background", "plain")
        weighted = run("a small (red:1.5) circle at the left on a blue background", "weighted")
        assert np.abs(plain - weighted).max() > 0
        with pytest.raises(RunError, match="embedding 'nothere' at column 3 of the prompt not found"):
            run("a embedding:nothere circle", "missing")
        (tmp_path / "embeddings").mkdir()
        save_file({"emb_params": torch.zeros(2, 64)}, tmp_path / "embeddings" / "blank.safetensors")  # width: sdflow-tiny's
        assert run("a (small:abc) embedding:blank circle", "warned", convention="a1111", layer=-2).shape == (32, 32, 3)


def test_clip_set_last_layer_is_checked_before_running():
    with registry_with() as registry:
        _, diagnostics = check_recipe(RECIPE.format(layer=0, convention="comfy", prefix="x"), registry)
    assert [(d.code, d.message) for d in diagnostics] == [("E402", "'stop_at_clip_layer' must be at most -1, got 0")]



def test_a_malformed_weight_is_a_check_time_warning_at_its_place_in_the_string():
    from sdflow.registry import default_registry
    from sdflow.testing import check_recipe

    recipe = """sdflow 1
param p = "a (red:abc) circle"
ckpt = load_checkpoint(name="sdflow-tiny.safetensors")
a = clip_text_encode(clip=ckpt.clip, text="a \\"b\\" ((blue circle")
b = clip_text_encode(clip=ckpt.clip, text=p)
latent = empty_latent(width=64, height=64)
s = sample(model=ckpt.model, positive=a, negative=b, latent=latent)
image = vae_decode(vae=ckpt.vae, latent=s)
save_image(image=image)
"""
    _graph, diagnostics = check_recipe(recipe, default_registry())
    warnings = [(d.code, d.span.line, d.span.column) for d in diagnostics if d.code == "W104"]
    # In the param's default, at its "abc"; past the escaped quotes, at the first "(".
    assert warnings == [("W104", 2, 19), ("W104", 4, 52)]
    _graph, diagnostics = check_recipe(recipe, default_registry(), overrides={"p": "(red:x)"})
    assert any(d.code == "W104" and d.span.line == 5 and "in the value of param 'p', at character 6" in d.message
               for d in diagnostics)
