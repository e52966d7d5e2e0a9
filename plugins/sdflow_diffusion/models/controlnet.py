"""ControlNet: a copy of a U-Net's down half that turns a hint image into residuals for the U-Net.

Three layouts load, each checked from its header before anything is read:

* a diffusers folder (``config.json`` and ``diffusion_pytorch_model.safetensors``),
  built from its own config;
* a single ``.safetensors`` in diffusers' key layout (``controlnet_cond_embedding.*``,
  ``controlnet_down_blocks.*``), as most SDXL ControlNets ship;
* a single ``.safetensors`` in the original layout (lllyasviel's
  ``control_v11p_sd15_canny.safetensors``: ``input_blocks.*``, ``zero_convs.*``,
  ``input_hint_block.*``, ``middle_block_out.*``, with or without ``control_model.``),
  renamed into diffusers' names with the U-Net's table (:mod:`.ldm_layout`).

A single file says no config: its family is told by a few shapes (first
convolution, cross-attention width, SDXL's added embedding), the config is
``ControlNetModel.from_unet`` of that family's shipped U-Net config, with
the hint encoder's widths and the transformer depths read off the file, and
every tensor must then have the shape that config gives.

:class:`Control` is what apply_controlnet puts on a conditioning: the
denoiser asks it for residuals at every U-Net call (ComfyUI's
``ControlNet.get_control``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdflow.plugin import StageError
from sdflow_diffusion.handles import Family
from sdflow_diffusion.models.files import component_files, header_shapes, read_json, safetensors_header

WEIGHTS = "diffusion_pytorch_model.safetensors"
HELP = ("a ControlNet is a .safetensors file (the original layout, as control_v11p_sd15_canny.safetensors, "
        f"or diffusers' keys) or a diffusers ControlNet folder (config.json and {WEIGHTS})")
_PREFIX = "control_model."
_HINT = re.compile(r"^input_hint_block\.(\d+)\.(weight|bias)$")
_DEPTH = re.compile(r"^down_blocks\.(\d+)\.attentions\.0\.transformer_blocks\.(\d+)\.")


@dataclass(frozen=True)
class ControlNetHandle:
    """CONTROL_NET: a loaded ControlNet, its family and the name the recipe gave."""

    net: Any  # diffusers.ControlNetModel
    family: Family
    name: str
    device: Any
    dtype: Any


@dataclass(frozen=True)
class ControlNetFile:
    """A ControlNet file or folder checked from its header: where its
    weights are, its own config (None for a single file), its key layout
    ("original" or "diffusers") and its tensors' shapes in diffusers' names."""

    path: Path
    weights: Path
    config: dict[str, Any] | None
    layout: str
    shapes: dict[str, tuple[int, ...]]
    family: str

    @property
    def files(self) -> list[str] | None:
        """The files a load reads, relative to a folder (None for a single file)."""
        return None if self.config is None else ["config.json", WEIGHTS]


def inspect_controlnet(path: Path, shown: str) -> ControlNetFile:
    """The ControlNet at ``path`` checked without reading its weights: its
    layout and family; anything else is a :class:`StageError` naming ``shown``."""
    path = Path(path)
    config, weights = component_files(path, "ControlNet", shown, WEIGHTS, HELP)
    shapes, _ = header_shapes(safetensors_header(weights, shown))
    shapes = {key.removeprefix(_PREFIX): shape for key, shape in shapes.items()}
    if "controlnet_cond_embedding.conv_in.weight" in shapes:
        layout = "diffusers"
    elif "input_hint_block.0.weight" in shapes and "zero_convs.0.0.weight" in shapes:
        layout = "original"
    else:
        raise StageError(f"'{shown}' is not a ControlNet: it has no hint encoder (controlnet_cond_embedding.* "
                         f"or input_hint_block.*); its keys: {', '.join(list(shapes)[:3])}, ...", help=HELP)
    family = _family(shapes, shown)
    if layout == "original":
        shapes = {key: value.shape for key, value in
                  to_diffusers(_meta(shapes), _unet_config(family)).items()}
    return ControlNetFile(path, weights, config, layout, shapes, family)


def _family(shapes: dict[str, tuple[int, ...]], shown: str) -> str:
    """The shipped family whose U-Net the ControlNet copies, told by its
    first convolution, cross-attention width and added embedding (SDXL),
    which have the same names' endings in both layouts."""
    from sdflow_diffusion.models.families import family_info, family_names

    conv = shapes.get("conv_in.weight") or shapes.get("input_blocks.0.0.weight")
    cross = next((shape[1] for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")), None)
    added = shapes.get("add_embedding.linear_1.weight") or shapes.get("label_emb.0.0.weight")
    found = (conv and conv[0], cross, added and added[1])
    fits = [name for name in family_names() if not family_info(name).get("variant")
            and _signature(_unet_config(name)) == found]
    if not fits:
        added = f", an added embedding of {found[2]}" if found[2] else ""
        raise StageError(f"ControlNet '{shown}' is of no family sdflow knows: {found[0]} channels, "
                         f"prompts of {found[1]} features{added}",
                         help="sdflow reads SD 1.x, SD 2.x and SDXL ControlNets")
    return sorted(fits, key=lambda n: (not family_info(n).get("preferred"), n))[0]


def _signature(unet: dict[str, Any]) -> tuple:
    added = unet.get("projection_class_embeddings_input_dim") if unet.get("addition_embed_type") else None
    return unet["block_out_channels"][0], unet["cross_attention_dim"], added


def _unet_config(family: str) -> dict[str, Any]:
    from sdflow_diffusion.models.families import family_dir

    return read_json(family_dir(family) / "unet" / "config.json")


def _meta(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    import torch

    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def to_diffusers(state: dict[str, Any], unet_config: dict[str, Any]) -> dict[str, Any]:
    """An original-layout ControlNet state dict in diffusers' names: the
    U-Net part renamed as the U-Net's own (the inverse of
    :func:`~sdflow_diffusion.models.ldm_layout.unet_to_original`), the zero
    convolutions, the middle output and the hint encoder (convolutions at
    even indices: the first, the blocks, the last) by their own rule."""
    from sdflow_diffusion.models.infer import unet_from_original
    from sdflow_diffusion.models.ldm_layout import UNET

    result, unet = {}, {}
    hints = sorted({int(m.group(1)) for key in state if (m := _HINT.match(key))})
    names = {index: f"blocks.{n - 1}" for n, index in enumerate(hints)}
    names.update({hints[0]: "conv_in", hints[-1]: "conv_out"})
    for key, value in state.items():
        if key.startswith("zero_convs."):
            index, _, rest = key.removeprefix("zero_convs.").partition(".0.")
            result[f"controlnet_down_blocks.{index}.{rest}"] = value
        elif key.startswith("middle_block_out.0."):
            result["controlnet_mid_block." + key.removeprefix("middle_block_out.0.")] = value
        elif m := _HINT.match(key):
            result[f"controlnet_cond_embedding.{names[int(m.group(1))]}.{m.group(2)}"] = value
        else:
            unet[UNET + key] = value
    try:
        result.update(unet_from_original(unet, unet_config))
    except KeyError as err:
        raise StageError(f"a ControlNet tensor has no place in the U-Net: {err}", help=HELP) from None
    return result


def controlnet_config(checked: ControlNetFile) -> dict[str, Any]:
    """The ControlNetModel config of ``checked``: a folder's own, else the
    family U-Net's ControlNet with the hint encoder and the transformer
    depths read off the file's shapes (SDXL's "mid" and "small"
    ControlNets are shallower than their U-Net)."""
    import diffusers
    import torch

    if checked.config is not None:
        return checked.config
    shapes, unet_config = checked.shapes, _unet_config(checked.family)
    embedding = [shapes["controlnet_cond_embedding.conv_in.weight"][0]]
    embedding += [shapes[f"controlnet_cond_embedding.blocks.{i}.weight"][0]
                  for i in range(1, 64, 2) if f"controlnet_cond_embedding.blocks.{i}.weight" in shapes]
    depth = {}
    for key in shapes:
        if m := _DEPTH.match(key):
            depth[int(m.group(1))] = max(depth.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    levels = len(unet_config["block_out_channels"])
    given = unet_config.get("transformer_layers_per_block", 1)
    given = given if isinstance(given, list) else [given] * levels
    found = [depth.get(i, given[i]) for i in range(levels)]
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config({**unet_config, "transformer_layers_per_block": found})
        net = diffusers.ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=tuple(embedding), load_weights_from_unet=False,
            conditioning_channels=shapes["controlnet_cond_embedding.conv_in.weight"][1])
    return dict(net.config)


def load_controlnet(checked: ControlNetFile, shown: str, settings) -> ControlNetHandle:
    """The ControlNet ``checked`` on the run's device, in its dtype; every
    tensor must have the shape its config gives, and none may be missing."""
    import diffusers
    import torch
    from safetensors.torch import load_file

    from sdflow_diffusion.models.common import quiet
    from sdflow_diffusion.models.device import resolve_device
    from sdflow_diffusion.models.families import family_handle
    from sdflow_diffusion.models.run_options import storage_device
    from sdflow_diffusion.models.storage import compute_in, keeps_file_dtype, kept_dtype

    device, dtype = resolve_device(settings)
    config = controlnet_config(checked)
    with quiet(), torch.device("meta"):
        net = diffusers.ControlNetModel.from_config(config)
    expected = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    if checked.shapes != expected:
        wrong = [f"{k} is {list(checked.shapes[k]) if k in checked.shapes else 'missing'}, expected {list(v)}"
                 for k, v in expected.items() if checked.shapes.get(k) != v]
        wrong += [f"{k} is not expected" for k in checked.shapes if k not in expected]
        count = "1 tensor differs" if len(wrong) == 1 else f"{len(wrong)} tensors differ"
        raise StageError(f"ControlNet '{shown}' does not fit family {checked.family}'s ControlNet: "
                         f"{count}, e.g. {'; '.join(wrong[:3])}", help=HELP)
    state = {key.removeprefix(_PREFIX): value for key, value in load_file(str(checked.weights)).items()}
    if checked.layout == "original":
        state = to_diffusers(state, _unet_config(checked.family))
    # As a checkpoint's U-Net: an fp16 file's weights stay fp16 in an fp32 run on the CPU (--weight-dtype)
    narrow = {name for name, _ in net.named_parameters()} if keeps_file_dtype(settings, device) else set()
    net.load_state_dict({k: v.to(kept_dtype(v.dtype, dtype) if k in narrow else dtype) for k, v in state.items()},
                        strict=True, assign=True)
    with quiet():  # kept on the CPU with --lowvram: the sampler moves it while it runs
        if narrow:
            net = compute_in(net, dtype).to(device=storage_device(settings, device)).eval()
        else:
            net = net.to(device=storage_device(settings, device), dtype=dtype).eval()
    return ControlNetHandle(net, family_handle(checked.family), shown, device, dtype)


class Control:
    """One apply_controlnet on a conditioning: a ControlNet, its hint image
    ([B, H, W, 3] in [0, 1]), a strength and a share of the schedule.

    :meth:`residuals` is ComfyUI's ``ControlNet.get_control``: nothing
    outside the noise levels of ``start``..``end`` (counted as the
    conditioning's timestep range is, on the sampled model's noise table);
    the hint resized
    to the latent's size in pixels as ComfyUI's ``common_upscale``
    (nearest-exact, the middle cut out when the aspect ratio differs) and
    fed in [0, 1]; every residual times the strength."""

    def __init__(self, handle: ControlNetHandle, hint: Any, strength: float, start: float, end: float) -> None:
        self.handle, self.hint, self.strength = handle, hint, strength
        self.start, self.end = start, end
        self._hints: dict[tuple, Any] = {}

    def _range(self, table) -> tuple[float, float]:
        """The sigmas of start and end on ``table`` (the sampled model's;
        the ControlNet family's when the call has none)."""
        from sdflow_diffusion.numerics.denoiser import percent_to_sigma
        from sdflow_diffusion.numerics.schedules import NoiseTable

        table = table or NoiseTable.from_scheduler_config(self.handle.family.scheduler_config)
        return percent_to_sigma(table, self.start), percent_to_sigma(table, self.end)

    def residuals(self, call):
        """The ControlNet's (down residuals, mid residual) for the U-Net
        call ``call``, or None where the schedule leaves it out."""
        import torch

        sigma = float(call.sigma)
        sigma_start, sigma_end = self._range(call.table)
        if sigma > sigma_start or sigma < sigma_end:
            return None
        check_width(self.handle, call.context.shape[-1], "the model being sampled takes")
        net = self.handle.net
        with torch.no_grad():
            return net(call.sample.to(self.handle.dtype), call.timestep,
                       encoder_hidden_states=call.context.to(self.handle.dtype),
                       controlnet_cond=self._hint_for(call), conditioning_scale=self.strength,
                       added_cond_kwargs=call.added, return_dict=False)

    def _hint_for(self, call) -> Any:
        """The hint at the call's size and batch (cached per size)."""
        from sdflow_diffusion.numerics.pixels import scale

        batch, _, height, width = call.sample.shape
        chunks = max(1, len(call.areas))
        key = (batch, chunks, height, width)
        if key not in self._hints:
            factor = 2 ** (len(self.handle.net.config.conditioning_embedding_out_channels) - 1)
            pixels = scale(self.hint, width * factor, height * factor, "nearest", "center").movedim(-1, 1)
            pixels = _broadcast(pixels, batch, chunks)
            self._hints[key] = pixels.to(self.handle.device, self.handle.dtype)
        return self._hints[key]


def _broadcast(hint: Any, batch: int, chunks: int) -> Any:
    """The hint for a call of ``batch`` inputs made of ``chunks`` runs
    (ComfyUI's ``broadcast_image_to``): hint images repeated (or cut) to
    one run's batch, then the whole repeated for each run."""
    import torch

    if hint.shape[0] == 1:
        return hint.expand(batch, -1, -1, -1)
    per_run = batch // chunks
    hint = hint[:per_run]
    if per_run > hint.shape[0]:
        hint = torch.cat([hint] * (per_run // hint.shape[0]) + [hint[:per_run % hint.shape[0]]])
    return hint if hint.shape[0] == batch else torch.cat([hint] * chunks)


def check_width(handle: ControlNetHandle, width: int, what: str) -> None:
    """A :class:`StageError` unless prompts of ``width`` features are what
    the ControlNet's family takes (an SDXL ControlNet on an SD 1.5 model)."""
    from sdflow_diffusion.models.families import family_info, family_names

    expected = handle.net.config.cross_attention_dim
    if width == expected:
        return
    others = sorted({family_info(n)["description"] for n in family_names() if not family_info(n).get("variant")
                     and _unet_config(n)["cross_attention_dim"] == width})
    raise StageError(f"ControlNet '{handle.name}' is a {handle.family.description} ControlNet ({handle.family.name}, "
                     f"prompts of {expected} features), but {what} prompts of {width} features"
                     + (f" ({', '.join(others)})" if others else ""),
                     help="use a ControlNet made for the checkpoint's family")
