"""models/schedule.py: the schedule maths, and every sampler (DDPM, DDIM, RePaint) as a chain of its one `step`."""

from __future__ import annotations

import torch

from models.diffusion import ddim_sample, ddpm_sample, noise, sample_generator
from models.schedule import (
    NoiseSchedule,
    leading_timesteps,
    posterior_mean,
    posterior_variance,
    predict_x0,
    step,
)
from models.zeroshot import repaint

SCHEDULE = NoiseSchedule(num_train_timesteps=50)
SHAPE = (2, 3, 4, 4)


def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed stand-in for a network: ε depends on x_t and t, so every step's arithmetic shows."""
    return 0.3 * x.tanh() + 0.01 * t.view(-1, 1, 1, 1).float()


def _gens():
    return [sample_generator(3, i) for i in range(SHAPE[0])]


def _eps(x: torch.Tensor, t: int) -> torch.Tensor:
    return eps_model(x, torch.full((x.shape[0],), t, dtype=torch.long))


def _chain(steps: int):
    acp = SCHEDULE.alphas_cumprod()
    ts = leading_timesteps(SCHEDULE.num_train_timesteps, steps)
    return [(t, acp[t], acp[p] if p >= 0 else torch.tensor(1.0)) for t, p in zip(ts, [*ts[1:], -1])]


def test_predict_x0_and_posterior_invert_the_forward_process():
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(*SHAPE, generator=gen) * 2 - 1, torch.randn(*SHAPE, generator=gen)
    acp = SCHEDULE.alphas_cumprod()
    a_t, a_prev = acp[30], acp[20]
    x_t = a_t**0.5 * x0 + (1 - a_t) ** 0.5 * eps
    assert torch.allclose(predict_x0(x_t, eps, a_t), x0, atol=1e-5)
    # the posterior of a step that reaches t = 0 (ᾱ' = 1) is x_0 itself, with no variance
    assert torch.allclose(posterior_mean(x0, x_t, a_t, torch.tensor(1.0)), x0, atol=1e-5)
    assert posterior_variance(a_t, torch.tensor(1.0)) == 0
    assert 0 < posterior_variance(a_t, a_prev) < 1 - a_t / a_prev  # β̃ < β


def test_ddpm_sampler_is_a_chain_of_steps():
    gens = _gens()
    x = noise(SHAPE, gens, torch.device("cpu"))
    for t, a_t, a_prev in _chain(10):
        z = noise(SHAPE, gens, torch.device("cpu")) if t > 0 else None
        x = step(x, _eps(x, t), a_t, a_prev, noise=z)
    assert torch.equal(ddpm_sample(eps_model, SHAPE, SCHEDULE.betas(), _gens(), 10), ((x + 1) / 2).clamp(0, 1))


def test_ddim_sampler_is_a_chain_of_steps():
    gens = _gens()
    x = noise(SHAPE, gens, torch.device("cpu"))
    for t, a_t, a_prev in _chain(8):
        z = noise(SHAPE, gens, torch.device("cpu")) if t > 0 else None
        x = step(x, _eps(x, t), a_t, a_prev, eta=0.6, noise=z)
    out = ddim_sample(eps_model, SHAPE, SCHEDULE.alphas_cumprod(), _gens(), 8, 0.6)
    assert torch.equal(out, ((x + 1) / 2).clamp(0, 1))


def test_repaint_holes_are_ddpm_steps():
    y = torch.rand(*SHAPE, generator=torch.Generator().manual_seed(1))
    known = torch.zeros(SHAPE[0], 1, *SHAPE[2:])
    known[..., :2, :] = 1  # top half known
    gens = _gens()
    x = noise(SHAPE, gens, torch.device("cpu"))
    y2 = y * 2 - 1
    for t, a_t, a_prev in _chain(6):
        if t > 0:
            holes = step(x, _eps(x, t), a_t, a_prev, noise=noise(SHAPE, gens, torch.device("cpu")))
            seen = a_prev**0.5 * y2 + (1 - a_prev) ** 0.5 * noise(SHAPE, gens, torch.device("cpu"))
        else:
            holes, seen = step(x, _eps(x, t), a_t, a_prev), y2
        x = known * seen + (1 - known) * holes
    want = known * y + (1 - known) * ((x + 1) / 2).clamp(0, 1)
    assert torch.equal(repaint(eps_model, y, known, SCHEDULE.alphas_cumprod(), _gens(), 6), want)


def test_cosine_schedule_matches_diffusers():
    from diffusers import DDPMScheduler

    from models.schedule import make_betas

    want = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").betas
    assert torch.equal(make_betas(1000, "squaredcos_cap_v2"), want)
