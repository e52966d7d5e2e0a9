"""sdflow-tiny's synthetic dataset, its pixel scorer and the evaluation's
rendering helpers."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from PIL import Image, ImageFilter
from training.tiny.dataset import (
    COLOURS,
    HELD_OUT,
    JITTERS,
    POSITIONS,
    RGB,
    SHAPES,
    SIZES,
    TRAIN_TRIPLES,
    TRIPLES,
    Attributes,
    canonical_caption,
    caption,
    heldout_attributes,
    make_dataset,
    render,
    render_batch,
)
from training.tiny.score import FIELDS, UNKNOWN, judge, score

EVERY_COMBINATION = [Attributes(*t, size, position)
                     for t, size, position in itertools.product(TRIPLES, SIZES, POSITIONS)]


def test_the_same_seed_gives_the_same_bytes():
    images, captions, attrs = make_dataset(300, seed=3)
    again = make_dataset(300, seed=3)
    assert images.shape == (300, 64, 64, 3) and images.dtype == np.uint8
    assert images.tobytes() == again[0].tobytes()
    assert (captions, attrs) == (again[1], again[2])
    assert images.tobytes() != make_dataset(300, seed=4)[0].tobytes()


def test_held_out_triples_leave_every_attribute_and_pair_in_training():
    assert len(TRIPLES) == 90 and len(set(HELD_OUT)) == 15 and set(HELD_OUT) <= set(TRIPLES)
    assert len(TRAIN_TRIPLES) == 75
    assert {t[0] for t in TRAIN_TRIPLES} == set(SHAPES)
    assert {t[1] for t in TRAIN_TRIPLES} == {t[2] for t in TRAIN_TRIPLES} == set(COLOURS)
    for pair in ((0, 1), (0, 2), (1, 2)):  # (shape, colour), (shape, background), (colour, background)
        held = [tuple(t[i] for i in pair) for t in HELD_OUT]
        assert len(held) == len(set(held))
    # The default recipe's prompt is a combination the model has seen.
    default = Attributes("triangle", "red", "blue", "small", "left")
    assert ("triangle", "red", "blue") in TRAIN_TRIPLES
    assert canonical_caption(default) == "a small red triangle at the left on a blue background"


def test_splits_draw_only_their_own_triples():
    def triple(a):
        return (a.shape, a.colour, a.background)

    assert all(triple(a) in TRAIN_TRIPLES for a in make_dataset(500, split="train")[2])
    assert all(triple(a) in HELD_OUT for a in make_dataset(200, split="heldout")[2])
    combos = heldout_attributes()
    assert len(combos) == len(set(combos)) == 150
    assert combos[0] == Attributes("circle", "red", "green", "small", "left")
    with pytest.raises(ValueError, match="split"):
        make_dataset(1, split="test")


def test_captions_vary_and_say_what_is_drawn():
    _, captions, attrs = make_dataset(3000, seed=1)
    assert 0.08 < captions.count("") / len(captions) < 0.12
    said = [(c, a) for c, a in zip(captions, attrs) if c]
    assert len(set(captions)) > 500
    for text, a in said:
        assert a.colour in text and a.shape in text and f"{a.background} back" in text
    everything = " | ".join(captions)
    for phrase in ("little", "big", "on the left", "to the right", "in the middle", "near the top",
                   "against a", "backdrop", "background with a"):
        assert phrase in everything
    sizeless = [c for c, a in said if not re.search(r"\b(small|little|large|big)\b", c)]
    assert 0.1 < len(sizeless) / len(said) < 0.3
    rng = np.random.default_rng(0)
    assert caption(Attributes("circle", "green", "white", "small", "center"), rng)
    assert (canonical_caption(Attributes("circle", "green", "white", "large", "center"))
            == "a large green circle in the center on a white background")


def test_render_draws_pure_colours_inside_the_image():
    image = render(Attributes("square", "yellow", "black", "large", "right"), np.random.default_rng(0))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    colours = {tuple(p) for p in image.reshape(-1, 3)}
    assert {RGB["yellow"], RGB["black"]} <= colours
    assert (image[0] == RGB["black"]).all() and (image[:, -1] == RGB["black"]).all()


@pytest.mark.parametrize("jitter", [0, JITTERS // 2, JITTERS - 1])
def test_the_scorer_reads_every_clean_combination(jitter):
    images = render_batch(EVERY_COMBINATION, np.full(len(EVERY_COMBINATION), jitter))
    wrong = [(a, score(im)) for a, im in zip(EVERY_COMBINATION, images) if score(im) != a]
    assert wrong == []


def test_the_scorer_tolerates_noise_and_blur():
    rng = np.random.default_rng(7)
    images = render_batch(EVERY_COMBINATION, rng.integers(0, JITTERS, len(EVERY_COMBINATION)))
    right = 0
    for a, image in zip(EVERY_COMBINATION, images):
        blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)
        noisy = np.clip(blurred + rng.normal(0, 10, blurred.shape), 0, 255).astype(np.uint8)
        right += score(noisy) == a
    assert right / len(EVERY_COMBINATION) >= 0.99


def test_judge_names_the_wrong_attribute():
    shown = Attributes("triangle", "red", "blue", "small", "left")
    image = render(shown, np.random.default_rng(0))
    assert judge(image, shown) == dict.fromkeys(FIELDS, True)
    asked = Attributes("triangle", "red", "blue", "small", "top")
    assert judge(image, asked) == {**dict.fromkeys(FIELDS, True), "position": False}


def test_a_blank_picture_has_only_a_background():
    blank = np.full((64, 64, 3), RGB["green"], dtype=np.uint8)
    assert score(blank) == Attributes(UNKNOWN, UNKNOWN, "green", UNKNOWN, UNKNOWN)
    with pytest.raises(ValueError, match="64, 64, 3"):
        score(np.zeros((32, 32, 3), dtype=np.uint8))


def test_render_prompts_draws_through_sdflow_and_grid_labels_them(tmp_path):
    from sdflow_diffusion.testing import tiny_checkpoint
    from training.tiny.evaluate import grid, render_prompts, short_label

    path = tiny_checkpoint(tmp_path, "sd1")
    prompt = canonical_caption(Attributes("triangle", "red", "blue", "small", "left"))
    images = render_prompts(path, [prompt, prompt], [0, 1], steps=1, cfg=3.0)
    assert [im.size for im in images] == [(64, 64)] * 2 and images[0].mode == "RGB"
    assert images[0].tobytes() != images[1].tobytes()
    assert render_prompts(path, [prompt], [0], steps=1)[0].tobytes() == images[0].tobytes()
    score(np.asarray(images[0]))  # a noise picture is scored, not refused

    label = short_label(Attributes("triangle", "red", "blue", "small", "left"))
    assert label == "sm red tri L / blue"
    sheet = grid(images, [label, label + "\nsaw lg red tri C / blue"], [False, True])
    cell_w = sheet.width // 2
    assert sheet.getpixel((cell_w + 1, 1)) == (220, 0, 0) and sheet.getpixel((1, 1)) != (220, 0, 0)
