"""ComfyUI's k-diffusion samplers, written for sdflow, giving ComfyUI's numbers.

Each public function runs the sampler of the same ComfyUI name over a sigma
schedule and returns the final latent.  They follow ComfyUI's formulas,
constants, order of floating-point operations and noise draws, so that on
the CPU in float32 they give ComfyUI's latents bit for bit
(``tests/test_samplers.py`` against ``tests/data/comfyui_samplers.json``).
ComfyUI is GPL-3.0; this module was written from the facts of its code
(formulas and the order they are evaluated in), not from its text.

The calling convention, the same for every sampler::

    sampler(denoise, x, sigmas, *, noise=None, step=None, **options) -> latent

* ``denoise(x, sigma)`` is the model: the clean latent it predicts from ``x``
  at noise level ``sigma`` (a 0-dim float32 CPU tensor).  Guidance, the
  U-Net's input scaling and the prediction type are the caller's business.
* ``x`` is the starting latent, already scaled to ``sigmas[0]``; it keeps its
  device and dtype throughout.
* ``sigmas`` is the schedule: a 1-D float32 CPU tensor, usually ending in 0.
* ``noise(sigma, sigma_next)`` returns standard-normal noise shaped like
  ``x`` on ``x``'s device: :func:`gaussian_noise` for the ancestral samplers,
  :func:`brownian_noise` for the SDE ones (``SamplerInfo.brownian``).  A
  sampler that draws noise and has none raises ``ValueError`` at its first
  draw.
* ``step(i)`` is called after step ``i``; it may raise to stop the run.

Scalars never leave the CPU.  Every sigma, step size and coefficient is a
0-dim CPU float32 tensor computed as ComfyUI computes it (ComfyUI does this
arithmetic in the same dtype on the schedule's device), and every branch is
decided on those CPU values, so a run on a GPU launches kernels and never
waits for them.  A 0-dim CPU tensor multiplies a device tensor as a plain
scalar; the few small tensors a sampler needs on the device (UniPC's
weights, noise drawn on the CPU) are copied with ``non_blocking=True``.
On a GPU the latents are close to the CPU's, not equal: CUDA's kernels
round their own way (a division by a CPU scalar, for one, is a
multiplication by its reciprocal there).

``lms`` integrates with SciPy and the SDE samplers' noise needs torchsde;
both are imported only when used.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Step = Callable[[int], None]


# --------------------------------------------------------------------------
# Shared pieces

def _report(step: Step | None, i: int) -> None:
    if step is not None:
        step(i)


def _noise_or_refusal(noise: NoiseSampler | None, sampler: str) -> NoiseSampler:
    if noise is not None:
        return noise

    def refuse(sigma, sigma_next):
        raise ValueError(f"{sampler} draws noise: pass noise= (gaussian_noise or brownian_noise)")

    return refuse


def _slope(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE, (x - denoised) / sigma."""
    return (x - denoised) / sigma


def _ancestral_split(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float):
    """(sigma_down, sigma_up): step deterministically down to sigma_down, then
    add fresh noise of size sigma_up, so that the total comes to sigma_next."""
    if not eta:
        return sigma_next, 0.0
    up = eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5
    up = up if up < sigma_next else sigma_next  # Python's min(sigma_next, up)
    down = (sigma_next ** 2 - up ** 2) ** 0.5
    return down, up


def _churned(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise, *, draw_every_step=False):
    """Karras et al.'s "churn": raise the noise level of step ``i`` by a factor
    1 + gamma, adding the noise that takes ``x`` there.  Returns (x, sigma_hat).

    ComfyUI draws this noise from torch's global generator; here it comes
    from ``noise``.  Its heunpp2 draws one every step once churn is on, used
    or not (``draw_every_step``), which keeps the two streams in step."""
    sigma = sigmas[i]
    gamma = 0.0
    if s_churn > 0 and s_tmin <= sigma <= s_tmax:
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1)
    if gamma <= 0:
        if draw_every_step and s_churn > 0:
            noise(sigma, sigma)
        return x, sigma
    sigma_hat = sigma * (gamma + 1)
    eps = noise(sigma, sigma_hat) * s_noise
    return x + eps * (sigma_hat ** 2 - sigma ** 2) ** 0.5, sigma_hat


def _half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma), which is -log(sigma) for a discrete (VP) SD model
    in k-diffusion's scaling (ComfyUI's rectified-flow branch is not needed here)."""
    return sigma.log().neg()


def _sigma_at(half_log_snr: torch.Tensor) -> torch.Tensor:
    return half_log_snr.neg().exp()


# --------------------------------------------------------------------------
# Euler and Heun family

def euler(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise: NoiseSampler | None = None,
          step: Step | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
          s_noise: float = 1.0) -> torch.Tensor:
    """Euler steps of the probability-flow ODE (Karras et al. 2022, algorithm 2).
    ComfyUI's ``ddim`` is this sampler too."""
    noise = _noise_or_refusal(noise, "euler with s_churn > 0")
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise)
        denoised = denoise(x, sigma_hat)
        x = x + _slope(x, denoised, sigma_hat) * (sigmas[i + 1] - sigma_hat)
        _report(step, i)
    return x


def euler_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                    noise: NoiseSampler | None = None, step: Step | None = None, eta: float = 1.0,
                    s_noise: float = 1.0) -> torch.Tensor:
    """An Euler step down to sigma_down, then fresh noise up to the next sigma."""
    noise = _noise_or_refusal(noise, "euler_ancestral")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        down, up = _ancestral_split(sigma, sigma_next, eta)
        if down == 0:
            x = denoised
        else:
            x = x + _slope(x, denoised, sigma) * (down - sigma) + noise(sigma, sigma_next) * s_noise * up
        _report(step, i)
    return x


def heun(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise: NoiseSampler | None = None,
         step: Step | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
         s_noise: float = 1.0) -> torch.Tensor:
    """Heun's method (the trapezoid rule), Euler on the last step to 0."""
    noise = _noise_or_refusal(noise, "heun with s_churn > 0")
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise)
        sigma_next = sigmas[i + 1]
        d = _slope(x, denoise(x, sigma_hat), sigma_hat)
        dt = sigma_next - sigma_hat
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_euler = x + d * dt
            d_end = _slope(x_euler, denoise(x_euler, sigma_next), sigma_next)
            x = x + (d + d_end) / 2 * dt
        _report(step, i)
    return x


def heunpp2(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise: NoiseSampler | None = None,
            step: Step | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
            s_tmax: float = math.inf, s_noise: float = 1.0) -> torch.Tensor:
    """Heun++: a slope from up to three points (this step's and the next two
    sigmas'), weighted by how far along the schedule they are."""
    noise = _noise_or_refusal(noise, "heunpp2 with s_churn > 0")
    last = sigmas[-1]
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise, draw_every_step=True)
        d = _slope(x, denoise(x, sigma_hat), sigma_hat)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == last:
            x = x + d * dt
        else:
            s1 = sigmas[i + 1]
            x1 = x + d * dt
            d1 = _slope(x1, denoise(x1, s1), s1)
            if sigmas[i + 2] == last:
                w1 = s1 / (2 * sigmas[0])
                slope = d * (1 - w1) + d1 * w1
            else:
                s2 = sigmas[i + 2]
                x2 = x1 + d1 * (s2 - s1)
                d2 = _slope(x2, denoise(x2, s2), s2)
                span = 3 * sigmas[0]
                w1, w2 = s1 / span, s2 / span
                slope = (1 - w1 - w2) * d + w1 * d1 + w2 * d2
            x = x + slope * dt
        _report(step, i)
    return x


def dpm_2(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise: NoiseSampler | None = None,
          step: Step | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
          s_noise: float = 1.0) -> torch.Tensor:
    """The DPM-Solver-2-like midpoint method: the slope at the geometric mean
    of the two sigmas carries the whole step; Euler on the last step to 0."""
    noise = _noise_or_refusal(noise, "dpm_2 with s_churn > 0")
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise)
        sigma_next = sigmas[i + 1]
        d = _slope(x, denoise(x, sigma_hat), sigma_hat)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma_hat)
        else:
            x = _midpoint_step(denoise, x, d, sigma_hat, sigma_next)
        _report(step, i)
    return x


def _midpoint_step(denoise, x, d, sigma, sigma_to):
    mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_mid = x + d * (mid - sigma)
    d_mid = _slope(x_mid, denoise(x_mid, mid), mid)
    return x + d_mid * (sigma_to - sigma)


def dpm_2_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                    noise: NoiseSampler | None = None, step: Step | None = None, eta: float = 1.0,
                    s_noise: float = 1.0) -> torch.Tensor:
    """dpm_2's midpoint step down to sigma_down, then fresh noise."""
    noise = _noise_or_refusal(noise, "dpm_2_ancestral")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        down, up = _ancestral_split(sigma, sigma_next, eta)
        d = _slope(x, denoised, sigma)
        if down == 0:
            x = x + d * (down - sigma)
        else:
            x = _midpoint_step(denoise, x, d, sigma, down)
            x = x + noise(sigma, sigma_next) * s_noise * up
        _report(step, i)
    return x


# --------------------------------------------------------------------------
# Linear multistep

def lms(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise: NoiseSampler | None = None,
        step: Step | None = None, order: int = 4) -> torch.Tensor:
    """Linear multistep: the last ``order`` slopes, each weighted by the
    integral over the step of its Lagrange basis polynomial in sigma."""
    nodes = sigmas.detach().cpu().numpy()
    slopes: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = denoise(x, sigma)
        slopes = (slopes + [_slope(x, denoised, sigma)])[-order:]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            k = min(i + 1, order)
            weights = [_lms_weight(nodes, i, j, k) for j in range(k)]
            x = x + sum(w * d for w, d in zip(weights, reversed(slopes)))
        _report(step, i)
    return x


def _lms_weight(nodes: np.ndarray, i: int, j: int, order: int) -> float:
    """The integral from nodes[i] to nodes[i + 1] of the Lagrange basis
    polynomial that is 1 at nodes[i - j] and 0 at the other ``order - 1``
    nodes before it.

    As in ComfyUI: by ``scipy.integrate.quad`` (relative tolerance 1e-4) of
    the polynomial evaluated in float32 numpy arithmetic (the nodes are
    float32 scalars; NumPy 2 keeps the Python float ``tau`` from promoting
    them).  An exact integral would differ from it in the last bits, and a
    last bit of a weight shows in the latent."""
    from scipy import integrate

    others = [nodes[i - k] for k in range(order) if k != j]
    at = nodes[i - j]

    def basis(tau):
        value = 1.0
        for node in others:
            value *= (tau - node) / (at - node)
        return value

    return integrate.quad(basis, nodes[i], nodes[i + 1], epsrel=1e-4)[0]


# --------------------------------------------------------------------------
# DPM-Solver++ family

def dpmpp_2s_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                       noise: NoiseSampler | None = None, step: Step | None = None, eta: float = 1.0,
                       s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2S), single-step second order, down to sigma_down, then fresh noise."""
    noise = _noise_or_refusal(noise, "dpmpp_2s_ancestral")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        down, up = _ancestral_split(sigma, sigma_next, eta)
        if down == 0:
            x = x + _slope(x, denoised, sigma) * (down - sigma)
        else:
            lam, lam_down = _half_log_snr(sigma), _half_log_snr(down)
            h = lam_down - lam
            lam_mid = lam + 0.5 * h
            x_mid = (_sigma_at(lam_mid) / _sigma_at(lam)) * x - (-h * 0.5).expm1() * denoised
            denoised_mid = denoise(x_mid, _sigma_at(lam_mid))
            x = (_sigma_at(lam_down) / _sigma_at(lam)) * x - (-h).expm1() * denoised_mid
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * s_noise * up
        _report(step, i)
    return x


def dpmpp_sde(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise: NoiseSampler | None = None,
              step: Step | None = None, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5) -> torch.Tensor:
    """DPM-Solver++ SDE, two stages per step (the second at a fraction ``r``
    of the step in lambda), each adding noise from the Brownian tree."""
    noise = _noise_or_refusal(noise, "dpmpp_sde")
    with_noise = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            lam_s, lam_t = _half_log_snr(sigma), _half_log_snr(sigma_next)
            h = lam_t - lam_s
            lam_mid = lam_s + r * h
            sigma_mid = _sigma_at(lam_mid)
            # alpha = sigma * exp(lambda): 1 up to rounding, and kept as computed
            alpha_s = sigma * lam_s.exp()
            alpha_mid = sigma_mid * lam_mid.exp()
            alpha_t = sigma_next * lam_t.exp()

            x_mid, up = _sde_stage(x, denoised, lam_s, lam_mid, alpha_s, alpha_mid, eta)
            if with_noise:
                x_mid = x_mid + alpha_mid * noise(sigma, sigma_mid) * s_noise * up
            denoised_mid = denoise(x_mid, sigma_mid)

            weight = 1 / (2 * r)
            target = (1 - weight) * denoised + weight * denoised_mid
            x, up = _sde_stage(x, target, lam_s, lam_t, alpha_s, alpha_t, eta)
            if with_noise:
                x = x + alpha_t * noise(sigma, sigma_next) * s_noise * up
        _report(step, i)
    return x


def _sde_stage(x, target, lam_from, lam_to, alpha_from, alpha_to, eta):
    """One exponential-integrator stage of dpmpp_sde to the ancestral level of
    lam_to; returns the new x (before noise) and the noise size."""
    down, up = _ancestral_split(lam_from.neg().exp(), lam_to.neg().exp(), eta)
    h = down.log().neg() - lam_from
    return (alpha_to / alpha_from) * (-h).exp() * x - alpha_to * (-h).expm1() * target, up


def dpmpp_2m(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise: NoiseSampler | None = None,
             step: Step | None = None) -> torch.Tensor:
    """DPM-Solver++(2M): second order from the previous step's prediction."""
    previous = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        lam, lam_next = _half_log_snr(sigma), _half_log_snr(sigma_next)
        h = lam_next - lam
        target = denoised
        if previous is not None and sigma_next != 0:
            r = (lam - _half_log_snr(sigmas[i - 1])) / h
            target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (_sigma_at(lam_next) / _sigma_at(lam)) * x - (-h).expm1() * target
        previous = denoised
        _report(step, i)
    return x


def dpmpp_2m_sde(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                 noise: NoiseSampler | None = None, step: Step | None = None, eta: float = 1.0,
                 s_noise: float = 1.0, solver_type: str = "midpoint") -> torch.Tensor:
    """DPM-Solver++(2M) SDE, with the midpoint or Heun correction from the previous prediction."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', not {solver_type!r}")
    noise = _noise_or_refusal(noise, "dpmpp_2m_sde")
    previous, h, h_previous = None, None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h, alpha_t, h_eta, x = _sde_first_order(x, denoised, sigma, sigma_next, eta)
            if previous is not None:
                inverse_r = 1 / (h_previous / h)
                damped = (-h_eta).expm1().neg()
                if solver_type == "heun":
                    x = x + alpha_t * (damped / (-h_eta) + 1) * inverse_r * (denoised - previous)
                else:
                    x = x + 0.5 * alpha_t * damped * inverse_r * (denoised - previous)
            x = _sde_noise(x, noise, sigma, sigma_next, h, eta, s_noise)
        previous, h_previous = denoised, h
        _report(step, i)
    return x


def dpmpp_3m_sde(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *,
                 noise: NoiseSampler | None = None, step: Step | None = None, eta: float = 1.0,
                 s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(3M) SDE: up to third order from the two previous predictions."""
    noise = _noise_or_refusal(noise, "dpmpp_3m_sde")
    d_prev, d_prev2 = None, None  # the last two predictions
    h, h_prev, h_prev2 = None, None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h, alpha_t, h_eta, x = _sde_first_order(x, denoised, sigma, sigma_next, eta)
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_prev2 is not None:
                r0, r1 = h_prev / h, h_prev2 / h
                diff0 = (denoised - d_prev) / r0
                diff1 = (d_prev - d_prev2) / r1
                first = diff0 + (diff0 - diff1) * r0 / (r0 + r1)
                second = (diff0 - diff1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * first - (alpha_t * phi_3) * second
            elif h_prev is not None:
                x = x + (alpha_t * phi_2) * ((denoised - d_prev) / (h_prev / h))
            x = _sde_noise(x, noise, sigma, sigma_next, h, eta, s_noise)
        d_prev, d_prev2 = denoised, d_prev
        h_prev, h_prev2 = h, h_prev
        _report(step, i)
    return x


def _sde_first_order(x, denoised, sigma, sigma_next, eta):
    """The first-order part of a 2M/3M SDE step: (h, alpha_t, h * (1 + eta), new x)."""
    lam_s, lam_t = _half_log_snr(sigma), _half_log_snr(sigma_next)
    h = lam_t - lam_s
    h_eta = h * (eta + 1)
    alpha_t = sigma_next * lam_t.exp()
    x = sigma_next / sigma * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
    return h, alpha_t, h_eta, x


def _sde_noise(x, noise, sigma, sigma_next, h, eta, s_noise):
    if eta > 0 and s_noise > 0:
        x = x + noise(sigma, sigma_next) * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise
    return x


# --------------------------------------------------------------------------
# DDPM and LCM

def ddpm(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise: NoiseSampler | None = None,
         step: Step | None = None) -> torch.Tensor:
    """Ancestral DDPM steps (the posterior mean plus its noise), done on the
    variance-preserving scale and brought back to k-diffusion's."""
    noise = _noise_or_refusal(noise, "ddpm")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        eps = (x - denoised) / sigma
        x = _ddpm_posterior(x / torch.sqrt(1.0 + sigma ** 2.0), eps, sigma, sigma_next, noise)
        if sigma_next != 0:
            x = x * torch.sqrt(1.0 + sigma_next ** 2.0)
        _report(step, i)
    return x


def _ddpm_posterior(x_vp, eps, sigma, sigma_next, noise):
    alpha_bar = 1 / ((sigma * sigma) + 1)
    alpha_bar_next = 1 / ((sigma_next * sigma_next) + 1)
    alpha = alpha_bar / alpha_bar_next
    mean = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - alpha_bar).sqrt())
    if sigma_next > 0:
        spread = ((1 - alpha) * (1.0 - alpha_bar_next) / (1.0 - alpha_bar)).sqrt()
        mean = mean + spread * noise(sigma, sigma_next)
    return mean


def lcm(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise: NoiseSampler | None = None,
        step: Step | None = None) -> torch.Tensor:
    """Latent consistency sampling: jump to the prediction, then renoise it to the next sigma."""
    noise = _noise_or_refusal(noise, "lcm")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x = denoise(x, sigma)
        if sigma_next > 0:
            # an EPS/V model's noise_scaling: noise * sigma + latent
            x = noise(sigma, sigma_next) * sigma_next + x
        _report(step, i)
    return x


# --------------------------------------------------------------------------
# iPNDM and DEIS (Adams-Bashforth-style, after zju-pi's diff-solvers)

_IPNDM_WEIGHTS = {  # (weights, divisor), newest slope first
    1: ((1,), 1),
    2: ((3, -1), 2),
    3: ((23, -16, 5), 12),
    4: ((55, -59, 37, -9), 24),
}


def ipndm(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise: NoiseSampler | None = None,
          step: Step | None = None, max_order: int = 4) -> torch.Tensor:
    """Improved PNDM: Adams-Bashforth steps in sigma with the classic fixed
    weights, up to ``max_order`` slopes (1 to 4)."""
    if max_order not in _IPNDM_WEIGHTS:
        raise ValueError(f"ipndm's max_order must be 1 to 4, not {max_order}")
    slopes: list[torch.Tensor] = []  # oldest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        d = (x - denoised) / sigma
        order = min(max_order, i + 1)
        if sigma_next == 0:
            x = denoised
        elif order == 1:
            x = x + (sigma_next - sigma) * d
        else:
            weights, divisor = _IPNDM_WEIGHTS[order]
            combined = weights[0] * d
            for w, older in zip(weights[1:], reversed(slopes)):
                combined = combined + w * older  # a + (-c) * b is a - c * b, bit for bit
            x = x + (sigma_next - sigma) * combined / divisor
        slopes = (slopes + [d])[-(max_order - 1):] if max_order > 1 else []
        _report(step, i)
    return x


def deis(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise: NoiseSampler | None = None,
         step: Step | None = None, max_order: int = 3) -> torch.Tensor:
    """DEIS (Zhang & Chen 2022) in its tabulated ("tab") form: Adams-Bashforth
    weights from a numerical integral over each step in a VP time fitted to
    EDM's sigma range, up to ``max_order`` slopes (1 to 4)."""
    if not 1 <= max_order <= 4:
        raise ValueError(f"deis's max_order must be 1 to 4, not {max_order}")
    weights = _deis_weights(sigmas, max_order)
    slopes: list[torch.Tensor] = []  # oldest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, sigma)) / sigma
        order = 1 if sigma_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x = x + (sigma_next - sigma) * d
        else:
            w = weights[i]
            x = x + w[0] * d
            for k in range(1, order):
                x = x + w[k] * slopes[-k]
        slopes = (slopes + [d])[-(max_order - 1):] if max_order > 1 else []
        _report(step, i)
    return x


_DEIS_POINTS = 10_000  # the integral is a Riemann sum over this many points


def _deis_vp_fit() -> tuple[torch.Tensor, torch.Tensor]:
    """(beta_d, beta_min) of the linear VP schedule through EDM's sigma range
    (0.002 at t = 1e-3, 80 at t = 1), as 0-dim float64 tensors.

    The dtypes are ComfyUI's: NumPy takes the logs, of a float32 for 0.002
    and of an int64 for 80 (an int there), so the second log and everything
    mixed with it is float64; the float64 fit is rounded to float32 only
    where it meets the float32 times."""
    eps_t = 1e-3
    log_low = torch.from_numpy(np.asarray(np.log((torch.tensor(0.002) ** 2 + 1).numpy())))
    log_high = torch.from_numpy(np.asarray(np.log((torch.tensor(80) ** 2 + 1).numpy())))
    beta_d = 2 * (log_low / eps_t - log_high) / (eps_t - 1)
    beta_min = log_high - 0.5 * beta_d
    return beta_d, beta_min


def _deis_weights(sigmas: torch.Tensor, max_order: int) -> list[list[torch.Tensor]]:
    """Per step i, the weights of the current and earlier slopes (none where
    the step is first order)."""
    beta_d, beta_min = _deis_vp_fit()
    times = ((beta_min ** 2 + 2 * beta_d * (sigmas ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    beta_0, beta_1 = beta_min, beta_d + beta_min
    weights: list[list[torch.Tensor]] = []
    for i in range(len(times) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            weights.append([])
            continue
        taus = torch.linspace(times[i], times[i + 1], _DEIS_POINTS)
        dtau = (times[i + 1] - times[i]) / _DEIS_POINTS
        nodes = [times[i - k] for k in range(order)]
        integrand = _deis_integrand(beta_0, beta_1, taus)
        row = []
        for j in range(order):
            basis = 1
            for k, node in enumerate(nodes):
                if k != j:
                    basis = basis * ((taus - node) / (nodes[j] - node))
            row.append(torch.sum(integrand * basis) * dtau)
        weights.append(row)
    return weights


def _deis_integrand(beta_0, beta_1, taus):
    """-1/2 d(log alpha)/dtau / sqrt(alpha (1 - alpha)) for alpha =
    exp(-t^2 (beta_1 - beta_0) / 2 - t beta_0).  The derivative is taken by
    autograd through log(exp(.)), as ComfyUI takes it: its rounding (1/alpha
    times alpha is not always 1) is part of the numbers."""
    with torch.inference_mode(False), torch.enable_grad():
        t = taus.clone().requires_grad_(True)
        b0, b1 = beta_0.clone(), beta_1.clone()
        alpha = torch.exp(-0.5 * t ** 2 * (b1 - b0) - t * b0)
        alpha.log().sum().backward()
        slope = t.grad
        alpha = alpha.detach()
    return -0.5 * slope / torch.sqrt(alpha * (1 - alpha))


# --------------------------------------------------------------------------
# UniPC (Zhao et al. 2023), as ComfyUI runs it

def uni_pc(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise: NoiseSampler | None = None,
           step: Step | None = None) -> torch.Tensor:
    """UniPC with the B(h) = h variant ("bh1"): multistep predictor-corrector
    of order up to 3 on the data prediction."""
    return _unipc(denoise, x, sigmas, step, "bh1")


def uni_pc_bh2(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise: NoiseSampler | None = None,
               step: Step | None = None) -> torch.Tensor:
    """UniPC with B(h) = e^h - 1 ("bh2")."""
    return _unipc(denoise, x, sigmas, step, "bh2")


def _vp_log_alpha(s):
    """log alpha of the VP process whose k-diffusion sigma is s: ComfyUI's
    UniPC uses sigma itself as its time variable."""
    return 0.5 * torch.log(1 / ((s * s) + 1))


def _vp_alpha(s):
    return torch.exp(_vp_log_alpha(s))


def _vp_std(s):
    return torch.sqrt(1.0 - torch.exp(2.0 * _vp_log_alpha(s)))


def _vp_lambda(s):
    log_alpha = _vp_log_alpha(s)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _unipc(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, step: Step | None, variant: str):
    """ComfyUI's UniPC run: on the variance-preserving scale (x / sqrt(1 +
    sigma^2)), the model turned into a noise prediction and back into a data
    prediction through the VP alpha and sigma, a final sigma of 0 replaced by
    0.001 (so the result keeps that much noise), order min(3, steps - 1)
    with lower orders to start and to finish, and one last predictor-only
    step to the final sigma.  The result is divided by that sigma's alpha."""
    times = sigmas.clone()
    if times[-1] == 0:
        times[-1] = 0.001

    def data_prediction(x_vp, t):
        x_k = x_vp * ((t ** 2 + 1.0) ** 0.5)
        eps = (x_k - denoise(x_k, t)) / t
        return (x_vp - _vp_std(t) * eps) / _vp_alpha(t)

    x = x / torch.sqrt(1.0 + times[0] ** 2.0)
    steps = len(times) - 1
    order = min(3, len(times) - 2)
    past_t: list[torch.Tensor] = []
    past_x0: list[torch.Tensor] = []
    for i in range(steps):
        if i == 0:
            past_t, past_x0 = [times[0]], [data_prediction(x, times[0])]
        elif i < order:
            x, x0 = _unipc_update(x, past_x0, past_t, times[i], i, True, variant, data_prediction)
            past_t.append(times[i])
            past_x0.append(x0)
        else:
            targets = (i, steps) if i == steps - 1 else (i,)
            for j in targets:
                correct = j != steps
                k = min(order, steps + 1 - j)
                x, x0 = _unipc_update(x, past_x0, past_t, times[j], k, correct, variant, data_prediction)
                past_t = past_t[1:] + [times[j]]
                if correct:
                    past_x0 = past_x0[1:] + [x0]
        _report(step, i)
    return x / _vp_alpha(times[-1])


def _unipc_update(x, past_x0, past_t, t, order, correct, variant, data_prediction):
    """One UniPC step from past_t[-1] to t of the given order: the predictor
    (UniP) and, with ``correct``, the corrector (UniC) from a model call at t.
    Returns (x at t, the data prediction at t or None)."""
    t0, x0_0 = past_t[-1], past_x0[-1]
    lam_0, lam_t = _vp_lambda(t0), _vp_lambda(t)
    alpha_t = torch.exp(_vp_log_alpha(t))
    h = lam_t - lam_0

    ratios, differences = [], []
    for k in range(1, order):
        r_k = (_vp_lambda(past_t[-(k + 1)]) - lam_0) / h
        ratios.append(r_k)
        differences.append((past_x0[-(k + 1)] - x0_0) / r_k)
    ratios = torch.stack(ratios + [torch.tensor(1.0)])

    hh = -h
    h_phi = torch.expm1(hh)
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, rhs = [], []
    phi_k, factorial = h_phi / hh - 1, 1
    for k in range(1, order + 1):
        rows.append(torch.pow(ratios, k - 1))
        rhs.append(phi_k * factorial / b_h)
        factorial *= k + 1
        phi_k = phi_k / hh - 1 / factorial
    system, rhs = torch.stack(rows), torch.stack(rhs)

    on_device = {"device": x.device, "dtype": x.dtype, "non_blocking": True}
    stacked = torch.stack(differences, dim=1) if differences else None
    x_first = (_vp_std(t) / _vp_std(t0)) * x - (alpha_t * h_phi) * x0_0
    predicted = 0
    if stacked is not None:
        weights = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(system[:-1, :-1], rhs[:-1])
        predicted = torch.tensordot(stacked, weights.to(**on_device), dims=([1], [0]))
    x_t = x_first - (alpha_t * b_h) * predicted
    if not correct:
        return x_t, None

    x0_t = data_prediction(x_t, t)
    weights = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(system, rhs)
    corrected = 0
    if stacked is not None:
        corrected = torch.tensordot(stacked, weights[:-1].to(**on_device), dims=([1], [0]))
    x_t = x_first - (alpha_t * b_h) * (corrected + weights[-1] * (x0_t - x0_0))
    return x_t, x0_t


# --------------------------------------------------------------------------
# Noise

def gaussian_noise(x: torch.Tensor, seeds: list[int]) -> NoiseSampler:
    """Independent standard-normal noise per call, image i of the batch from a
    CPU generator seeded ``seeds[i]`` (drawn as a batch of one, in x's dtype,
    then moved to x's device).  For a batch of one this is ComfyUI's default
    noise sampler run on the CPU with that seed."""
    if len(seeds) != x.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for a batch of {x.shape[0]}")
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    shape = (1, *x.shape[1:])

    def draw(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        parts = [torch.randn(shape, dtype=x.dtype, generator=g) for g in generators]
        return torch.cat(parts).to(x.device, non_blocking=True)

    return draw


def brownian_noise(x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int], cpu: bool = True) -> NoiseSampler:
    """Noise from a Brownian motion in sigma (torchsde's BrownianTree), as
    ComfyUI's BrownianTreeNoiseSampler gives it: the increment over
    [sigma_next, sigma] divided by its standard deviation, so that the
    noise of nearby steps is correlated as an SDE solver expects.

    The tree spans the schedule's smallest positive sigma to its largest;
    image i of the batch has its own tree with entropy ``seeds[i]``, built on
    the CPU (``cpu=True``, and its noise moved to x's device) or on x's
    device (ComfyUI's ``_gpu`` samplers)."""
    try:
        import torchsde
    except ImportError as e:
        raise ImportError(
            "dpmpp_sde, dpmpp_2m_sde and dpmpp_3m_sde need torchsde for their "
            "Brownian-tree noise: pip install torchsde"
        ) from e
    if len(seeds) != x.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for a batch of {x.shape[0]}")
    positive = sigmas[sigmas > 0]
    if positive.numel() == 0:
        raise ValueError("a Brownian tree needs a schedule with a positive sigma")
    low, high = positive.min(), sigmas.max()
    span_sign = 1
    if not low < high:  # ComfyUI orders the ends so; equal ends count as swapped
        low, high, span_sign = high, low, -1
    device = torch.device("cpu") if cpu else x.device
    w0 = torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=device)
    trees = [torchsde.BrownianTree(low, w0, high, entropy=int(s)) for s in seeds]

    def draw(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a, b, sign = sigma, sigma_next, span_sign
        if not a < b:
            a, b, sign = b, a, -span_sign
        with warnings.catch_warnings():
            # torchsde rounds the tree's ends to its tolerance (1e-6), so the
            # first step's sigma lies just past the top end: it clamps the
            # query there and warns, in ComfyUI too, every run.
            warnings.filterwarnings("ignore", "Should have", UserWarning)
            w = torch.cat([tree(a.float(), b.float()) for tree in trees])
        w = w.to(x.device, x.dtype, non_blocking=True) * sign
        return w / (sigma_next - sigma).abs().sqrt()

    return draw


# --------------------------------------------------------------------------
# The table

@dataclass(frozen=True)
class SamplerInfo:
    """What a caller needs to know about a sampler besides its function."""

    function: Callable[..., torch.Tensor]
    stochastic: bool = False  # draws noise every step: pass noise=
    brownian: bool = False  # that noise must be brownian_noise (an SDE solver)
    discard_penultimate: bool = False  # ComfyUI drops the schedule's second-to-last sigma
    options: Mapping[str, Any] = field(default_factory=dict)  # keyword options and ComfyUI's defaults
    model_calls_per_step: int = 1  # at most; fewer on the last step for some
    inpaint_fresh_noise: bool = False  # a noise mask's kept region is noised from seed + 1 (ComfyUI's ddim)


_CHURN = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}
_ANCESTRAL = {"eta": 1.0, "s_noise": 1.0}

SAMPLERS: dict[str, SamplerInfo] = {
    "euler": SamplerInfo(euler, options=_CHURN),
    "euler_ancestral": SamplerInfo(euler_ancestral, stochastic=True, options=_ANCESTRAL),
    "heun": SamplerInfo(heun, options=_CHURN, model_calls_per_step=2),
    "heunpp2": SamplerInfo(heunpp2, options=_CHURN, model_calls_per_step=3),
    "dpm_2": SamplerInfo(dpm_2, discard_penultimate=True, options=_CHURN, model_calls_per_step=2),
    "dpm_2_ancestral": SamplerInfo(dpm_2_ancestral, stochastic=True, discard_penultimate=True,
                                   options=_ANCESTRAL, model_calls_per_step=2),
    "lms": SamplerInfo(lms, options={"order": 4}),
    "dpmpp_2s_ancestral": SamplerInfo(dpmpp_2s_ancestral, stochastic=True, options=_ANCESTRAL,
                                      model_calls_per_step=2),
    "dpmpp_sde": SamplerInfo(dpmpp_sde, stochastic=True, brownian=True,
                             options={**_ANCESTRAL, "r": 0.5}, model_calls_per_step=2),
    "dpmpp_2m": SamplerInfo(dpmpp_2m),
    "dpmpp_2m_sde": SamplerInfo(dpmpp_2m_sde, stochastic=True, brownian=True,
                                options={**_ANCESTRAL, "solver_type": "midpoint"}),
    "dpmpp_3m_sde": SamplerInfo(dpmpp_3m_sde, stochastic=True, brownian=True, options=_ANCESTRAL),
    "ddpm": SamplerInfo(ddpm, stochastic=True),
    "lcm": SamplerInfo(lcm, stochastic=True),
    "ipndm": SamplerInfo(ipndm, options={"max_order": 4}),
    "deis": SamplerInfo(deis, options={"max_order": 3}),
    "uni_pc": SamplerInfo(uni_pc, discard_penultimate=True),
    "uni_pc_bh2": SamplerInfo(uni_pc_bh2, discard_penultimate=True),
    # ComfyUI runs "ddim" as euler (with random noise for inpainting's masked area)
    "ddim": SamplerInfo(euler, inpaint_fresh_noise=True),
}
