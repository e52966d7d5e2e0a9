"""Noise levels as ComfyUI computes them: a model's noise table and the named schedules.

A discrete-time Stable Diffusion model was trained on 1000 noise levels made
from its betas.  :class:`NoiseTable` holds them as sigmas (the standard
deviation of the noise relative to the signal, sigma = sqrt((1 - a) / a) for
the cumulative product a of 1 - beta), computed in float64 and kept in
float32, with the zero-terminal-SNR rescaling of Lin et al. (2023) where a
model was trained with it.  A schedule picks ``steps`` of those levels (and a
final 0) to sample at.

The schedules are ComfyUI's, by its names, and give its numbers: for the
three families, every schedule and step count, tests/test_schedules.py
compares them with values taken from a ComfyUI run (tests/data).  The
formulas are the published ones (Karras et al. 2022 for ``karras``; the
beta-distribution spacing of Lee et al. 2024 for ``beta``; the KL-optimal
one of AUTOMATIC1111's PR 15608); the code is sdflow's own.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sdflow.plugin import StageError

# The last level of a zero-terminal-SNR table, where pure noise would be
# infinite sigma: ComfyUI keeps it finite with this alpha-bar.
ZSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


class NoiseTable:
    """A model's training noise levels, low to high, and the map between a
    sigma and the timestep the U-Net is given for it."""

    def __init__(self, sigmas: torch.Tensor) -> None:
        sigmas = sigmas.to(torch.float64)
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()

    @classmethod
    def from_betas(cls, beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000,
                   schedule: str = "scaled_linear", zero_snr: bool = False) -> "NoiseTable":
        """The table of a model trained with these betas (diffusers' names:
        ``scaled_linear`` is linear in sqrt(beta), which SD 1.x, 2.x and
        SDXL use; ``linear`` is linear in beta)."""
        if schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
        elif schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        else:
            raise ValueError(f"unknown beta schedule '{schedule}'")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zero_snr:
            sigmas = _rescale_zero_terminal_snr(sigmas)
        return cls(sigmas)

    @classmethod
    def from_scheduler_config(cls, config: dict) -> "NoiseTable":
        """The table a diffusers scheduler config describes."""
        return cls.from_betas(
            config.get("beta_start", 0.00085),
            config.get("beta_end", 0.012),
            config.get("num_train_timesteps", 1000),
            config.get("beta_schedule", "scaled_linear"),
            bool(config.get("rescale_betas_zero_snr", False)),
        )

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep whose sigma is nearest in log space."""
        distances = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return distances.abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """The sigma of a (fractional) timestep: log-sigma interpolated linearly."""
        t = torch.clamp(timestep.float(), min=0, max=len(self.sigmas) - 1)
        low, high, weight = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - weight) * self.log_sigmas[low] + weight * self.log_sigmas[high]).exp()


def _rescale_zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha-bar) so the last level is pure noise and
    the first unchanged (Lin et al. 2023, algorithm 1), in sigmas."""
    root = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alpha_bar[-1] = ZSNR_LAST_ALPHA_BAR
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


# the schedules ---------------------------------------------------------------------


def normal(table: NoiseTable, steps: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps evenly spaced from the highest to the lowest (both included),
    then 0; ``sgm``: ``steps`` of ``steps + 1`` even places, the last left out."""
    start, end = table.timestep(table.sigma_max), table.timestep(table.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(table.sigma(end)), 0, abs_tol=1e-5):
            steps, append_zero = steps + 1, False
        timesteps = torch.linspace(start, end, steps)
    sigmas = [float(table.sigma(t)) for t in timesteps]
    return torch.tensor(sigmas + [0.0] * append_zero, dtype=torch.float32)


def sgm_uniform(table: NoiseTable, steps: int) -> torch.Tensor:
    return normal(table, steps, sgm=True)


def simple(table: NoiseTable, steps: int) -> torch.Tensor:
    """Every (1000 / steps)-th level from the top of the table, then 0."""
    stride = len(table.sigmas) / steps
    sigmas = [float(table.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.tensor(sigmas + [0.0], dtype=torch.float32)


def ddim_uniform(table: NoiseTable, steps: int) -> torch.Tensor:
    """DDIM's uniform spacing: levels 1, 1 + k, 1 + 2k ... (k = 1000 // steps),
    highest first, then 0."""
    index = 1
    if math.isclose(float(table.sigmas[index]), 0, abs_tol=1e-5):
        steps, sigmas = steps + 1, []
    else:
        sigmas = [0.0]
    stride = max(len(table.sigmas) // steps, 1)
    while index < len(table.sigmas):
        sigmas.append(float(table.sigmas[index]))
        index += stride
    return torch.tensor(sigmas[::-1], dtype=torch.float32)


def karras(table: NoiseTable, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, steps)
    low, high = float(table.sigma_min) ** (1 / rho), float(table.sigma_max) ** (1 / rho)
    return _append_zero((high + ramp * (low - high)) ** rho)


def exponential(table: NoiseTable, steps: int) -> torch.Tensor:
    """Evenly spaced in log sigma."""
    return _append_zero(torch.linspace(math.log(table.sigma_max), math.log(table.sigma_min), steps).exp())


def beta(table: NoiseTable, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Timesteps at the quantiles of a Beta(alpha, beta) distribution (Lee et
    al. 2024): denser at both ends of the table; repeats dropped, then 0."""
    import numpy
    from scipy.stats import beta as beta_distribution

    last = len(table.sigmas) - 1
    quantiles = 1 - numpy.linspace(0, 1, steps, endpoint=False)
    timesteps = numpy.rint(beta_distribution.ppf(quantiles, alpha, beta_) * last)
    sigmas, previous = [], None
    for t in timesteps:
        if t != previous:
            sigmas.append(float(table.sigmas[int(t)]))
        previous = t
    return torch.tensor(sigmas + [0.0], dtype=torch.float32)


def linear_quadratic(table: NoiseTable, steps: int, threshold: float = 0.025,
                     linear_steps: int | None = None) -> torch.Tensor:
    """Mochi's schedule (made for flow models): half the steps linear in the
    noise fraction up to ``threshold``, the rest quadratic, scaled to sigma_max."""
    if steps == 1:
        fractions = [1.0, 0.0]
    else:
        linear_steps = steps // 2 if linear_steps is None else linear_steps
        linear = [i * threshold / linear_steps for i in range(linear_steps)]
        gap = linear_steps - threshold * steps
        quadratic_steps = steps - linear_steps
        a = gap / (linear_steps * quadratic_steps**2)
        b = threshold / linear_steps - 2 * gap / quadratic_steps**2
        c = a * linear_steps**2
        quadratic = [a * i**2 + b * i + c for i in range(linear_steps, steps)]
        fractions = [1.0 - x for x in linear + quadratic + [1.0]]
    return torch.tensor(fractions, dtype=torch.float32) * table.sigma_max


def kl_optimal(table: NoiseTable, steps: int) -> torch.Tensor:
    """Evenly spaced in arctan(sigma), then 0 (AUTOMATIC1111 PR 15608).  One
    step divides 0 by 0, as in ComfyUI: its first sigma is NaN."""
    places = torch.arange(steps, dtype=torch.float32).div_(steps - 1)
    sigmas = places.new_zeros(steps + 1)
    low, high = math.atan(float(table.sigma_min)), math.atan(float(table.sigma_max))
    sigmas[:-1] = (places * low + (1 - places) * high).tan_()
    return sigmas


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


SCHEDULES: dict[str, Callable[[NoiseTable, int], torch.Tensor]] = {
    "simple": simple,
    "sgm_uniform": sgm_uniform,
    "karras": karras,
    "exponential": exponential,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": normal,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": kl_optimal,
}
"""ComfyUI's schedule names, in its order."""


MAX_SCHEDULE = 10_000
"""The longest schedule made (``denoise`` makes ``steps / denoise`` steps)."""


def check_length(total: int, steps: int, denoise: float) -> None:
    """Refuse a schedule of more than ``MAX_SCHEDULE`` steps."""
    if total > MAX_SCHEDULE:
        raise StageError(f"denoise {denoise} with {steps} steps makes a schedule of {total} steps",
                         "raise denoise or lower steps")


def schedule(table: NoiseTable, name: str, steps: int, denoise: float = 1.0,
             discard_penultimate: bool = False) -> torch.Tensor:
    """The sigmas a ComfyUI KSampler samples at: ``steps + 1`` values, the
    last 0 (``ddim_uniform`` may give one more, as in ComfyUI).

    ``denoise`` < 1 (ComfyUI: up to 0.9999): a schedule of
    ``int(steps / denoise)`` steps, its last ``steps + 1`` sigmas (img2img
    starts part way down); ``denoise`` 0: no sigmas at all.  Samplers that
    take two model calls per step over the last interval (``dpm_2``,
    ``uni_pc``) are given one step more and the second-to-last sigma left out.
    """
    if denoise <= 0:
        return torch.zeros(0, dtype=torch.float32)
    total = steps if denoise > 0.9999 else int(steps / denoise)
    check_length(total, steps, denoise)
    if discard_penultimate:
        sigmas = SCHEDULES[name](table, total + 1)
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    else:
        sigmas = SCHEDULES[name](table, total)
    return sigmas if total == steps else sigmas[-(steps + 1):]
