"""DDPM noise schedules and the one reverse step every sampler takes: small pure functions of tensors.

Notation (Ho et al. 2020; diffusers' ``DDPMScheduler.step`` / ``DDIMScheduler.step`` compute the
same quantities in the same order, so results match them to float rounding):

* β_t: per-step noise variance, t = 0 … T-1; ᾱ_t = ∏_{s≤t} (1 - β_s) (``alpha_bar``).
* ``a_t`` / ``a_prev``: ᾱ at the current timestep and at the one the step goes to (1 past t = 0);
  float32 0-d tensors (or anything that broadcasts against the images).
* ``x_t``, ``eps``, ``x0``: float32 N×C×H×W in the model's value range ([-1, 1] for x_0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CLAMP_VARIANCE = 1e-20  # diffusers' floor on the ancestral variance (it takes its log); kept for equal samples


@dataclass(frozen=True)
class NoiseSchedule:
    """What sampling needs from a DDPM's training, apart from the network
    (``models.diffusers_folder.load_schedule`` reads it from a diffusers folder).

    num_train_timesteps: T, the length of the forward (noising) chain.
    beta_schedule: ``linear`` (betas evenly spaced from ``beta_start`` to ``beta_end``, as in
        Ho et al. 2020), ``scaled_linear`` (evenly spaced in sqrt) or ``squaredcos_cap_v2`` (the
        cosine schedule of Nichol & Dhariwal 2021; ``beta_start``/``beta_end`` unused).
    clip_sample: clamp the predicted x_0 to [-1, 1] at every sampling step (diffusers' default).
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    clip_sample: bool = True

    def betas(self) -> torch.Tensor:
        """float32 (T,) tensor of per-step noise variances β_t, t = 0 … T-1."""
        return make_betas(self.num_train_timesteps, self.beta_schedule, self.beta_start, self.beta_end)

    def alphas_cumprod(self) -> torch.Tensor:
        """float32 (T,) tensor ᾱ_t = ∏_{s≤t} (1 - β_s)."""
        return alphas_cumprod(self.betas())


def make_betas(
    num_train_timesteps: int, schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """float32 (T,) β schedule, computed as diffusers' DDPMScheduler/DDIMScheduler compute it."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021's cosine ᾱ, β capped at 0.999 (beta_start/end unused)
        t = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
        alpha_bar = torch.cos((t + 0.008) / 1.008 * torch.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999).to(torch.float32)
    raise ValueError(f"unknown beta_schedule {schedule!r} (linear | scaled_linear | squaredcos_cap_v2)")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t} (1 - β_s), float32 (T,)."""
    return torch.cumprod(1.0 - betas.to(torch.float32), dim=0)


def leading_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """Descending timesteps ``[(n-1)·r, …, r, 0]`` with ``r = T // n`` (diffusers' "leading" spacing)."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in 1…{num_train_timesteps}, got {num_steps}")
    ratio = num_train_timesteps // num_steps
    return [i * ratio for i in reversed(range(num_steps))]


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """x̂₀ = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t: the clean image the noise prediction implies; N×C×H×W."""
    return (x_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5


def posterior_mean(x0: torch.Tensor, x_t: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
    """μ̃ = √ᾱ' β/(1-ᾱ_t) x̂₀ + √α (1-ᾱ')/(1-ᾱ_t) x_t, the mean of q(x_prev | x_t, x̂₀), with
    α = ᾱ_t/ᾱ' the step's (possibly strided) alpha and β = 1 - α; N×C×H×W."""
    alpha_step = a_t / a_prev
    beta_step = 1 - alpha_step
    return (a_prev**0.5 * beta_step / (1 - a_t)) * x0 + (alpha_step**0.5 * (1 - a_prev) / (1 - a_t)) * x_t


def posterior_variance(a_t: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
    """β̃ = (1-ᾱ')/(1-ᾱ_t) · (1 - ᾱ_t/ᾱ'), the variance of q(x_prev | x_t, x_0); 0 when ᾱ' = 1."""
    return (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)


def step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    a_t: torch.Tensor,
    a_prev: torch.Tensor,
    *,
    eta: float | None = None,
    noise: torch.Tensor | None = None,
    clip_sample: bool = True,
) -> torch.Tensor:
    """One reverse step x_t → x_prev; every sampler (DDPM, DDIM, RePaint's holes) takes this one.

    x_t, eps: float32 N×C×H×W; a_t, a_prev: ᾱ at t and at the step's target (1 past t = 0).
    eta: ``None`` is DDPM's ancestral step (Ho et al.): x_prev = μ̃(x̂₀, x_t) + √β̃ z. A number
        is DDIM's (Song et al.): σ = η √β̃, x_prev = √ᾱ' x̂₀ + √(1-ᾱ'-σ²) ε + σ z.
    noise: z, N(0, I) of x_t's shape, drawn by the caller (who owns the generators); ``None``
        adds none (the last step; DDIM with η = 0).
    clip_sample: clamp x̂₀ to [-1, 1] first (ε is not recomputed from the clamped x̂₀).
    Returns float32 N×C×H×W.
    """
    x0 = predict_x0(x_t, eps, a_t)
    if clip_sample:
        x0 = x0.clamp(-1, 1)
    if eta is None:
        mean = posterior_mean(x0, x_t, a_t, a_prev)
        if noise is None:
            return mean
        return mean + torch.clamp(posterior_variance(a_t, a_prev), min=CLAMP_VARIANCE) ** 0.5 * noise
    std = eta * posterior_variance(a_t, a_prev) ** 0.5
    x_prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
    return x_prev if noise is None else x_prev + std * noise
