"""The latent stages: resizing (hires fix), cropping, compositing, batches and
noise masks, each against small cases worked out by hand; the seed
bookkeeping of the batch stages through the real sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import sdflow_diffusion
from sdflow.plugin import StageError
from sdflow.testing import check_recipe, registry_with, run_recipe
from sdflow_diffusion.handles import Latent
from sdflow_diffusion.stages.latent import (
    LatentBatch,
    LatentComposite,
    LatentCrop,
    LatentFromBatch,
    LatentUpscale,
    RepeatLatentBatch,
    SetLatentNoiseMask,
    latent_batch,
    latent_composite,
    latent_crop,
    latent_from_batch,
    latent_upscale,
    repeat_latent_batch,
    set_latent_noise_mask,
)
from sdflow_diffusion.testing import tiny_checkpoint

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

PLUGINS = [("diffusion", sdflow_diffusion)]


def numbered(batch: int, rows: int, columns: int) -> torch.Tensor:
    """A latent whose every value is different: 0, 1, 2, ... in order."""
    return torch.arange(batch * 4 * rows * columns, dtype=torch.float32).reshape(batch, 4, rows, columns)


def per_image(*values: float, rows: int = 2, columns: int = 2) -> torch.Tensor:
    """A latent batch whose image i is ``values[i]`` everywhere."""
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 4, rows, columns).clone()


def upscale(latent: Latent, **params) -> Latent:
    return latent_upscale(None, LatentUpscale(**params), latent=latent)["latent"]


def composite(destination: Latent, source: Latent, mask=None, **params) -> Latent:
    return latent_composite(None, LatentComposite(**params), destination=destination, source=source,
                            mask=mask)["latent"]


# latent_upscale ----------------------------------------------------------------


def test_a_factor_of_two_by_nearest_repeats_each_cell_in_a_square():
    samples = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(1, 4, 2, 2)
    mask = torch.ones(1, 1, 16, 16)
    out = upscale(Latent(samples, mask, {"batch_index": [5]}), factor=2.0)
    assert out.samples[0, 0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    assert out.noise_mask is mask  # kept: the sampler stretches it to the new size
    assert out.extra == {"batch_index": [5]}


def test_a_factor_rounds_each_side_to_whole_cells():
    out = upscale(Latent(torch.zeros(2, 4, 5, 7)), factor=1.5, method="bilinear")
    assert out.samples.shape == (2, 4, round(5 * 1.5), round(7 * 1.5))  # (2, 4, 8, 10): round half to even


def test_a_size_of_zero_follows_the_other_side():
    wide = Latent(torch.zeros(1, 4, 4, 8))  # 64 x 32 pixels
    assert upscale(wide, width=0, height=64).samples.shape == (1, 4, 8, 16)
    assert upscale(wide, width=96, height=0).samples.shape == (1, 4, 6, 12)
    assert upscale(wide, width=40, height=40).samples.shape == (1, 4, 5, 5)


def test_a_centre_crop_cuts_the_long_side_and_the_noise_mask_with_it():
    samples = numbered(1, 4, 8)
    mask = torch.arange(32, dtype=torch.float32).reshape(1, 1, 4, 8)
    out = upscale(Latent(samples, mask), width=32, height=32, crop="center")
    # 8 x 4 cells to a square: two columns off each end, then the same size.
    assert torch.equal(out.samples, samples[..., 2:6])
    assert torch.equal(out.noise_mask, mask[..., 2:6])


def test_bislerp_turns_between_neighbours_and_blends_their_lengths():
    samples = torch.zeros(1, 4, 1, 2)
    samples[0, 0, 0, 0] = 1.0  # (1, 0, 0, 0)
    samples[0, 1, 0, 1] = 2.0  # (0, 2, 0, 0): a right angle away, twice as long
    out = upscale(Latent(samples), width=24, height=16, method="bislerp").samples  # 2 x 1 cells -> 3 x 2
    first, middle, last = (out[0, :, 0, i].tolist() for i in range(3))
    assert first == pytest.approx([1, 0, 0, 0], abs=1e-6)
    assert last == [0, 2, 0, 0]
    # Halfway: 45 degrees from each, length 1.5 (a plain blend gives (0.5, 1), length 1.12).
    assert middle == pytest.approx([1.5 / math.sqrt(2), 1.5 / math.sqrt(2), 0, 0], abs=1e-6)


def test_bislerp_of_a_constant_latent_is_that_constant():
    samples = torch.tensor([0.5, -1.0, 2.0, 0.25]).reshape(1, 4, 1, 1).expand(2, 4, 3, 5)
    out = upscale(Latent(samples), factor=2.0, method="bislerp").samples
    assert out.shape == (2, 4, 6, 10)
    assert torch.equal(out, samples[:, :, :1, :1].expand(2, 4, 6, 10))


@pytest.mark.parametrize(("arguments", "code", "column", "message"), [
    ("width=64, height=64, factor=2.0", "E409", 7,
     "'latent_upscale': give width and height, or factor, not both"),
    ("factor=2.0, crop=\"center\"", "E409", 7,
     "'latent_upscale': crop needs width and height: a factor keeps the aspect ratio"),
    ("method=\"bilinear\"", "E409", 7,
     "'latent_upscale': give the new size: width and height (0 for one keeps the aspect ratio), or factor"),
    ("width=8, height=64", "E409", 36, "'width': must be 0 (follow the other side) or at least 16"),
    ("width=100, height=64", "E402", 36, "'width' must be a multiple of 8, got 100"),
])
def test_latent_upscale_refuses_a_size_it_cannot_make_at_check_time(arguments, code, column, message):
    text = (f"sdflow 1\nblank = empty_latent(width=32, height=32)\nbig = latent_upscale(latent=blank, {arguments})\n")
    with registry_with(*PLUGINS, installed=False) as registry:
        graph, diagnostics = check_recipe(text, registry)
    assert graph is None
    errors = [(d.code, d.span.line, d.message) for d in diagnostics if d.code.startswith("E4")]
    assert errors == [(code, 3, message)]


# latent_crop -------------------------------------------------------------------


def crop(latent: Latent, **params) -> Latent:
    return latent_crop(None, LatentCrop(**params), latent=latent)["latent"]


def test_a_crop_takes_the_cells_under_its_pixels():
    samples = numbered(2, 8, 8)
    out = crop(Latent(samples, None, {"batch_index": [3, 4]}), x=16, y=8, width=32, height=16)
    assert torch.equal(out.samples, samples[:, :, 1:3, 2:6])
    assert out.extra == {"batch_index": [3, 4]}


def test_a_crop_past_the_edge_starts_64_pixels_before_it_as_comfyui_does():
    samples = numbered(1, 10, 10)
    assert torch.equal(crop(Latent(samples), x=72, y=0, width=64, height=64).samples, samples[:, :, 0:8, 2:10])
    # Wider than what is left: cut at the edge, the start still 8 cells before it.
    assert torch.equal(crop(Latent(samples), x=72, y=0, width=128, height=64).samples, samples[:, :, 0:8, 2:10])
    # A small piece keeps its own size.
    assert torch.equal(crop(Latent(samples), x=200, y=200, width=16, height=24).samples,
                       samples[:, :, 7:10, 8:10])


def test_a_crop_cuts_the_noise_mask_where_it_cuts_the_latent():
    mask = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).reshape(1, 1, 2, 2)  # half the latent's size
    out = crop(Latent(torch.zeros(1, 4, 4, 4), mask), x=0, y=0, width=16, height=16)
    # The mask at the latent's size, as the sampler stretches it, then its top left corner.
    expected = torch.nn.functional.interpolate(mask, size=(4, 4), mode="bilinear")[..., :2, :2]
    assert out.noise_mask.tolist() == expected.tolist() == [[[[0.0, 0.25], [0.25, 0.375]]]]


# latent_composite --------------------------------------------------------------


def test_a_source_is_pasted_at_its_place_and_cut_at_the_edge():
    destination = Latent(torch.zeros(1, 4, 4, 6), torch.ones(1, 1, 4, 6), {"batch_index": [2]})
    source = Latent(numbered(1, 2, 3) + 1)
    out = composite(destination, source, x=8, y=8)
    assert torch.equal(out.samples[..., 1:3, 1:4], source.samples)
    assert out.samples.sum() == source.samples.sum()  # nothing else changed
    assert out.noise_mask is destination.noise_mask and out.extra == {"batch_index": [2]}
    edge = composite(destination, source, x=32, y=24)  # cells (4, 3): two columns, one row fit
    assert torch.equal(edge.samples[..., 3:, 4:], source.samples[..., :1, :2])
    assert torch.equal(composite(destination, source, x=64, y=0).samples, destination.samples)


def test_feathering_fades_the_edges_inside_the_destination():
    destination, source = Latent(torch.zeros(1, 4, 4, 6)), Latent(torch.ones(1, 4, 2, 3))
    inside = composite(destination, source, x=8, y=8, feather=16).samples
    # Two cells of ramp: the edge cell weighs 1/2, the next 2/2; corners multiply.
    assert inside[0, 0, 1:3, 1:4].tolist() == [[0.25, 0.5, 0.25], [0.25, 0.5, 0.25]]
    assert inside[0, 0].sum() == 2.0  # nothing outside the source changed
    # At the destination's top left corner those two edges stay hard.
    corner = composite(destination, source, x=0, y=0, feather=16).samples
    assert corner[0, 0, :2, :3].tolist() == [[1.0, 1.0, 0.5], [0.5, 0.5, 0.25]]


def test_a_mask_chooses_between_source_and_destination():
    destination, source = Latent(torch.full((1, 4, 2, 2), 4.0)), Latent(torch.full((1, 4, 2, 2), 8.0))
    checker = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert composite(destination, source, checker).samples[0, 0].tolist() == [[8.0, 4.0], [4.0, 8.0]]
    quarter = torch.full((1, 16, 16), 0.25)  # any size: stretched over the source
    assert composite(destination, source, quarter).samples.unique().tolist() == [5.0]
    # With feathering the two weights multiply: 0.25 x 1/2 at the right edge.
    wide = Latent(torch.full((1, 4, 2, 4), 4.0))
    assert composite(wide, source, quarter, feather=16).samples[0, 0, 0].tolist() == [5.0, 4.5, 4.0, 4.0]


def test_the_source_and_the_mask_are_repeated_to_the_destinations_batch():
    destination = Latent(torch.zeros(3, 4, 2, 2))
    out = composite(destination, Latent(per_image(1.0, 2.0)), torch.tensor([[[1.0]], [[0.5]]]))
    assert out.samples[:, 0, 0, 0].tolist() == [1.0, 1.0, 1.0]  # sources 1, 2, 1; masks 1, 0.5, 1


def test_resize_source_stretches_the_source_over_the_destination():
    source = Latent(torch.tensor([[1.0, 3.0]]).expand(1, 4, 1, 2))
    out = composite(Latent(torch.zeros(1, 4, 2, 4)), source, resize_source=True)
    assert out.samples[0, 0].tolist() == [[1.0, 1.5, 2.5, 3.0]] * 2


def test_latents_of_other_families_are_not_composited():
    with pytest.raises(StageError, match="the source has 16 channels, the destination 4"):
        composite(Latent(torch.zeros(1, 4, 2, 2)), Latent(torch.zeros(1, 16, 2, 2)))


def test_the_mask_is_optional_and_x_a_multiple_of_8_at_check_time():
    text = ("sdflow 1\nback = empty_latent(width=64, height=64)\nfront = empty_latent(width=32, height=32)\n"
            "both = latent_composite(destination=back, source=front, x={x})\n")
    with registry_with(*PLUGINS, installed=False) as registry:
        _graph, fine = check_recipe(text.format(x=8), registry)
        graph, diagnostics = check_recipe(text.format(x=12), registry)
    assert [d.code for d in fine if d.code.startswith("E4")] == []
    assert graph is None
    assert [(d.code, d.span.line, d.span.column, d.message, d.help) for d in diagnostics if d.code == "E402"] == [
        ("E402", 4, 59, "'x' must be a multiple of 8, got 12", "the nearest are 8 and 16")]


# batches -----------------------------------------------------------------------


def from_batch(latent: Latent, **params) -> Latent:
    return latent_from_batch(None, LatentFromBatch(**params), latent=latent)["latent"]


def test_images_taken_from_a_batch_keep_their_place_as_batch_index():
    batch = Latent(per_image(0, 1, 2, 3))
    out = from_batch(batch, batch_index=1, length=2)
    assert out.samples[:, 0, 0, 0].tolist() == [1.0, 2.0]
    assert out.extra["batch_index"] == [1, 2]
    assert batch.extra == {}  # the input is left as it was
    last = from_batch(batch, batch_index=7, length=3)  # past the end: the last image, alone
    assert last.samples[:, 0, 0, 0].tolist() == [3.0] and last.extra["batch_index"] == [3]


def test_taking_from_a_taken_batch_keeps_the_original_indices():
    twice = from_batch(from_batch(Latent(per_image(0, 1, 2, 3, 4)), batch_index=2, length=3), batch_index=1)
    assert twice.samples[:, 0, 0, 0].tolist() == [3.0] and twice.extra["batch_index"] == [3]


def test_taking_from_a_batch_takes_the_noise_masks_of_those_images():
    one = torch.rand(1, 1, 8, 8)
    assert from_batch(Latent(per_image(0, 1, 2), one), batch_index=2).noise_mask.tolist() == one.tolist()
    two = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])  # repeated over the batch: 0, 1, 0
    taken = from_batch(Latent(per_image(0, 1, 2), two), batch_index=1, length=2).noise_mask
    assert taken[:, 0, 0, 0].tolist() == [1.0, 0.0]


def repeat(latent: Latent, amount: int) -> Latent:
    return repeat_latent_batch(None, RepeatLatentBatch(amount=amount), latent=latent)["latent"]


def test_a_repeated_batch_gives_every_copy_new_seed_offsets():
    out = repeat(Latent(per_image(7, 9), None, {"batch_index": [3, 5]}), 3)
    assert out.samples[:, 0, 0, 0].tolist() == [7, 9, 7, 9, 7, 9]
    assert out.extra["batch_index"] == [3, 5, 6, 8, 9, 11]  # each copy shifted by the span, 5 - 3 + 1
    # Without indices the copies are images 2.. of the batch already: seed + 2, seed + 3...
    assert "batch_index" not in repeat(Latent(per_image(7, 9)), 2).extra


def test_a_repeated_batch_repeats_its_noise_masks():
    masks = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    assert repeat(Latent(per_image(1, 2), masks), 2).noise_mask[:, 0, 0, 0].tolist() == [0, 1, 0, 1]
    one = torch.ones(1, 1, 4, 4)
    assert repeat(Latent(per_image(1, 2), one), 2).noise_mask is one  # one mask serves every image


def join(latent1: Latent, latent2: Latent) -> Latent:
    return latent_batch(None, LatentBatch(), latent1=latent1, latent2=latent2)["latent"]


def test_a_joined_batch_keeps_each_latents_indices_as_comfyui_does():
    out = join(Latent(per_image(1, 2), None, {"batch_index": [4, 5]}), Latent(per_image(3)))
    assert out.samples[:, 0, 0, 0].tolist() == [1, 2, 3]
    assert out.extra["batch_index"] == [4, 5, 0]
    assert out.noise_mask is None


def test_a_second_latent_of_another_size_is_centre_cropped_and_resized_to_the_first():
    second = numbered(1, 2, 4)
    out = join(Latent(torch.zeros(1, 4, 2, 2)), Latent(second))
    assert torch.equal(out.samples[1:], second[..., 1:3])  # 4 x 2 to 2 x 2: one column off each end
    bigger = join(Latent(torch.zeros(1, 4, 2, 2)), Latent(per_image(6, rows=4, columns=4))).samples
    assert bigger.shape == (2, 4, 2, 2) and bigger[1].unique().tolist() == [6.0]


def test_joined_noise_masks_stay_with_their_images():
    mask = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).reshape(1, 1, 2, 2)
    out = join(Latent(per_image(1, 2), mask), Latent(per_image(3)))
    assert out.noise_mask.shape == (3, 1, 2, 2)
    assert torch.equal(out.noise_mask[:2], mask.expand(2, 1, 2, 2))
    assert out.noise_mask[2].unique().tolist() == [1.0]  # no mask: repaint it all


def test_latents_of_other_families_are_not_joined():
    with pytest.raises(StageError, match="latent1 has 4 channels, latent2 16"):
        join(Latent(torch.zeros(1, 4, 2, 2)), Latent(torch.zeros(1, 16, 2, 2)))


def test_a_noise_mask_is_set_as_given():
    latent = Latent(per_image(1, 2), None, {"batch_index": [0, 1]})
    mask = torch.rand(2, 24, 40)
    out = set_latent_noise_mask(None, SetLatentNoiseMask(), latent=latent, mask=mask)["latent"]
    assert out.samples is latent.samples and out.extra == latent.extra
    assert out.noise_mask.shape == (2, 1, 24, 40) and torch.equal(out.noise_mask[:, 0], mask)


# through the sampler -----------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("models"), "sd1")


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_an_image_taken_from_a_batch_is_drawn_as_it_was_in_the_batch(checkpoint, tmp_path):
    text = f"""\
sdflow 1
ckpt = load_checkpoint(name="{checkpoint}")
prompt = clip_text_encode(clip=ckpt.clip, text="a red circle")
blank = empty_latent(width=32, height=32, batch=2)
batch = sample(model=ckpt.model, positive=prompt, negative=prompt, latent=blank, seed=5, steps=2)
pictures = vae_decode(vae=ckpt.vae, latent=batch)
save_image(image=pictures, prefix="all")
second = latent_from_batch(latent=blank, batch_index=1)
alone = sample(model=ckpt.model, positive=prompt, negative=prompt, latent=second, seed=5, steps=2)
picture = vae_decode(vae=ckpt.vae, latent=alone)
save_image(image=picture, prefix="alone")
twice = repeat_latent_batch(latent=second, amount=2)
copies = sample(model=ckpt.model, positive=prompt, negative=prompt, latent=twice, seed=5, steps=2)
copy_pictures = vae_decode(vae=ckpt.vae, latent=copies)
save_image(image=copy_pictures, prefix="copies")
"""
    with registry_with(*PLUGINS, installed=False) as registry:
        result = run_recipe(text, registry, tmp_path / "out")
    images = {p.name: pixels(p) for p in result.files}
    alone, copy_1, copy_2 = images["alone_00001_.png"], images["copies_00001_.png"], images["copies_00002_.png"]
    # Seed 5 + 1, as the second image of the batch (a batch of one or of two
    # may round differently in the U-Net: at most one level of 255).
    assert np.abs(alone - images["all_00002_.png"]).max() <= 1
    assert np.abs(alone - images["all_00001_.png"]).max() > 8
    assert np.abs(copy_1 - alone).max() <= 1  # the first copy keeps index 1
    assert np.abs(copy_2 - alone).max() > 8  # the second has index 2: new noise


def test_hires_fix_draws_twice_the_size(checkpoint, tmp_path):
    text = f"""\
sdflow 1
ckpt = load_checkpoint(name="{checkpoint}")
prompt = clip_text_encode(clip=ckpt.clip, text="a red circle")
blank = empty_latent(width=32, height=32, batch=2)
small = sample(model=ckpt.model, positive=prompt, negative=prompt, latent=blank, steps=2)
large = latent_upscale(latent=small, factor=2.0, method="bislerp")
final = sample(model=ckpt.model, positive=prompt, negative=prompt, latent=large, steps=2, denoise=0.5)
image = vae_decode(vae=ckpt.vae, latent=final)
save_image(image=image, prefix="hires")
"""
    with registry_with(*PLUGINS, installed=False) as registry:
        result = run_recipe(text, registry, tmp_path / "out")
    assert [(p.name, Image.open(p).size) for p in result.files] == [
        ("hires_00001_.png", (64, 64)), ("hires_00002_.png", (64, 64))]
