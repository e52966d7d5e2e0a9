"""Files that are not what they seem: a checkpoint name that finds a FIFO,
a device, a folder of other files, a broken or renamed safetensors, a
diffusers folder of pickles or with a broken JSON file.  Each is told at the
recipe's line with what is wrong and with which file, before anything is
hashed or loaded; a model folder is identified by the files a load reads,
and a stray file beside them is never opened."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdflow.cli import main  # noqa: E402
from sdflow.pngtext import read_png_text  # noqa: E402
from sdflow_diffusion.testing import make_pipeline, save_diffusers, save_single_file, tiny_components  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

RECIPE = """\
sdflow 1

param checkpoint = "tiny-sd1.safetensors"

ckpt = load_checkpoint(name=checkpoint)
positive = clip_text_encode(clip=ckpt.clip, text="a red circle")
latent = empty_latent(width=32, height=32, batch=1)
denoised = sample(model=ckpt.model, positive=positive, negative=positive, latent=latent, seed=1, steps=1)
image = vae_decode(vae=ckpt.vae, latent=denoised)
save_image(image=image, prefix="tiny")
"""
BROKEN_HELP = ("the file is damaged or incomplete (an interrupted download?): download it again "
               "and compare its size or SHA-256 with the source's")
PICKLE_HELP = ("use safetensors weights (diffusers' save_pretrained(safe_serialization=True) writes them), "
               "or pass --allow-pickle if you trust these files (they are then loaded with "
               "weights_only=True, tensors only)")
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX thing")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny SD 1.x model, three ways: a single file, a diffusers folder
    of safetensors, and one of pickles (``.bin``)."""
    import torch

    from sdflow_diffusion.models.common import quiet

    root = tmp_path_factory.mktemp("tiny")
    components = tiny_components("sd1", seed=3)
    pickled = root / "pickled-sd1"
    with quiet():
        make_pipeline(components, "StableDiffusionPipeline").save_pretrained(pickled, safe_serialization=False)
    # transformers 5 writes safetensors whatever it is asked: its pickle, as transformers 4 wrote it
    (pickled / "text_encoder" / "model.safetensors").unlink()
    torch.save(components["text_encoder"].state_dict(), pickled / "text_encoder" / "pytorch_model.bin")
    return {"file": save_single_file(components, root / "tiny-sd1.safetensors"),
            "folder": save_diffusers(components, root / "tiny-sd1"), "pickled": pickled}


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.sdflow"
    path.write_text(RECIPE, encoding="utf-8")
    return path


def run(recipe: Path, checkpoint: Path | str, *options: str) -> int:
    return main(["run", str(recipe), "--output", str(recipe.parent / "out"), "--set", f"checkpoint={checkpoint}",
                 *options])


def diagnostic(capsys) -> tuple[str, str]:
    """The first line of what `sdflow run` reported, and its help."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    helps = [line.split("= help: ", 1)[1] for line in lines if "= help: " in line]
    return lines[0], helps[0] if helps else ""


def copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def sparse(path: Path, size: int = 4 << 30) -> Path:
    """A file of ``size`` bytes (4 GiB) that takes no room, made unreadable
    (which root ignores: :func:`files_opened` is the proof that counts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)
    path.chmod(0)
    return path


_RECORDS: list[tuple[list[str], set[str]]] = []  # the blocks of files_opened now running, innermost last


def _record_open(event: str, args: tuple) -> None:
    if _RECORDS and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        opened, refused = _RECORDS[-1]
        opened.append(os.fsdecode(args[0]))
        if os.path.realpath(args[0]) in refused:
            raise PermissionError(f"the test forbids opening {os.fsdecode(args[0])}")


@contextlib.contextmanager
def files_opened(*refused: Path):
    """Every path this process opens (Python's ``open`` and ``os.open``, as
    hashing and reading JSON do) while the block runs; opening one of
    ``refused`` fails there, so that a test of a FIFO or a device fails
    rather than blocks or reads forever should sdflow ever open one."""
    if not getattr(files_opened, "hooked", False):
        sys.addaudithook(_record_open)  # it cannot be removed: it acts only inside a block
        files_opened.hooked = True
    opened: list[str] = []
    _RECORDS.append((opened, {os.path.realpath(p) for p in refused}))
    try:
        yield opened
    finally:
        _RECORDS.pop()


def resolved(paths: list[str]) -> set[Path]:
    return {Path(p).resolve() for p in paths}


def identity(png: Path, name: str) -> str:
    """The identity of the model ``name`` that the image ``png`` records."""
    return json.loads(read_png_text(png)["models"])[name]


# A path that is not a file ------------------------------------------------------

@needs_fifo
@pytest.mark.parametrize("what", ["fifo", "link to a fifo", "device"])
def test_a_fifo_or_a_device_is_refused_before_it_is_opened(what, recipe, tmp_path, capsys):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    if what == "link to a fifo":
        (tmp_path / "link.safetensors").symlink_to(fifo)
    path = {"fifo": fifo, "link to a fifo": tmp_path / "link.safetensors", "device": Path("/dev/zero")}[what]
    if what == "device" and not path.exists():
        pytest.skip("no /dev/zero here")
    with files_opened(path) as opened:
        assert run(recipe, path) == 1
    assert [p for p in opened if os.path.realpath(p) == os.path.realpath(path)] == []
    kind = "a character device" if what == "device" else "a FIFO (named pipe)"
    assert diagnostic(capsys) == (
        f"{recipe}:5:1: E601 checkpoint '{path}' is {kind}, not a file or a folder",
        "name a .safetensors file or a diffusers folder (a symlink to one is fine)")


def test_a_symlink_to_a_checkpoint_is_the_checkpoint(tiny, recipe, tmp_path, capsys):
    link = tmp_path / "linked.safetensors"
    link.symlink_to(tiny["file"])
    assert run(recipe, link) == 0
    (png,) = (tmp_path / "out").iterdir()
    assert identity(png, str(link)) == hashlib.sha256(tiny["file"].read_bytes()).hexdigest()


# A folder that is not a model ----------------------------------------------------

@needs_fifo
def test_a_folder_of_other_files_is_refused_before_anything_in_it_is_read(recipe, tmp_path, capsys):
    library = tmp_path / "library"
    huge = sparse(library / "everything.safetensors")
    os.mkfifo(library / "pipe")
    sparse(library / "SDXL" / "x.safetensors")
    with files_opened(huge, library / "pipe", library / "SDXL" / "x.safetensors") as opened:
        assert run(recipe, library) == 1
    assert diagnostic(capsys) == (
        f"{recipe}:5:1: E601 '{library}' is a folder but not a diffusers model: it has no model_index.json",
        "name one of the models in it (everything.safetensors), or a folder saved by diffusers' save_pretrained")
    assert not any(library.resolve() in p.parents for p in resolved(opened)), opened
    huge.chmod(0o600)


def test_a_folder_missing_a_component_says_which(tiny, recipe, tmp_path, capsys):
    folder = copy(tiny["folder"], tmp_path)
    shutil.rmtree(folder / "vae")
    (folder / "text_encoder" / "config.json").unlink()
    assert run(recipe, folder) == 1
    assert diagnostic(capsys) == (
        f"{recipe}:5:1: E601 diffusers folder '{folder}' is incomplete: its model_index.json names unet, vae, "
        "text_encoder, and it lacks vae/, text_encoder/config.json",
        "copy the whole folder again (diffusers' save_pretrained writes a subfolder per component, each with its "
        "config.json and weights)")


def test_a_component_without_weights_says_what_it_has(tiny, recipe, tmp_path, capsys):
    folder = copy(tiny["folder"], tmp_path)
    unet = folder / "unet"
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "diffusion_pytorch_model.fp16.safetensors")
    assert run(recipe, folder) == 1
    assert diagnostic(capsys)[0] == (
        f"{recipe}:5:1: E601 diffusers folder '{folder}' is incomplete: unet/ has no weights "
        "(diffusion_pytorch_model.safetensors; it has only diffusion_pytorch_model.fp16.safetensors)")


# What a model folder's identity reads ---------------------------------------------

def test_a_model_folder_is_identified_by_the_files_a_load_reads(tiny, recipe, tmp_path, capsys):
    folder = copy(tiny["folder"], tmp_path)
    assert run(recipe, folder) == 0
    (first,) = (tmp_path / "out").iterdir()
    huge = sparse(folder / "previews" / "old-version.safetensors")
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not even a pickle")  # safetensors win
    (folder / "README.md").write_text("a model card")
    strays = [huge, folder / "unet" / "diffusion_pytorch_model.bin", folder / "README.md"]
    with files_opened(*strays) as opened:
        assert run(recipe, folder) == 0
    second = next(p for p in (tmp_path / "out").iterdir() if p != first)
    assert identity(second, str(folder)) == identity(first, str(folder))
    opened = resolved(opened)
    assert (folder / "model_index.json").resolve() in opened  # the record works
    assert [p for p in strays if p.resolve() in opened] == []
    huge.chmod(0o600)


def test_a_sharded_folder_is_identified_by_every_shard_and_a_missing_one_is_named(tiny, recipe, tmp_path, capsys):
    from sdflow_diffusion.models.common import quiet

    folder = tmp_path / "sharded"
    with quiet():
        make_pipeline(tiny_components("sd1", seed=3), "StableDiffusionPipeline").save_pretrained(
            folder, max_shard_size="1MB")
    assert run(recipe, folder) == 0
    (png,) = (tmp_path / "out").iterdir()
    shard = folder / "unet" / "diffusion_pytorch_model-00002-of-00004.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit of one shard
    assert run(recipe, folder) == 0
    changed = next(p for p in (tmp_path / "out").iterdir() if p != png)
    assert identity(changed, str(folder)) != identity(png, str(folder))
    shard.unlink()
    assert run(recipe, folder) == 1
    assert diagnostic(capsys) == (
        f"{recipe}:5:1: E601 diffusers folder '{folder}' is incomplete: "
        "unet/diffusion_pytorch_model.safetensors.index.json lists shards it lacks: "
        "diffusion_pytorch_model-00002-of-00004.safetensors", "copy the whole folder again")


# Pickles, whatever the layout --------------------------------------------------

def test_a_folder_of_pickle_weights_is_refused_unless_allowed(tiny, recipe, tmp_path, capsys):
    folder = tiny["pickled"]
    pickles = [folder / "unet" / "diffusion_pytorch_model.bin", folder / "vae" / "diffusion_pytorch_model.bin",
               folder / "text_encoder" / "pytorch_model.bin"]
    with files_opened(*pickles) as opened:
        assert run(recipe, folder) == 1
    assert diagnostic(capsys) == (
        f"{recipe}:5:1: E601 diffusers folder '{folder}' has pickle weights (unet/diffusion_pytorch_model.bin, "
        "vae/diffusion_pytorch_model.bin, text_encoder/pytorch_model.bin), and loading a pickle can run any "
        "code hidden in it, so sdflow does not load one unless asked", PICKLE_HELP)
    assert not any(p.suffix == ".bin" for p in resolved(opened))
    assert run(recipe, folder, "--allow-pickle") == 0
    (png,) = (tmp_path / "out").iterdir()
    assert json.loads(read_png_text(png)["paths"]) == {str(folder): str(folder)}


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin", ".pkl"])
def test_a_single_pickle_file_is_refused_unless_allowed(suffix, recipe, tmp_path, capsys):
    pickle = tmp_path / f"model{suffix}"
    pickle.write_bytes(b"\x80\x04 whatever it holds is never unpickled")
    assert run(recipe, pickle) == 1
    assert diagnostic(capsys) == (
        f"{recipe}:5:1: E601 'model{suffix}' is a pickle checkpoint ({suffix}), and loading a pickle can run any "
        "code hidden in it, so sdflow does not load one unless asked",
        "use a .safetensors version of the model, or pass --allow-pickle if you trust this file (it is then "
        "loaded with torch.load(weights_only=True), tensors only)")


# Safetensors that are not -------------------------------------------------------

def header_length(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("what", ["empty", "random bytes", "truncated", "header not JSON", "a renamed pickle"])
def test_a_safetensors_file_that_is_not_one(what, tiny, recipe, tmp_path, capsys):
    import torch

    whole = tiny["file"].read_bytes()
    bad = tmp_path / "bad.safetensors"
    if what == "a renamed pickle":
        torch.save({"weight": torch.ones(2)}, bad)
    else:
        bad.write_bytes({"empty": b"", "random bytes": bytes(range(256)) * 4, "truncated": whole[:len(whole) // 2],
                         "header not JSON": (12).to_bytes(8, "little") + b"[not json]!!"}[what])
    size, length = bad.stat().st_size, header_length(tiny["file"])
    problem = {
        "empty": "0 bytes is too small for a header",
        "random bytes": f"header length {int.from_bytes(bytes(range(8)), 'little')} exceeds the file size",
        "truncated": f"its tensors need {len(whole) - 8 - length} bytes after the header, the file has "
                     f"{size - 8 - length}: it is cut short",
        "header not JSON": "its header is not JSON",
        "a renamed pickle": f"header length {header_length(bad)} exceeds the file size",
    }[what]
    assert run(recipe, bad) == 1
    message, help = diagnostic(capsys)
    prefix = f"{recipe}:5:1: E601 cannot read 'bad.safetensors' ({size} bytes): not a valid safetensors file"
    if what == "a renamed pickle":
        assert message == f"{prefix} ({problem}): it looks like a PyTorch pickle (torch.save)"
        assert help.startswith("find the .safetensors version of the model; a pickle can run any code")
    else:
        assert (message, help) == (f"{prefix} ({problem})", BROKEN_HELP)


def test_a_broken_weight_file_in_a_folder_is_named(tiny, recipe, tmp_path, capsys):
    folder = copy(tiny["folder"], tmp_path)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    whole, length = weights.read_bytes(), header_length(weights)
    weights.write_bytes(whole[:8 + length + 10])  # the header, and the first ten bytes of the tensors
    assert run(recipe, folder) == 1
    assert diagnostic(capsys) == (
        f"{recipe}:5:1: E601 cannot read '{weights}' ({8 + length + 10} bytes): not a valid safetensors file "
        f"(its tensors need {len(whole) - 8 - length} bytes after the header, the file has 10: it is cut short)",
        BROKEN_HELP)


# Broken JSON -------------------------------------------------------------------

@pytest.mark.parametrize("file, text, problem", [
    ("model_index.json", '{\n  "_class_name": "StableDiffusionPipeline"\n  "unet": ["diffusers", "UNet"]\n}\n',
     "{path}:3:3: not valid JSON: Expecting ',' delimiter"),
    ("unet/config.json", '{"in_channels": 4,\n "sample_size": }', "{path}:2:17: not valid JSON: Expecting value"),
    ("text_encoder/config.json", "[1, 2]", "'{path}': expected a JSON object ({{...}}), found an array"),
    ("scheduler/scheduler_config.json", "\xff\xfe", "'{path}': not valid JSON: not UTF-8 text (byte 0)"),
])
def test_a_broken_json_file_is_named_with_its_line_and_column(file, text, problem, tiny, recipe, tmp_path, capsys):
    folder = copy(tiny["folder"], tmp_path)
    (folder / file).write_bytes(text.encode("latin-1"))
    assert run(recipe, folder) == 1
    message, _ = diagnostic(capsys)
    assert message == f"{recipe}:5:1: E601 " + problem.format(path=folder / file)


def test_a_model_index_of_another_pipeline_says_what_it_lacks(tiny, recipe, tmp_path, capsys):
    folder = copy(tiny["folder"], tmp_path)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "T5EncoderModel"]}))
    assert run(recipe, folder) == 1
    assert diagnostic(capsys) == (
        f"{recipe}:5:1: E601 '{folder / 'model_index.json'}' (FluxPipeline) does not describe a Stable Diffusion "
        'model: it names no unet; \'text_encoder\' is ["transformers", "T5EncoderModel"], not '
        '["transformers", "CLIPTextModel"] or ["transformers", "CLIPTextModelWithProjection"]',
        "a Stable Diffusion folder's model_index.json names each component as [library, class]: unet, vae, "
        "text_encoder (and text_encoder_2 for SDXL)")


# The engine's own hashing -------------------------------------------------------

@needs_fifo
def test_the_engine_never_opens_a_fifo_to_hash_it(tmp_path):
    from sdflow.identity import file_sha256
    from sdflow.plugin import StageError

    fifo = tmp_path / "wildcards.txt"
    os.mkfifo(fifo)
    with files_opened(fifo), pytest.raises(StageError) as err:
        file_sha256(fifo)
    assert err.value.message == f"'{fifo}' is a FIFO (named pipe), not a file: reading it could block or never end"


def test_a_folders_identity_can_be_limited_to_the_files_that_count(tmp_path):
    from sdflow.identity import file_sha256

    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "unet" / "weights.safetensors").write_bytes(b"A" * 100)
    counted = ["model_index.json", "unet/weights.safetensors"]
    before = file_sha256(tmp_path, files=counted)
    stray = sparse(tmp_path / "stray.bin")
    with files_opened(stray):
        assert file_sha256(tmp_path, files=counted) == before
    (tmp_path / "unet" / "weights.safetensors").write_bytes(b"B" * 100)
    assert file_sha256(tmp_path, files=counted) != before
    stray.chmod(0o600)

