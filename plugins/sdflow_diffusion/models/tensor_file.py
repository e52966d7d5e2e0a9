"""The tensors of a checkpoint file, read one at a time into their place.

A model loads with no second copy of its weights: each tensor goes from the
file straight to the memory it will keep, in the run's dtype, on the run's
device, and nothing else of the file stays in memory.

* A tensor already in the run's dtype, bound for the CPU, is not copied at
  all: the parameter is a view of the file, mapped copy-on-write (its pages
  are the page cache's own, read when first used; writing to one, as a
  weight patch might, copies that page only).  This is what reading an fp32
  file for an fp32 run, or a bf16 one for bf16, costs: nothing at load time.
  As with diffusers' and ComfyUI's own loading, the file must then not be
  rewritten in place while the model is in use (replacing it, as a download
  or a copy to a new name and a rename do, is safe).  So is an fp16 file's
  U-Net for an fp32 run on the CPU, whose weights stay as the file stores
  them (:mod:`.storage`, ``--weight-dtype file``).
* Any other is read (``readinto``) into one staging buffer, the size of the
  file's largest tensor, allocated once (pinned for CUDA), and copied from
  there into a fresh tensor of the run's dtype on the run's device; ``copy_``
  casts as ``.to(dtype)`` does, bit for bit.  On CUDA that is where each
  tensor moves to the GPU, as it is read: the host holds one tensor at a
  time, never the model.

A tensor to convert is read, not mapped: the mapped pages a conversion
touches would count in the process's resident memory until the mapping goes
(a 2.1 GB fp16 SD 1.5 file converted through safetensors' ``safe_open`` raised
a CPU load's peak from 4.3 to 6.3 GiB).  Tensors are read in the order they
lie in the file (:meth:`TensorFile.position`), so that a file not yet in the
page cache is read front to back.  The header was checked before
(:func:`.files.safetensors_header`: every tensor inside the file); each read
is checked against its shape and dtype.
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path
from typing import Any

from sdflow.plugin import StageError
from sdflow_diffusion.models.files import BROKEN_HELP

# safetensors' dtype names -> torch's, by attribute name (torch is imported where a tensor is read)
DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
          "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
          "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


class TensorFile:
    """A ``.safetensors`` file whose header has been checked, read tensor by
    tensor (:meth:`tensor`); ``shapes`` maps each key to its shape.  A
    context manager: the file stays open between reads."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = Path(path)
        self.name = self.path.name
        self._entries = {key: entry for key, entry in header.items() if key != "__metadata__"}
        self.shapes = {key: tuple(entry["shape"]) for key, entry in self._entries.items()}
        self._handle = self._start = self._staging = self._mapped = None

    def __enter__(self) -> TensorFile:
        self._handle = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed in __exit__)
        self._start = 8 + int.from_bytes(self._handle.read(8), "little")
        return self

    def __exit__(self, *exc) -> None:
        # The mapping stays while a parameter views it; the tensors keep it alive.
        self._handle.close()
        self._handle = self._staging = self._mapped = None

    def position(self, key: str) -> int:
        """Where the tensor ``key`` starts in the file."""
        return self._entries[key]["data_offsets"][0]

    def stored_dtype(self, key: str) -> Any:
        """The torch dtype the file stores ``key`` in (None: one sdflow does not read)."""
        import torch

        return getattr(torch, DTYPES.get(self._entries[key]["dtype"], ""), None)

    def tensor(self, key: str, dtype: Any, device: Any, rows: tuple[int, int] | None = None) -> Any:
        """The tensor ``key`` (only its ``rows``, a range of its first
        dimension, when given) in ``dtype`` on ``device``: a view of the
        file's mapping when it is stored so, for the CPU, else a new tensor."""
        import torch

        entry = self._entries[key]
        stored = self.stored_dtype(key)
        shape = list(entry["shape"])
        start, end = entry["data_offsets"]
        if stored is None:
            raise StageError(f"cannot read '{self.name}': tensor '{key}' has dtype {entry['dtype']}, which sdflow "
                             f"does not read (it reads {', '.join(DTYPES)})",
                             help="convert the file to fp16 or fp32 with the tool that made it")
        if (end - start) != math.prod(shape) * stored.itemsize:
            raise StageError(f"cannot read '{self.name}': tensor '{key}' has dtype {entry['dtype']} and shape "
                             f"{shape}, which do not fit its {end - start} bytes", help=BROKEN_HELP)
        if rows is not None:
            if not 0 <= rows[0] <= rows[1] <= shape[0]:
                raise ValueError(f"rows {rows} of '{key}', which has {shape[0]}")
            row = math.prod(shape[1:]) * stored.itemsize
            start, end, shape[0] = start + rows[0] * row, start + rows[1] * row, rows[1] - rows[0]
        device = torch.device(device)
        if stored == dtype and device.type == "cpu":
            if end > start and (self._start + start) % stored.itemsize == 0:
                if self._mapped is None:
                    self._mapped = mmap.mmap(self._handle.fileno(), 0, access=mmap.ACCESS_COPY)
                if self._start + end > len(self._mapped):
                    raise self._ended_early()
                return torch.frombuffer(self._mapped, dtype=stored, count=(end - start) // stored.itemsize,
                                        offset=self._start + start).view(shape)
            data = torch.empty(end - start, dtype=torch.uint8)  # empty, or not aligned for a view
            self._read(start, data)
            return data.view(stored).view(shape)
        if self._staging is None:
            largest = max(e["data_offsets"][1] - e["data_offsets"][0] for e in self._entries.values())
            self._staging = torch.empty(largest, dtype=torch.uint8, pin_memory=device.type == "cuda")
        staged = self._staging[:end - start]
        self._read(start, staged)
        return torch.empty(shape, dtype=dtype, device=device).copy_(staged.view(stored).view(shape))

    def _read(self, offset: int, into: Any) -> None:
        self._handle.seek(self._start + offset)
        view = memoryview(into.numpy()).cast("B")
        done = 0
        while done < len(view):  # readinto may return less than asked (a pipe, a network file system)
            count = self._handle.readinto(view[done:])
            if not count:
                raise self._ended_early()
            done += count

    def _ended_early(self) -> StageError:
        return StageError(f"cannot read '{self.name}': it ended early (was it cut short while sdflow read it?)",
                          help=BROKEN_HELP)


class TensorDict:
    """Tensors already in memory (a pickle's state dict, read from the file
    ``name``) behind the same :meth:`tensor` as :class:`TensorFile`."""

    def __init__(self, state: dict[str, Any], name: str):
        self._state, self.name = state, name
        self.shapes = {key: tuple(value.shape) for key, value in state.items()}

    def __enter__(self) -> TensorDict:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def position(self, key: str) -> int:
        return 0

    def stored_dtype(self, key: str) -> Any:
        return self._state[key].dtype

    def tensor(self, key: str, dtype: Any, device: Any, rows: tuple[int, int] | None = None) -> Any:
        value = self._state[key]
        if rows is not None:
            value = value[rows[0]:rows[1]]
        return value.to(device=device, dtype=dtype)
