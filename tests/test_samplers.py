"""ComfyUI's samplers, to the bit: sdflow's own code against latents from a ComfyUI run.

tests/data/comfyui_samplers.json holds what ComfyUI's samplers returned (see
tests/data/README.md) for a toy model, a fixed function of the latent and
the noise level, on SD 1.5's ``normal`` and ``karras`` schedules: every
sampler at 1, 2, 3, 4 and 10 steps with seed 42 and ComfyUI's own noise
(its seeded default noise sampler, its Brownian trees), non-default options,
and a batch of two in sdflow's seed + i convention.  Every latent must be
equal in float32, bit for bit: all of them are.

The rest checks what the reference cannot: determinism, the end of a
schedule with a perfect model, progress and interruption, no device syncs.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from sdflow_diffusion.numerics import samplers
from sdflow_diffusion.numerics.samplers import SAMPLERS, brownian_noise, gaussian_noise

DATA = Path(__file__).parent / "data"
SHAPE = (1, 4, 8, 8)


@lru_cache(maxsize=1)
def reference() -> dict:
    return json.loads((DATA / "comfyui_samplers.json").read_text(encoding="utf-8"))


def toy_mean() -> torch.Tensor:
    """-0.2, -0.1, 0, 0.1, 0.2 repeating over a [1, 4, 8, 8] latent."""
    steps = (torch.arange(4 * 8 * 8) % 5).to(torch.float32) - 2.0
    return (steps * 0.1).reshape(SHAPE)


MEAN = toy_mean()


def toy_denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The reference run's model (benchmarks/comfy_reference_samplers.py, in
    the JSON's ``toy_denoise``), written again: Gaussian data's posterior
    mean around MEAN, bent by 1 + k (x - mean)^2.  Must give its float32
    numbers exactly; ComfyUI passes sigma as one value per image, sdflow as
    one 0-dim tensor, which is the same arithmetic element by element."""
    c = 1.0 / (sigma * sigma + 1.0)
    k = 0.25 * (1.0 - c)
    r = x - MEAN
    return MEAN + (r * c) / (1.0 + (k * r) * r)


def floats(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def cases():
    data = reference()
    for section in ("main", "short", "options", "batch2"):
        for index, entry in enumerate(data[section]):
            options = ",".join(f"{k}={v}" for k, v in entry["options"].items())
            yield pytest.param(section, index, id=f"{section}-{entry['sampler']}-{entry['schedule']}-"
                               f"{entry['steps']}-b{len(entry['seeds'])}{'-' + options if options else ''}")


def start(seeds: list[int], sigma0: torch.Tensor):
    """The starting latent of a case and the generators that drew it: each
    image's noise from its seed (checked against the noise ComfyUI drew),
    scaled as ComfyUI's noise_scaling does at full denoise."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    noise = torch.cat([torch.randn(SHAPE, generator=g) for g in generators])
    for i, seed in enumerate(seeds):
        assert torch.equal(noise[i], floats(reference()["noise"][str(seed)]).reshape(SHAPE[1:])), \
            "torch's generator no longer draws what it drew for ComfyUI"
    return noise * torch.sqrt(1.0 + sigma0 ** 2.0), generators


def noise_for(name, options, x, sigmas, seeds, generators):
    info = SAMPLERS[name]
    if options.get("s_churn", 0) > 0:
        # ComfyUI draws churn noise from torch's global generator, which
        # prepare_noise has just seeded and drawn the start from.
        return lambda sigma, sigma_next: torch.randn(SHAPE, generator=generators[0])
    if info.brownian:
        pytest.importorskip("torchsde")
        return brownian_noise(x, sigmas, seeds)
    if info.stochastic:
        return gaussian_noise(x, seeds)
    return None


@pytest.mark.parametrize("section, index", list(cases()))
def test_comfyui_latents_bit_for_bit(section, index):
    entry = reference()[section][index]
    name, options, seeds = entry["sampler"], entry["options"], entry["seeds"]
    sigmas = floats(entry["sigmas"])
    x, generators = start(seeds, sigmas[0])
    calls = []

    def denoise(x, sigma):
        assert sigma.ndim == 0 and sigma.dtype == torch.float32 and sigma.device.type == "cpu"
        calls.append(sigma)
        return toy_denoise(x, sigma)

    noise = noise_for(name, options, x, sigmas, seeds, generators)
    out = SAMPLERS[name].function(denoise, x, sigmas, noise=noise, **options)
    expected = floats(entry["output"]).reshape(out.shape)
    assert len(calls) == entry["model_calls"]
    assert out.dtype == torch.float32
    assert torch.equal(out, expected), f"max difference {(out - expected).abs().max().item()}"
    assert torch.equal(sigmas, floats(entry["sigmas"]))  # ComfyUI's uni_pc writes 0.001 into them; sdflow's not


def test_the_table_matches_comfyui_names_and_sets():
    sigma_data = json.loads((DATA / "comfyui_sigmas.json").read_text(encoding="utf-8"))
    assert set(SAMPLERS) <= set(sigma_data["sampler_names"])
    assert {n for n, i in SAMPLERS.items() if i.discard_penultimate} == \
        set(sigma_data["discard_penultimate_sigma_samplers"])
    assert {n for n, i in SAMPLERS.items() if i.brownian} == {"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"}
    assert {e["sampler"] for e in reference()["main"]} == set(SAMPLERS)
    assert SAMPLERS["ddim"].function is samplers.euler
    for name, info in SAMPLERS.items():
        assert info.function.__name__ == ("euler" if name == "ddim" else name)
        accepted = inspect.signature(info.function).parameters
        for option, default in info.options.items():
            assert accepted[option].default == default, (name, option)
        assert info.model_calls_per_step >= 1
        assert not info.brownian or info.stochastic


def run(name, denoise, x, sigmas, seeds=(7,), **kw):
    info = SAMPLERS[name]
    noise = None
    if info.brownian:
        pytest.importorskip("torchsde")
        noise = brownian_noise(x, sigmas, list(seeds))
    elif info.stochastic:
        noise = gaussian_noise(x, list(seeds))
    return info.function(denoise, x, sigmas, noise=noise, **kw)


KARRAS_10 = next(e for e in reference()["main"] if e["schedule"] == "karras" and e["steps"] == 10
                 and e["sampler"] == "euler")["sigmas"]
CLEAN = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
START_NOISE = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_each_sampler_is_deterministic(name):
    sigmas = floats(KARRAS_10)
    x = START_NOISE * sigmas[0]
    first = run(name, toy_denoise, x, sigmas)
    again = run(name, toy_denoise, x.clone(), sigmas)
    assert torch.equal(first, again)


# With a model that always answers the clean latent, a sampler whose last
# step is "x = denoised" ends on it exactly.  The others end near it:
# euler, heun, heunpp2, dpm_2, deis, ddim, dpm_2_ancestral and
# dpmpp_2s_ancestral take a last Euler step, x + (x - x0) / sigma * (0 - sigma),
# which is x0 up to rounding; ddpm's last step goes through the
# variance-preserving scale and back; ComfyUI's UniPC stops at sigma 0.001
# instead of 0, so it keeps 0.001 of the starting noise (to a few percent:
# it takes the VP sigma as sqrt(1 - exp(2 log alpha)), which at sigma 0.001
# is 1 - (1 - 1e-6) in float32).
EXACT_AT_ZERO = {"lms", "dpmpp_2m", "ipndm", "euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
                 "dpmpp_3m_sde", "lcm"}
ROUNDING_AT_ZERO = {"euler": 1e-7, "heun": 1e-7, "heunpp2": 1e-7, "dpm_2": 1e-7, "deis": 1e-7, "ddim": 1e-7,
                    "dpm_2_ancestral": 1e-7, "dpmpp_2s_ancestral": 1e-7, "ddpm": 1e-5}


@pytest.mark.parametrize("steps", [4, 10])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_perfect_model_gives_the_clean_latent_at_sigma_zero(name, steps):
    sigmas = floats(next(e for e in reference()["main"] if e["schedule"] == "karras"
                         and e["steps"] == steps and e["sampler"] == name)["sigmas"])
    assert sigmas[-1] == 0
    out = run(name, lambda x, sigma: CLEAN, START_NOISE * sigmas[0] + CLEAN, sigmas)
    if name in EXACT_AT_ZERO:
        assert torch.equal(out, CLEAN)
    elif name in ROUNDING_AT_ZERO:
        torch.testing.assert_close(out, CLEAN, rtol=0, atol=ROUNDING_AT_ZERO[name])
    else:
        assert name in ("uni_pc", "uni_pc_bh2")
        assert (out - CLEAN).abs().max() > 1e-3
        torch.testing.assert_close(out, CLEAN + 0.001 * START_NOISE, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_step_is_called_once_per_step_and_can_stop_the_run(name):
    sigmas = floats(KARRAS_10)
    x = START_NOISE * sigmas[0]
    seen = []
    run(name, toy_denoise, x, sigmas, step=seen.append)
    assert seen == list(range(len(sigmas) - 1))

    class Stop(Exception):
        pass

    def stop_after_2(i):
        if i == 2:
            raise Stop

    calls = []
    with pytest.raises(Stop):
        run(name, lambda x, s: calls.append(s) or toy_denoise(x, s), x, sigmas, step=stop_after_2)
    assert 3 <= len(calls) <= 3 * SAMPLERS[name].model_calls_per_step


@pytest.mark.parametrize("name", [n for n, i in SAMPLERS.items() if i.stochastic])
def test_a_stochastic_sampler_without_noise_says_so(name):
    sigmas = floats(KARRAS_10)
    with pytest.raises(ValueError, match="noise"):
        SAMPLERS[name].function(toy_denoise, START_NOISE * sigmas[0], sigmas)


def test_no_item_or_tolist_in_the_samplers():
    source = Path(samplers.__file__).read_text(encoding="utf-8")
    assert not re.search(r"\.(item|tolist)\(", source)
    for line in source.splitlines():
        if re.search(r"\.to\(", line):
            assert "non_blocking" in line or "on_device" in line, line


def test_the_samplers_run_on_the_meta_device_so_never_read_the_latent():
    """A meta tensor has no values: reading one (.item(), bool(), an ``if``
    on a device tensor) raises, so every decision is made on the CPU sigmas.
    In float16, which the latent keeps."""
    dtype = torch.float16
    sigmas = floats(next(e for e in reference()["main"] if e["schedule"] == "karras" and e["steps"] == 4
                         and e["sampler"] == "euler")["sigmas"])
    mean = MEAN.to("meta", dtype)

    def meta_denoise(x, sigma):
        assert sigma.device.type == "cpu" and sigma.ndim == 0
        c = 1.0 / (sigma * sigma + 1.0)
        return mean + (x - mean) * c

    x = torch.empty((2, *SHAPE[1:]), device="meta", dtype=dtype)
    for name, info in SAMPLERS.items():
        kw = {"s_churn": 1.0} if "s_churn" in info.options else {}
        noise = gaussian_noise(x, [1, 2]) if info.stochastic or kw else None
        if info.brownian:
            pytest.importorskip("torchsde")
            noise = brownian_noise(x, sigmas, [1, 2])
        out = info.function(meta_denoise, x, sigmas, noise=noise, **kw)
        assert out.device.type == "meta" and out.dtype == dtype and out.shape == x.shape, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_device_sync_on_cuda():
    sigmas = floats(KARRAS_10)
    mean = MEAN.cuda()

    def denoise(x, sigma):
        c = 1.0 / (sigma * sigma + 1.0)
        return mean + (x - mean) * c

    x = (START_NOISE * sigmas[0]).cuda()
    for name, info in SAMPLERS.items():
        noise = gaussian_noise(x, [1]) if info.stochastic else None
        if info.brownian:
            pytest.importorskip("torchsde")
            noise = brownian_noise(x, sigmas, [1])
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = info.function(denoise, x, sigmas, noise=noise)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert out.device.type == "cuda", name


def test_gaussian_noise_gives_image_i_the_noise_of_seed_i():
    x = torch.zeros((2, *SHAPE[1:]))
    pair = gaussian_noise(x, [5, 9])
    alone = gaussian_noise(x[:1], [9])
    s = torch.tensor(1.0)
    for _ in range(2):
        assert torch.equal(pair(s, s)[1:], alone(s, s))
    with pytest.raises(ValueError):
        gaussian_noise(x, [5])


def test_brownian_noise_is_one_tree_per_image_and_standard_normal():
    pytest.importorskip("torchsde")
    sigmas = floats(KARRAS_10)
    x = torch.zeros((2, *SHAPE[1:]))
    pair = brownian_noise(x, sigmas, [5, 9])
    alone = brownian_noise(x[:1], sigmas, [9])
    assert torch.equal(pair(sigmas[1], sigmas[2])[1:], alone(sigmas[1], sigmas[2]))
    big = brownian_noise(torch.zeros(1, 16, 64, 64), sigmas, [1])(sigmas[3], sigmas[4])
    assert abs(big.mean().item()) < 0.02 and abs(big.std().item() - 1) < 0.02
    with pytest.raises(ValueError):
        brownian_noise(x, sigmas, [5])


def test_brownian_noise_without_torchsde_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchsde", None)  # import torchsde now raises ImportError
    with pytest.raises(ImportError, match="pip install torchsde"):
        brownian_noise(torch.zeros(SHAPE), floats(KARRAS_10), [1])
