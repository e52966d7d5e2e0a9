"""How the loaded models run: ``--deterministic``, ``--compile``,
``--channels-last``, ``--vae-tiling`` and ``--lowvram``; and, on the CPU,
how the process allocates memory (:func:`keep_freed_memory`).

Each option is applied once, where the models are loaded
(:func:`apply_process_options` before, :func:`storage_device` while,
:func:`prepare_unet` and :func:`prepare_vae` after), except ``--lowvram``,
which also needs :func:`on_device` wherever a model runs: the text encoders
while a prompt is encoded, the U-Net (and its ControlNets) while sampling,
the VAE while it decodes or encodes.

``--compile`` uses ``nn.Module.compile``: the U-Net object stays the same
(a LoRA patches its weights by their names, FreeU sets its attributes), and
its calls go through ``torch.compile``.  The compiled graph reads the
weights as inputs, so a LoRA added in place before a run is seen by it;
FreeU's attributes are guarded, so switching it recompiles.  The first call
compiles (tens of seconds), later calls in the process reuse it.

Imports torch; imports nothing of the plugin.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import torch

from sdflow.plugin import StageError

CUBLAS_WORKSPACE = ":4096:8"  # what NVIDIA documents for deterministic cuBLAS
_switched_on = False  # whether sdflow switched deterministic algorithms on in this process
_allocator_tuned = False  # whether keep_freed_memory changed glibc's malloc in this process

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
KEEP_FREED = 1024 * 1024 * 1024  # freed memory the heap keeps at its top instead of returning it
TOP_PAD = 64 * 1024 * 1024  # how much more the heap grows each time it must


def apply_process_options(settings: Any, device: torch.device, warn: Callable[[str], None]) -> None:
    """What a run asks of the whole process, done before its first model
    loads: deterministic kernels (:func:`apply_determinism`) and, for a run
    on the CPU, an allocator that keeps freed memory (:func:`keep_freed_memory`)."""
    apply_determinism(settings, device, warn)
    if device.type == "cpu":
        keep_freed_memory()


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory torch frees on the CPU, for the
    next tensor, instead of giving it back to the system; returns whether
    it changed anything.

    torch's CPU allocator is plain ``malloc``.  With glibc's defaults a block
    larger than a few MiB (up to 32) gets pages of its own from ``mmap`` and
    gives them back when freed, and the heap returns what is freed at its
    top, so each U-Net pass's activations and the convolutions' work buffers
    come from fresh pages, which the kernel zeroes on their first touch: on
    full-size SD 1.5 at 256x256, 460,000 page faults per pass and a fifth of
    its time (benchmarks/README.md, "cpu_allocator.py").  Here every block
    comes from the heap (``M_MMAP_MAX`` 0), which keeps up to 1 GiB of
    freed memory at its top (``M_TRIM_THRESHOLD``) and grows 64 MiB at a
    time (``M_TOP_PAD``): a pass then faults a few hundred times.  The peak
    memory grows by a few percent (2% over paired runs), as a freed block
    is reused only by one that fits in it; memory freed in the middle of the heap (a model replaced by
    another) stays with the process until it exits.  The numbers are
    untouched: only where a tensor's memory comes from changes.

    Once per process, only on Linux with glibc, and not when the user tuned
    malloc already (any ``MALLOC_*`` variable, or ``GLIBC_TUNABLES`` naming
    malloc): theirs wins, and ``GLIBC_TUNABLES=glibc.malloc.perturb=0`` (a
    setting that changes nothing) keeps glibc's defaults."""
    global _allocator_tuned
    if _allocator_tuned:
        return False
    _allocator_tuned = True
    if not _running_glibc():
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") or any(
            name.startswith("MALLOC_") for name in os.environ):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return all(mallopt(option, value) == 1 for option, value in (
        (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_FREED), (M_TOP_PAD, TOP_PAD)))


def _running_glibc() -> bool:
    """Whether the C library this process runs on is glibc (asked of it, not
    read from the Python binary as ``platform.libc_ver`` does)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # a C library that does not know the name (macOS, Windows, musl)
        return False


def apply_determinism(settings: Any, device: torch.device, warn: Callable[[str], None]) -> None:
    """Deterministic kernels for the rest of the process, or not.

    On: ``torch.use_deterministic_algorithms(True)``, cuDNN's autotuner off,
    and on CUDA ``CUBLAS_WORKSPACE_CONFIG`` set (unless the user set it).
    cuBLAS reads that variable when it first runs, so setting it once CUDA
    is in use may come too late: ``warn`` says so.  Off: only what sdflow
    itself switched on earlier in the process is switched off again."""
    global _switched_on
    if not settings.deterministic:
        if _switched_on:
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.deterministic = False
            _switched_on = False
        return
    if device.type == "cuda" and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        if torch.cuda.is_initialized():
            warn(f"--deterministic set CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} after CUDA was already in use "
                 f"in this process, when cuBLAS may have chosen its workspace: set the variable before sdflow "
                 f"starts to be sure")
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    _switched_on = True


def storage_device(settings: Any, device: torch.device) -> torch.device:
    """Where the models are kept between runs: the CPU with ``--lowvram``,
    else the device they run on."""
    return torch.device("cpu") if settings.lowvram else device


def prepare_unet(unet: Any, settings: Any, device: torch.device) -> Any:
    """The U-Net in channels-last layout and compiled, as the settings ask."""
    if settings.channels_last:
        unet.to(memory_format=torch.channels_last)
    if settings.compile:
        problem = compiler_problem(device)
        if problem is not None:
            raise StageError(f"--compile cannot compile the U-Net here: {problem}", COMPILE_HELP)
        unet.compile()
    return unet


def prepare_vae(vae: Any, settings: Any) -> Any:
    """The VAE in channels-last layout and tiling, as the settings ask.
    diffusers' tiling decodes (and encodes) an image larger than the VAE's
    ``sample_size`` (512 px for SD 1.5, 1024 for SDXL) in overlapping tiles
    of that size, blended at the seams.  Each tile goes through the VAE's
    group norms alone, so the pixels change, most where a tile is flat (on
    sdflow-tiny, whose VAE knows only 64x64 pictures of one shape, badly:
    benchmarks/README.md)."""
    if settings.channels_last:
        vae.to(memory_format=torch.channels_last)
    if settings.vae_tiling:
        vae.enable_tiling()
    return vae


COMPILE_HELP = "run without --compile (the images are the same to the last bits), or install what it names"


def compiler_problem(device: torch.device) -> str | None:
    """Why torch.compile's inductor cannot build kernels for ``device``, or
    None: on CUDA it needs triton, on the CPU a C++ compiler ($CXX, else g++)."""
    if device.type == "cuda":
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return "torch.compile on CUDA needs triton, which is not installed (pip install triton)"
        return None
    if device.type != "cpu":
        return None
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # inductor's own search: $CXX, then g++ (clang++ on macOS)
        return f"no working C++ compiler was found for inductor (it tried {os.environ.get('CXX', 'g++')}; set CXX)"
    return None


@contextmanager
def compile_errors() -> Iterator[None]:
    """A failure of torch.compile while it compiles the U-Net (its first
    call) as a :class:`StageError`, not a page of inductor's internals."""
    try:
        yield
    except Exception as err:
        if not type(err).__module__.startswith(("torch._dynamo", "torch._inductor")):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StageError(f"--compile failed to compile the U-Net: {first[:300]}", COMPILE_HELP) from None


@contextmanager
def on_device(device: torch.device, *modules: Any) -> Iterator[None]:
    """Run the ``with`` block with ``modules`` on ``device``, each moved back
    where it was kept afterwards (``--lowvram``: the CPU); a module already
    there is left alone, so without ``--lowvram`` this does nothing."""
    moved = []
    try:
        for module in modules:
            home = next(module.parameters()).device
            if home.type != device.type:
                module.to(device)
                moved.append((module, home))
        yield
    finally:
        for module, home in reversed(moved):
            module.to(home)
