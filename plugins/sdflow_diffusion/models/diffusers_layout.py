"""A diffusers folder, told from any other folder before its weights are read.

A folder named as a checkpoint is a model only if its ``model_index.json``
names a Stable Diffusion pipeline and every component a load needs (the
U-Net, the VAE, the kind's text encoders) has its subfolder, its config and
its weights.  :func:`inspect_folder` checks that with a few small reads
(JSON files, safetensors headers) and lists the files a load will read and
no others: a model's identity is the hash of those, so a stray file beside
them, however large, is never read.  A component whose only weights are a
pickle (``.bin``, which can run code when loaded) is refused unless
``--allow-pickle``; a component that has safetensors too loads them, and
its pickle is never opened.

Torch-free: :mod:`.load` calls it when a run identifies its checkpoint, and
again before loading.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sdflow.plugin import StageError
from sdflow_diffusion.models.architectures import kind_of_folder
from sdflow_diffusion.models.common import CHECKPOINT_SUFFIXES
from sdflow_diffusion.models.files import read_json, regular_file, safetensors_header

# Each library's weight files, safetensors then pickles, in the order it looks for them.
WEIGHTS = {
    "diffusers": (("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors"),
                  ("diffusion_pytorch_model.bin.index.json", "diffusion_pytorch_model.bin")),
    "transformers": (("model.safetensors", "model.safetensors.index.json"),
                     ("pytorch_model.bin", "pytorch_model.bin.index.json")),
}
TEXT_ENCODER_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")
SMALL_JSON = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
PICKLE_HELP = ("use safetensors weights (diffusers' save_pretrained(safe_serialization=True) writes them), "
               "or pass --allow-pickle if you trust these files (they are then loaded with "
               "weights_only=True, tensors only)")


@dataclass(frozen=True, eq=False)
class DiffusersFolder(os.PathLike):
    """A checked diffusers folder.

    An ``os.PathLike`` of the folder; ``files`` are the files a load reads,
    relative to it (what ``ctx.identify_file`` is to hash, and nothing else).  ``safetensors`` says, for each
    component, whether its weights are safetensors (else an allowed pickle);
    ``tokenizers`` are the tokenizer subfolders with files of their own.
    """

    path: Path
    kind: str
    index: dict[str, Any]
    safetensors: dict[str, bool]
    tokenizers: frozenset[str]
    files: tuple[str, ...]

    def __fspath__(self) -> str:
        return os.fspath(self.path)


def inspect_folder(folder: Path, allow_pickle: bool = False) -> DiffusersFolder:
    """The diffusers model in ``folder``, checked; a :class:`StageError`
    that names what is missing or wrong when it is not one."""
    folder = Path(folder)
    index_file = folder / "model_index.json"
    if not os.path.lexists(index_file):
        raise _not_a_model(folder)
    index = read_json(index_file)
    encoders = _components_of(index, index_file)
    names = ("unet", "vae", *encoders)
    _check_subfolders(folder, names)
    configs = {name: read_json(folder / name / "config.json") for name in names}
    kind = kind_of_folder(set(encoders), lambda subfolder: configs.get(subfolder, {}).get("hidden_act"))
    if kind is None:
        raise StageError(f"'{folder}' is not a Stable Diffusion model sdflow knows: its text encoders are "
                         f"{sorted(encoders)}",
                         help="load_checkpoint reads SD 1.x, SD 2.x and SDXL diffusers folders")
    files = ["model_index.json", *(f"{name}/config.json" for name in names)]
    if os.path.lexists(folder / "scheduler" / "scheduler_config.json"):
        read_json(folder / "scheduler" / "scheduler_config.json")
        files.append("scheduler/scheduler_config.json")
    safetensors, weights = _weights(folder, names, configs, allow_pickle)
    tokenizer_files = _tokenizer_files(folder, encoders)
    tokenizers = frozenset(file.split("/")[0] for file in tokenizer_files)
    return DiffusersFolder(folder, kind, index, safetensors, tokenizers,
                           tuple(sorted({*files, *weights, *tokenizer_files})))


def _not_a_model(folder: Path) -> StageError:
    try:
        inside = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                        if (p.is_dir() and (p / "model_index.json").is_file())
                        or p.suffix.lower() in CHECKPOINT_SUFFIXES)
    except OSError:
        inside = []
    listed = ", ".join(inside[:5]) + (", ..." if len(inside) > 5 else "")
    name = f"one of the models in it ({listed})" if inside else "a .safetensors file"
    return StageError(f"'{folder}' is a folder but not a diffusers model: it has no model_index.json",
                      help=f"name {name}, or a folder saved by diffusers' save_pretrained")


def _components_of(index: dict[str, Any], index_file: Path) -> tuple[str, ...]:
    """The text encoders ``model_index.json`` names, once it is checked to
    name a U-Net, a VAE and CLIP text encoders as ``[library, class]``."""
    problems = []
    for name in ("unet", "vae"):
        if name not in index or index[name] in (None, [None, None]):
            problems.append(f"it names no {name}")
        elif not _is_entry(index[name]):
            problems.append(f"'{name}' is {json.dumps(index[name])[:60]}, not [library, class]")
    encoders = tuple(sorted(name for name, entry in index.items() if name.startswith("text_encoder")
                            and entry not in (None, [None, None])))
    for name in encoders:
        entry = index[name]
        if not _is_entry(entry) or entry[1] not in TEXT_ENCODER_CLASSES:
            problems.append(f"'{name}' is {json.dumps(entry)[:60]}, not "
                            f"{' or '.join(json.dumps(['transformers', c]) for c in TEXT_ENCODER_CLASSES)}")
    if not encoders:
        problems.append("it names no text encoder")
    if problems:
        pipeline = index.get("_class_name")
        raise StageError(f"'{index_file}'{f' ({pipeline})' if isinstance(pipeline, str) else ''} does not "
                         f"describe a Stable Diffusion model: {'; '.join(problems)}",
                         help="a Stable Diffusion folder's model_index.json names each component as "
                              "[library, class]: unet, vae, text_encoder (and text_encoder_2 for SDXL)")
    return encoders


def _is_entry(entry: Any) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)


def _check_subfolders(folder: Path, names: tuple[str, ...]) -> None:
    missing = [f"{name}/" if not (folder / name).is_dir() else f"{name}/config.json" for name in names
               if not os.path.lexists(folder / name / "config.json")]
    if missing:
        raise StageError(f"diffusers folder '{folder}' is incomplete: its model_index.json names "
                         f"{', '.join(names)}, and it lacks {', '.join(missing)}",
                         help="copy the whole folder again (diffusers' save_pretrained writes a subfolder "
                              "per component, each with its config.json and weights)")


def _tokenizer_files(folder: Path, encoders: tuple[str, ...]) -> list[str]:
    """The files of the tokenizers the folder has (the shipped one stands
    in for any it lacks), each a regular file, the small JSON ones valid."""
    files = []
    for encoder in encoders:
        tokenizer = encoder.replace("text_encoder", "tokenizer")
        for name in TOKENIZER_FILES:
            path = folder / tokenizer / name
            if os.path.lexists(path):
                read_json(path) if name in SMALL_JSON else regular_file(path)
                files.append(f"{tokenizer}/{name}")
    return files


def _weights(folder: Path, names: tuple[str, ...], configs: dict[str, dict[str, Any]],
             allow_pickle: bool) -> tuple[dict[str, bool], list[str]]:
    """For each component, whether it loads safetensors; and the weight
    files a load reads (safetensors headers checked)."""
    safetensors: dict[str, bool] = {}
    files: list[str] = []
    missing, pickles = [], []
    for name in names:
        safe, pickle = _candidates(folder, name, configs[name])
        found = next(((True, f) for f in safe if os.path.lexists(folder / name / f)), None) or \
            next(((False, f) for f in pickle if os.path.lexists(folder / name / f)), None)
        if found is None:
            missing.append(_no_weights(folder / name, safe))
        elif not found[0] and not allow_pickle:
            pickles.append(f"{name}/{found[1]}")
        else:
            safetensors[name] = found[0]
            files += _weight_files(folder, name, found[1], found[0])
    if missing:
        raise StageError(f"diffusers folder '{folder}' is incomplete: {'; '.join(missing)}",
                         help="copy the whole folder again, or save it again with diffusers' save_pretrained "
                              "(sdflow loads a folder's weights without a variant such as .fp16)")
    if pickles:
        raise StageError(f"diffusers folder '{folder}' has pickle weights ({', '.join(pickles)}), and loading a "
                         "pickle can run any code hidden in it, so sdflow does not load one unless asked",
                         help=PICKLE_HELP)
    return safetensors, files


def _candidates(folder: Path, name: str, config: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The safetensors and the pickle files component ``name`` may load,
    in the order its library looks for them."""
    library = "diffusers" if name in ("unet", "vae") else "transformers"
    explicit = config.get("transformers_weights") if library == "transformers" else None
    if explicit is None:
        return WEIGHTS[library]
    if not (_inside(explicit) and explicit.endswith((".safetensors", ".safetensors.index.json"))):
        raise StageError(f"'{folder / name / 'config.json'}' names weights {json.dumps(explicit)[:60]} that are "
                         "not a .safetensors file beside them", help="copy the whole folder again")
    return (explicit,), ()  # transformers loads the file its config names, safetensors only


def _no_weights(subfolder: Path, expected: tuple[str, ...]) -> str:
    expected = tuple(f for f in expected if not f.endswith(".index.json")) or expected  # the usual name
    others = sorted(p.name for p in subfolder.iterdir() if p.suffix.lower() in CHECKPOINT_SUFFIXES)
    found = f"; it has only {', '.join(others)}" if others else ""
    return f"{subfolder.name}/ has no weights ({' or '.join(expected)}{found})"


def _weight_files(folder: Path, name: str, weights: str, safe: bool) -> list[str]:
    """``name/weights``, and the shards it lists if it is an index, each checked."""
    shards = _shards(folder / name / weights) if weights.endswith(".index.json") else [weights]
    absent = [shard for shard in shards if not os.path.lexists(folder / name / shard)]
    if absent:
        raise StageError(f"diffusers folder '{folder}' is incomplete: {name}/{weights} lists shards it lacks: "
                         f"{', '.join(absent)}", help="copy the whole folder again")
    for shard in shards:
        path = folder / name / shard
        safetensors_header(path, str(path)) if safe else regular_file(path)
    return [f"{name}/{file}" for file in dict.fromkeys([weights, *shards])]


def _shards(index_file: Path) -> list[str]:
    weight_map = read_json(index_file).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(_inside(v) for v in weight_map.values()):
        raise StageError(f"'{index_file}': its weight_map is not a map of tensor names to shard files "
                         "beside it", help="copy the whole folder again")
    return sorted(set(weight_map.values()))


def _inside(name: Any) -> bool:
    """Whether a shard's name stays in its component's folder."""
    return isinstance(name, str) and bool(name) and not PurePosixPath(name).is_absolute() \
        and ".." not in PurePosixPath(name).parts and "\\" not in name
