"""How the models run: --deterministic, --compile, --channels-last,
--vae-tiling and --lowvram, each through `sdflow run` on sdflow-tiny.

They are made for CUDA; on the CPU each must still run and give the image it
promises (the same pixels, or pixels within a stated bound), and record what
changes bits.  The tests marked ``cuda`` run where torch sees a GPU
(benchmarks/gpu.py measures the same options there: speed, peak memory)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cli import ROOT, sdflow_cli
from sdflow.cli import main
from sdflow.pngtext import read_png_text

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

TXT2IMG = str(ROOT / "examples" / "txt2img.sdflow")
SHIPPED = ROOT / "plugins" / "sdflow_diffusion" / "models" / "tiny" / "sdflow-tiny.safetensors"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


cuda = pytest.mark.skipif("not cuda_available()", reason="needs a CUDA GPU (benchmarks/gpu.py runs these there)")


def run(out, *options, recipe=TXT2IMG) -> list:
    """`sdflow run` of ``recipe`` in this process; its PNGs, in name order."""
    assert main(["run", str(recipe), "--output", str(out), *options]) == 0
    return sorted(p for p in out.iterdir() if p.suffix == ".png")


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def recorded(path) -> dict:
    return json.loads(read_png_text(path)["run"])


@pytest.fixture(scope="module")
def default_image(tmp_path_factory):
    """The default recipe's image with no option: what each option is held to."""
    (png,) = run(tmp_path_factory.mktemp("default"))
    assert recorded(png) == {"device": "cpu", "dtype": "fp32", "vae_dtype": "fp32", "seeds": [42]}
    return pixels(png)


@pytest.fixture
def deterministic_switched_off():
    """--deterministic switches torch's deterministic algorithms on for the
    process: put them back for the tests that follow."""
    import torch

    yield
    from sdflow_diffusion.models.run_options import apply_determinism
    from sdflow_diffusion.settings import DiffusionSettings

    apply_determinism(DiffusionSettings(), torch.device("cpu"), print)
    assert not torch.are_deterministic_algorithms_enabled()


# --deterministic --------------------------------------------------------------------------------


def test_deterministic_gives_the_cpus_image_and_is_recorded(default_image, tmp_path, deterministic_switched_off):
    import torch

    (png,) = run(tmp_path, "--deterministic")
    assert torch.are_deterministic_algorithms_enabled()
    assert np.array_equal(pixels(png), default_image)  # the CPU is deterministic either way
    assert recorded(png)["deterministic"] is True
    # What replay and diff compare: the image says it was made with it.
    assert "deterministic" not in recorded(run(tmp_path / "plain")[0])


def test_a_run_without_deterministic_switches_off_only_what_sdflow_switched_on(deterministic_switched_off):
    import torch

    from sdflow_diffusion.models.run_options import apply_determinism
    from sdflow_diffusion.settings import DiffusionSettings

    cpu = torch.device("cpu")
    apply_determinism(DiffusionSettings(), cpu, print)
    assert not torch.are_deterministic_algorithms_enabled()
    apply_determinism(DiffusionSettings(deterministic=True), cpu, print)
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    apply_determinism(DiffusionSettings(), cpu, print)
    assert not torch.are_deterministic_algorithms_enabled()


@cuda
def test_on_cuda_the_same_seed_twice_gives_the_same_bits(tmp_path, deterministic_switched_off):
    import os

    (first,) = run(tmp_path / "a", "--deterministic", "--device", "cuda", "--set", "size=128")
    (second,) = run(tmp_path / "b", "--deterministic", "--device", "cuda", "--set", "size=128")
    assert np.array_equal(pixels(first), pixels(second))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"]  # set by sdflow unless the user had


# --channels-last ---------------------------------------------------------------------------------


def test_channels_last_keeps_the_pixels_within_one_level(default_image, tmp_path):
    # Measured on the CPU in fp32: the convolutions sum in another order, and
    # one pixel of the default image moves by one level of 255.
    (png,) = run(tmp_path, "--channels-last")
    assert np.abs(pixels(png) - default_image).max() <= 1
    assert recorded(png)["channels_last"] is True


def test_channels_last_lays_out_the_unet_and_the_vae():
    import torch

    from sdflow_diffusion.models.load import load_checkpoint
    from sdflow_diffusion.settings import DiffusionSettings

    model, _clip, vae = load_checkpoint(SHIPPED, DiffusionSettings(device="cpu", channels_last=True))
    for weight in (model.unet.conv_in.weight, vae.vae.decoder.conv_in.weight):
        assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


# --lowvram ---------------------------------------------------------------------------------------


def test_lowvram_on_the_cpu_does_nothing_and_gives_the_same_pixels(default_image, tmp_path):
    (png,) = run(tmp_path, "--lowvram")
    assert np.array_equal(pixels(png), default_image)
    assert recorded(png) == {"device": "cpu", "dtype": "fp32", "vae_dtype": "fp32", "seeds": [42]}  # same bits


@cuda
def test_lowvram_keeps_each_model_on_the_gpu_only_while_it_runs(tmp_path):
    import torch

    from sdflow_diffusion.models.load import load_checkpoint
    from sdflow_diffusion.numerics.decode import decode
    from sdflow_diffusion.numerics.encode import encode_text
    from sdflow_diffusion.numerics.sampling import empty_latent, sample
    from sdflow_diffusion.settings import DiffusionSettings
    from sdflow_diffusion.stages.sample import Sample

    images = {}
    for lowvram in (False, True):
        model, clip, vae = load_checkpoint(SHIPPED, DiffusionSettings(device="cuda", lowvram=lowvram))
        kept = "cpu" if lowvram else "cuda"
        assert {next(m.parameters()).device.type for m in (model.unet, vae.vae, *clip.encoders)} == {kept}
        latent = sample(model, encode_text(clip, "a red circle"), encode_text(clip, ""), empty_latent(64, 64, 1),
                        Sample(seed=1, steps=4, cfg=3.0))
        images[lowvram] = decode(vae, latent)
        assert {next(m.parameters()).device.type for m in (model.unet, vae.vae, *clip.encoders)} == {kept}
        torch.cuda.synchronize()
    assert torch.equal(images[False], images[True])


# --vae-tiling ------------------------------------------------------------------------------------


def test_vae_tiling_leaves_an_image_no_larger_than_a_tile_alone(default_image, tmp_path):
    # sdflow-tiny's VAE tiles above its own size, 64 px: the default image is not tiled.
    (png,) = run(tmp_path, "--vae-tiling")
    assert np.array_equal(pixels(png), default_image)
    assert recorded(png)["vae_tiling"] is True


def test_vae_tiling_decodes_and_encodes_a_larger_image_in_tiles_of_the_vaes_size():
    """At 128x128 the tiny VAE (64 px) decodes four tiles, blended where they
    overlap (a quarter of a tile): the top left of the image is the first
    tile's, bit for bit, and the image is another than the untiled one.
    How far it is: the module's docs, benchmarks/README.md."""
    import torch

    from sdflow_diffusion.handles import Latent
    from sdflow_diffusion.models.load import load_checkpoint
    from sdflow_diffusion.numerics.decode import decode
    from sdflow_diffusion.numerics.vae_encode import encode
    from sdflow_diffusion.settings import DiffusionSettings

    *_, plain = load_checkpoint(SHIPPED, DiffusionSettings(device="cpu"))
    *_, tiled = load_checkpoint(SHIPPED, DiffusionSettings(device="cpu", vae_tiling=True))
    assert (tiled.vae.tile_sample_min_size, tiled.vae.tile_latent_min_size) == (64, 8)
    latent = Latent(torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(0)))
    whole, tiles = decode(plain, latent), decode(tiled, latent)
    assert tiles.shape == whole.shape == (1, 128, 128, 3)
    first = decode(plain, Latent(latent.samples[..., :8, :8]))
    keep = 64 - 64 // 4  # the part of a tile no blending touches
    assert torch.equal(tiles[:, :keep, :keep], first[:, :keep, :keep])
    assert not torch.equal(tiles, whole)
    assert not torch.equal(encode(tiled, whole).samples, encode(plain, whole).samples)


# --compile ---------------------------------------------------------------------------------------

PATCHED = """\
sdflow 1

ckpt = load_checkpoint(name="sdflow-tiny.safetensors")
styled = load_lora(model=ckpt.model, clip=ckpt.clip, name="sdflow-tiny-corners.safetensors",
                   strength_model=1.0, strength_clip=0.0)
freed = freeu(model=styled.model, b1=1.3, b2=1.4, s1=0.9, s2=0.2)
positive = clip_text_encode(clip=ckpt.clip, text="a large black triangle at the bottom right on a red background")
negative = clip_text_encode(clip=ckpt.clip, text="")
latent = empty_latent(width=64, height=64, batch=1)
plain = sample(model=ckpt.model, positive=positive, negative=negative, latent=latent, seed=42, steps=6, cfg=3.0)
lora = sample(model=styled.model, positive=positive, negative=negative, latent=latent, seed=42, steps=6, cfg=3.0)
both = sample(model=freed.model, positive=positive, negative=negative, latent=latent, seed=42, steps=6, cfg=3.0)
plain_image = vae_decode(vae=ckpt.vae, latent=plain)
lora_image = vae_decode(vae=ckpt.vae, latent=lora)
both_image = vae_decode(vae=ckpt.vae, latent=both)
save_image(image=plain_image, prefix="a_plain")
save_image(image=lora_image, prefix="b_lora")
save_image(image=both_image, prefix="c_freeu")
"""


def no_compiler() -> str | None:
    import torch

    from sdflow_diffusion.models.run_options import compiler_problem

    return compiler_problem(torch.device("cpu"))


def test_compile_without_a_compiler_is_an_error_at_the_loader(tmp_path):
    result = sdflow_cli("run", TXT2IMG, "--compile", "--output", str(tmp_path),
                        env={"CXX": str(tmp_path / "no-such-compiler")})
    assert result.returncode == 1
    assert "txt2img.sdflow:19:1: E601 --compile cannot compile the U-Net here: no working C++ compiler was " \
           "found for inductor" in result.stderr
    assert "help: run without --compile" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif("no_compiler() is not None", reason="torch.compile's inductor needs a C++ compiler")
def test_a_compiled_unet_draws_the_eager_image_and_sees_a_lora_and_freeu(tmp_path, capsys):
    """One compiled U-Net serves three samplers in one run: plain, with a
    LoRA added to its weights in place, and with FreeU switched on (its
    attributes: a recompile).  Each image is the eager one within a level;
    a compiled run that ignored the LoRA or FreeU would be far off."""
    import torch._dynamo

    recipe = tmp_path / "patched.sdflow"
    recipe.write_text(PATCHED)
    eager = [pixels(p) for p in run(tmp_path / "eager", recipe=recipe)]
    assert np.abs(eager[0] - eager[1]).max() > 64 and np.abs(eager[1] - eager[2]).max() > 64
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    capsys.readouterr()
    written = run(tmp_path / "compiled", "--compile", "--json", recipe=recipe)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    compiled = [pixels(p) for p in written]
    for ours, theirs in zip(compiled, eager, strict=True):
        assert np.abs(ours - theirs).max() <= 1
    assert all(recorded(p)["compile"] is True for p in written)
    # Compiled once for the plain U-Net, which the LoRA run reuses; once more for FreeU.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs <= 2
    warmups = [e for e in events if e["event"] == "compile_warmup"]
    assert sorted(e["stage"] for e in warmups) == ["both", "lora", "plain"]
    assert all(e["steps"] == 6 and e["first_step_seconds"] > 0 and e["step_seconds"] > 0 for e in warmups)


def test_the_options_are_listed_with_their_variables():
    listed = sdflow_cli("plugins").stdout
    for line in ("--deterministic / $SDFLOW_DETERMINISTIC (default False): the same seed gives the same bits",
                 "--compile / $SDFLOW_COMPILE (default False): compile the U-Net with torch.compile",
                 "--channels-last / $SDFLOW_CHANNELS_LAST (default False): keep the U-Net's and the VAE's",
                 "--vae-tiling / $SDFLOW_VAE_TILING (default False): decode and encode images larger",
                 "--lowvram / $SDFLOW_LOWVRAM (default False): keep the models in CPU memory"):
        assert line in listed


def test_a_lock_records_the_options_that_change_bits(tmp_path):
    from sdflow_diffusion.settings import DiffusionSettings

    assert DiffusionSettings(device="cpu").resolved() == {"device": "cpu", "dtype": "fp32"}
    assert DiffusionSettings(device="cpu", compile=True, vae_tiling=True, lowvram=True).resolved() == {
        "device": "cpu", "dtype": "fp32", "compile": True, "vae_tiling": True}
