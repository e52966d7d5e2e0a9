"""Loading a single file tensor by tensor: the weights come out as
diffusers' own single-file conversion makes them, bit for bit and in the same
dtype; no second copy of them is ever allocated; family detection reads
shipped shape tables, which agree with the configs, without torch."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdflow.plugin import StageError  # noqa: E402
from sdflow_diffusion.models.families import (  # noqa: E402
    SHAPE_TABLE, expected_shapes, family_dir, family_names, shape_table, shapes_from_configs)
from sdflow_diffusion.models.files import safetensors_header  # noqa: E402
from sdflow_diffusion.models.load import load_checkpoint  # noqa: E402
from sdflow_diffusion.settings import DiffusionSettings  # noqa: E402
from sdflow_diffusion.testing import TINY_FAMILY, save_single_file, tiny_components  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "plugins" / "sdflow_diffusion" / "models" / "tiny"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def diffusers_single_file(path: Path, family: str, dtype) -> list:
    """The components of ``path`` as diffusers' own ``from_single_file``
    converts them (what sdflow used until it read files tensor by tensor):
    the whole file read into a state dict first."""
    import diffusers
    import transformers
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from safetensors.torch import load_file

    from sdflow_diffusion.models.common import quiet, vae_dtype
    from sdflow_diffusion.models.families import read_json

    folder = family_dir(family)
    state = load_file(str(path))
    common = dict(config=str(folder), local_files_only=True)
    vae_type = vae_dtype(read_json(folder / "vae" / "config.json"), dtype)
    index = read_json(folder / "model_index.json")
    with quiet():
        parts = [diffusers.UNet2DConditionModel.from_single_file(state, subfolder="unet", torch_dtype=dtype, **common),
                 diffusers.AutoencoderKL.from_single_file(state, subfolder="vae", torch_dtype=vae_type, **common)]
        for encoder in ("text_encoder", "text_encoder_2"):
            if index.get(encoder, [None, None])[1] is not None:
                parts.append(create_diffusers_clip_model_from_ldm(getattr(transformers, index[encoder][1]), state,
                                                                  subfolder=encoder, torch_dtype=dtype, **common))
    return parts


def assert_identical(expected: list, loaded: list) -> None:
    assert [type(m).__name__ for m in loaded] == [type(m).__name__ for m in expected]
    for theirs, ours in zip(expected, loaded):
        a, b = theirs.state_dict(), ours.state_dict()
        assert a.keys() == b.keys(), type(ours).__name__
        wrong = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
        assert wrong == [], f"{type(ours).__name__}: {wrong[:5]}"
        assert {str(t.device) for t in b.values()} == {"cpu"}
        assert dict(theirs.named_buffers()).keys() == dict(ours.named_buffers()).keys()
        for name, buffer in theirs.named_buffers():  # CLIP's position_ids: real, not left on the meta device
            assert torch.equal(buffer, dict(ours.named_buffers())[name])
        assert not ours.training


def loaded_parts(path: Path, dtype: str, weight_dtype: str = "run") -> list:
    """The modules of ``path`` loaded for the CPU in ``dtype``; each weight
    in ``dtype`` unless ``weight_dtype`` is "file" (tests/test_weight_dtype.py)."""
    model, clip, vae = load_checkpoint(path, DiffusionSettings(device="cpu", dtype=dtype, weight_dtype=weight_dtype))
    return [model.unet, vae.vae, *clip.encoders]


def save_in(components: dict, path: Path, file_dtype: str) -> Path:
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name in components:
            components[name].to(DTYPES[file_dtype])
    return save_single_file(components, path)


# Bit for bit what diffusers' from_single_file gives -------------------------

@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl", "sdxl-refiner"])
@pytest.mark.parametrize("file_dtype, run_dtype", [("fp32", "fp32"), ("fp16", "fp32"), ("fp32", "bf16")])
def test_weights_are_diffusers_own_bit_for_bit(kind, file_dtype, run_dtype, tmp_path):
    path = save_in(tiny_components(kind, seed=3), tmp_path / f"{kind}.safetensors", file_dtype)
    assert_identical(diffusers_single_file(path, TINY_FAMILY[kind], DTYPES[run_dtype]), loaded_parts(path, run_dtype))


@pytest.mark.parametrize("run_dtype", ["fp32", "bf16"])
def test_the_shipped_model_loads_as_diffusers_loads_it(run_dtype):
    path = SHIPPED / "sdflow-tiny.safetensors"
    assert_identical(diffusers_single_file(path, "sdflow-tiny", DTYPES[run_dtype]), loaded_parts(path, run_dtype))


def test_an_inpainting_file_loads_as_diffusers_loads_it(tmp_path):
    path = save_in(tiny_components("sd1", seed=4, family="sd1-inpaint-tiny"), tmp_path / "inpaint.safetensors", "fp16")
    assert_identical(diffusers_single_file(path, "sd1-inpaint-tiny", torch.float32), loaded_parts(path, "fp32"))


def test_a_tensor_of_a_shape_the_model_cannot_take_is_named(tmp_path):
    """Detection proves the shapes before loading; loading still refuses a
    tensor it cannot place, with a message, not a traceback."""
    from sdflow_diffusion.models.single_file import fill
    from sdflow_diffusion.models.tensor_file import TensorFile
    from sdflow_diffusion.models.ldm_layout import vae_to_original
    from safetensors.torch import save_file

    vae = tiny_components("sd1")["vae"]
    state = vae_to_original(vae.state_dict(), vae.config)
    state["encoder.conv_in.weight"] = torch.zeros(3, 3)
    path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with TensorFile(path, safetensors_header(path)) as tensors, pytest.raises(StageError) as caught:
        fill(type(vae).from_config(vae.config).to("meta"), "vae", tensors, torch.float32, "cpu", vae.config,
             prefix="")
    assert str(caught.value) == ("tensor 'encoder.conv_in.weight' of 'vae.safetensors' has shape [3, 3], "
                                 "where the vae needs [8, 3, 3, 3]")


def raw_safetensors(path: Path, header: dict, data: bytes, misalign: int = 0) -> Path:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8 + misalign)  # padded as safetensors pads it, so that tensors are aligned
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


@pytest.mark.parametrize("entry, data, message", [
    ({"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}, bytes(8),
     "cannot read 'odd.safetensors': tensor 'x' has dtype C64, which sdflow does not read"),
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, bytes(8),
     "cannot read 'odd.safetensors': tensor 'x' has dtype F32 and shape [3], which do not fit its 8 bytes"),
])
def test_a_tensor_that_cannot_be_read_is_named(entry, data, message, tmp_path):
    from sdflow_diffusion.models.tensor_file import TensorFile

    path = raw_safetensors(tmp_path / "odd.safetensors", {"x": entry}, data)
    with TensorFile(path, safetensors_header(path)) as tensors, pytest.raises(StageError) as caught:
        tensors.tensor("x", torch.float32, "cpu")
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("misalign", [0, 2])
def test_a_tensor_is_mapped_where_it_is_aligned_and_read_where_not(misalign, tmp_path):
    from sdflow_diffusion.models.tensor_file import TensorFile

    values = torch.arange(6, dtype=torch.float32)
    entry = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    path = raw_safetensors(tmp_path / "x.safetensors", {"x": entry}, values.numpy().tobytes(), misalign)
    with TensorFile(path, safetensors_header(path)) as tensors:
        x = tensors.tensor("x", torch.float32, "cpu")
        rows = tensors.tensor("x", torch.float32, "cpu", rows=(1, 2))
    assert torch.equal(x, values.view(2, 3)) and torch.equal(rows, values.view(2, 3)[1:])
    x += 1  # a private mapping: the file is never written
    with TensorFile(path, safetensors_header(path)) as tensors:
        assert torch.equal(tensors.tensor("x", torch.float32, "cpu"), values.view(2, 3))


@pytest.mark.parametrize("run_dtype", ["fp32", "bf16"])  # mapped as it is, or read to be converted
def test_a_file_cut_short_while_it_is_read_says_so(run_dtype, tmp_path):
    """The header was checked against the file's size; a file that shrinks
    after that (a copy still being written) ends a read early."""
    from sdflow_diffusion.models.tensor_file import TensorFile

    path = raw_safetensors(tmp_path / "short.safetensors",
                           {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(16))
    header = safetensors_header(path)
    os.truncate(path, path.stat().st_size - 4)
    with TensorFile(path, header) as tensors, pytest.raises(StageError) as caught:
        tensors.tensor("x", DTYPES[run_dtype], "cpu")
    assert str(caught.value).startswith("cannot read 'short.safetensors': it ended early")


# No second copy -------------------------------------------------------------

def allocation_peak(load) -> tuple[int, list]:
    """The most bytes torch held on the CPU at once while ``load()`` ran,
    beyond what it held before (every allocation and free, as the profiler
    records them), and what ``load()`` returned."""
    peak, _, result = allocations(load)
    return peak, result


def allocations(load) -> tuple[int, int, list]:
    """What :func:`allocation_peak` gives, and between them the bytes torch
    still held when ``load()`` returned, beyond what it held before."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = load()
    live = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak, live, result


def nbytes(parts: list) -> int:
    return sum(t.numel() * t.element_size() for part in parts for t in part.state_dict().values())


@pytest.mark.parametrize("file_dtype", ["fp32", "fp16"])
def test_a_load_never_holds_a_second_copy_of_the_weights(file_dtype, tmp_path):
    """A file in the run's dtype is not copied at all (the parameters view
    its copy-on-write mapping); from any other each tensor is allocated once,
    in the run's dtype, through one staging buffer the size of the file's
    largest tensor.  (Building a model allocates each parameter for a moment
    before it moves to the meta device: memory never touched, never resident,
    one parameter at a time.)  Reading the file into a state dict first, as
    diffusers' from_single_file does, holds the file and the model at once."""
    path = save_in(tiny_components("sd1", seed=5), tmp_path / "tiny.safetensors", file_dtype)
    loaded_parts(path, "fp32")  # the imports and the tokenizer, once, outside the measurement
    peak, parts = allocation_peak(lambda: loaded_parts(path, "fp32"))
    weights = nbytes(parts)
    header = safetensors_header(path)
    largest = max(e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items() if k != "__metadata__")
    slack = 64 * 1024
    if file_dtype == "fp32":
        bound = max(t.numel() for part in parts for t in part.parameters()) * 4 + slack  # one parameter, built
        assert peak <= bound < weights, (peak, bound, weights)
    else:
        bound = weights + largest + slack
        assert weights <= peak <= bound, (peak, weights, largest)
    theirs, _ = allocation_peak(lambda: diffusers_single_file(path, "sd1-tiny", torch.float32))
    assert theirs > bound  # the measurement tells the two ways apart


def test_an_fp16_file_kept_in_fp16_allocates_only_the_vae(tmp_path):
    """With the weights kept as the file stores them (--weight-dtype file,
    the CPU's default) the U-Net's and the text encoder's fp16 tensors view
    the file's mapping: what a load leaves allocated is the VAE (read wide),
    where a load that widens them allocates every weight."""
    path = save_in(tiny_components("sd1", seed=5), tmp_path / "tiny.safetensors", "fp16")
    loaded_parts(path, "fp32", "file")
    _, kept, parts = allocations(lambda: loaded_parts(path, "fp32", "file"))
    vae = nbytes([parts[1]])
    assert vae <= kept <= vae + 64 * 1024, (kept, vae)
    _, widened, parts = allocations(lambda: loaded_parts(path, "fp32", "run"))
    assert widened >= nbytes(parts) > 10 * vae, (widened, nbytes(parts), vae)


def test_bound_for_another_device_the_host_holds_one_tensor_at_a_time(tmp_path):
    """What a load to a GPU does on the host, shown on the CPU: with the
    meta device standing in for the GPU (the same path: every tensor read
    into the staging buffer and copied to the device), the host never holds
    more than that buffer, the size of the file's largest tensor."""
    import diffusers
    from safetensors.torch import save_file

    from sdflow_diffusion.models.common import parameters_on_meta
    from sdflow_diffusion.models.ldm_layout import UNET, VAE, unet_to_original, vae_to_original
    from sdflow_diffusion.models.single_file import fill
    from sdflow_diffusion.models.tensor_file import TensorFile

    parts = tiny_components("sd1", seed=7)
    unet, vae = parts["unet"], parts["vae"]
    state = {UNET + k: v for k, v in unet_to_original(unet.state_dict(), unet.config).items()}
    state |= {VAE + k: v for k, v in vae_to_original(vae.state_dict(), vae.config).items()}
    path = tmp_path / "unet-and-vae.safetensors"
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(path))
    with parameters_on_meta():
        empty = [diffusers.UNet2DConditionModel.from_config(unet.config),
                 diffusers.AutoencoderKL.from_config(vae.config)]
    header = safetensors_header(path)
    largest = max(e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items() if k != "__metadata__")
    with TensorFile(path, header) as tensors:
        peak, loaded = allocation_peak(lambda: [fill(model, part, tensors, torch.float16, "meta", model.config)
                                                for model, part in zip(empty, ("unet", "vae"))])
    assert {t.device.type for model in loaded for t in model.state_dict().values()} == {"meta"}
    assert peak <= largest + 64 * 1024 < nbytes(loaded) / 4, (peak, largest, nbytes(loaded))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_weights_are_diffusers_own_on_the_gpu(tmp_path):
    path = save_in(tiny_components("sdxl", seed=6), tmp_path / "xl.safetensors", "fp16")
    model, clip, vae = load_checkpoint(path, DiffusionSettings(device="cuda", dtype="fp16"))
    parts = [model.unet, vae.vae, *clip.encoders]
    assert {t.device.type for part in parts for t in part.state_dict().values()} == {"cuda"}
    assert_identical(diffusers_single_file(path, "sdxl-tiny", torch.float16), [part.to("cpu") for part in parts])


# Detection from shipped shape tables ----------------------------------------

@pytest.mark.parametrize("name", family_names())
def test_each_shipped_shape_table_is_what_its_configs_give(name):
    """training/shape_tables.py writes them; after a config changes, run it."""
    assert (family_dir(name) / SHAPE_TABLE).read_bytes() == shape_table(name)
    assert dict(expected_shapes(name)) == shapes_from_configs(name)


def test_the_sd15_table_holds_the_real_files_parameters():
    assert sum(math.prod(shape) for shape in expected_shapes("sd15").values()) == 1_066_235_307


def test_detection_needs_neither_torch_nor_a_model(tmp_path):
    """The header and the shipped tables are enough: torch is not even imported."""
    path = save_single_file(tiny_components("sdxl", seed=1), tmp_path / "x.safetensors")
    code = ("import json, sys; from pathlib import Path\n"
            "from sdflow_diffusion.models.files import header_shapes, safetensors_header\n"
            "from sdflow_diffusion.models.families import detect\n"
            f"shapes, _ = header_shapes(safetensors_header(Path({str(path)!r})))\n"
            "print(json.dumps([detect(shapes)[0], 'torch' in sys.modules]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == ["sdxl-tiny", False]


def test_a_family_without_a_table_is_detected_from_its_configs(tmp_path, monkeypatch):
    """A family folder added without running training/shape_tables.py still
    works: its shapes come from its configs (slower)."""
    import shutil

    from sdflow_diffusion.models import families

    folder = tmp_path / "configs"
    shutil.copytree(family_dir("sd1-tiny"), folder / "sd1-tiny")
    (folder / "sd1-tiny" / SHAPE_TABLE).unlink()
    monkeypatch.setattr(families, "FAMILIES_DIR", folder)
    families.expected_shapes.cache_clear()
    try:
        assert dict(families.expected_shapes("sd1-tiny")) == shapes_from_configs("sd1-tiny")
    finally:
        families.expected_shapes.cache_clear()
