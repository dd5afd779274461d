"""Denoising diffusion (DDPM / DDIM) for image generation: the UNet and the samplers.

The network is diffusers' ``UNet2DModel``, built from :class:`DDPMConfig` (or loaded from a
diffusers folder: models/diffusers_folder.py). The samplers are pure functions of an
``eps_model(x_t, t) -> eps`` callable, a noise schedule and one ``torch.Generator`` per sample;
each of their steps is :func:`models.schedule.step`:

* ``x_t``: float32 N×C×H×W, the noisy sample in the model's value range ([-1, 1] for x_0);
* ``t``: int64 tensor of shape (N,), the training timestep of every row (all equal);
* ``eps``: the predicted noise, same shape as ``x_t`` (any float dtype; used as float32).

Determinism contract: sample ``i`` draws all its noise (the initial ``x_T`` and every step's
noise) from ``generators[i]`` and from nothing else, and every sampler operation is elementwise
per row, so a sample's output depends only on its generator (seeded by :func:`sample_generator`
from the job seed and the sample index), the network and the device — not on the batch size or on
which other samples share its batch, provided the network itself is batch-invariant: wrap a UNet with
:func:`unet_eps`, whose fixed micro-batch shape makes it so (tests/models/test_diffusion.py checks
it on CPU).

As a :class:`models.base.GenerativeModel`: models/ddpm.py (the registry entries
``darkroom-ddpm-digits`` and ``ddpm``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from models.schedule import NoiseSchedule, alphas_cumprod, leading_timesteps, step

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DDPMConfig:
    """A pixel-space DDPM: its training noise schedule and the UNet's shape.

    sample_size: height = width of generated images, in pixels.
    in_channels / out_channels: image channels (out = in for an ε-predicting model).
    block_out_channels: channels of each UNet resolution level (one down/up block per level).
    layers_per_block: ResNet layers per down block (up blocks get one more, as in diffusers).
    attention_levels: indices of levels whose blocks carry self-attention (none by default).
    norm_num_groups: GroupNorm groups; must divide every entry of ``block_out_channels``.
    schedule: the forward process the network is trained for (T, β schedule, x̂₀ clipping).
    """

    sample_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 2
    attention_levels: tuple[int, ...] = ()
    norm_num_groups: int = 8
    schedule: NoiseSchedule = NoiseSchedule()


def build_unet(cfg: DDPMConfig):
    """A freshly initialised diffusers ``UNet2DModel`` for ``cfg`` (ε-prediction)."""
    from diffusers import UNet2DModel

    levels = len(cfg.block_out_channels)
    bad = [c for c in cfg.block_out_channels if c % cfg.norm_num_groups]
    if bad:
        raise ValueError(f"norm_num_groups={cfg.norm_num_groups} does not divide block_out_channels {bad}")
    down = tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if (levels - 1 - i) in cfg.attention_levels else "UpBlock2D" for i in range(levels))
    return UNet2DModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=cfg.norm_num_groups,
    )


def unet_eps(unet, micro_batch: int | None = 1) -> EpsModel:
    """Wrap a ``UNet2DModel`` as ``eps_model(x_t, t) -> eps`` (no grad; x_t cast to the UNet's dtype).

    Batch invariance: matrix products with few rows (the time embedding's ``Linear`` sees N×C)
    and small convolutions take shape-dependent kernels, so a row's ε can differ in the last bits
    with the batch size (seen on CPU: ~1e-7). With ``micro_batch=m`` the network only ever runs
    on exactly ``m`` rows: the batch is cut into chunks of ``m`` and the last chunk is padded by
    repeating its last row, so a row's ε no longer depends on the batch size or its neighbours.
    Set ``m`` to the usual batch size for throughput (padding costs at most m-1 rows per call);
    ``None`` runs the batch as is (fastest; not bit-stable across batch sizes).
    """
    dtype = next(unet.parameters()).dtype
    if micro_batch is not None and micro_batch < 1:
        raise ValueError(f"micro_batch must be ≥ 1 or None, got {micro_batch}")

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype)
        with torch.no_grad():
            if micro_batch is None:
                return unet(x, t).sample
            outs = []
            for start in range(0, x.shape[0], micro_batch):
                xc, tc = x[start : start + micro_batch], t[start : start + micro_batch]
                rows = xc.shape[0]
                if rows < micro_batch:
                    pad = micro_batch - rows
                    xc = torch.cat([xc, xc[-1:].expand(pad, *xc.shape[1:])])
                    tc = torch.cat([tc, tc[-1:].expand(pad)])
                outs.append(unet(xc, tc).sample[:rows])
            return torch.cat(outs)

    return eps


# ----------------------------------------------------------------------------------------------
# Samplers


def sample_generator(job_seed: int, index: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of sample ``index`` of a job seeded ``job_seed``.

    Its seed is a 63-bit digest of (job_seed, index), so neighbouring indices and seeds give
    unrelated noise streams; the same pair always gives the same stream on the same device.
    The samplers draw on the generator's device and then move the noise to the sampling device,
    so CPU generators (the default) give the same noise whatever device runs the network.
    """
    digest = hashlib.sha256(f"darkroom-ddpm:{int(job_seed)}:{int(index)}".encode()).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return gen


def prompt_generator(seed: int, prompt_index: int, sample: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of sample ``sample`` of prompt ``prompt_index`` of a text-to-image job seeded
    ``seed`` (the prompt's own seed, or the job's): a 63-bit digest of the triple, as
    :func:`sample_generator` does for unconditional samples."""
    digest = hashlib.sha256(f"darkroom-t2i:{int(seed)}:{int(prompt_index)}:{int(sample)}".encode()).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return gen


def noise(shape: Sequence[int], generators: Sequence[torch.Generator], device: torch.device) -> torch.Tensor:
    """One N(0, I) float32 draw of shape C×H×W per generator, stacked to N×C×H×W on ``device``."""
    rows = [torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device)


def _check(shape: Sequence[int], generators: Sequence[torch.Generator]) -> None:
    if len(shape) != 4:
        raise ValueError(f"shape must be N×C×H×W, got {tuple(shape)}")
    if shape[0] != len(generators):
        raise ValueError(f"batch of {shape[0]} needs {shape[0]} generators, got {len(generators)}")


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


def _steps(acp: torch.Tensor, timesteps: list[int]):
    """(t, previous timestep or -1, ᾱ_t, ᾱ_prev with ᾱ = 1 past t = 0) for each step of the chain."""
    one = torch.tensor(1.0, dtype=torch.float32, device=acp.device)
    for k, t in enumerate(timesteps):
        prev = timesteps[k + 1] if k + 1 < len(timesteps) else -1
        yield t, prev, acp[t], (acp[prev] if prev >= 0 else one)


def ddpm_sample(
    eps_model: EpsModel,
    shape: Sequence[int],
    betas: torch.Tensor,
    generators: Sequence[torch.Generator],
    steps: int | None = None,
    *,
    clip_sample: bool = True,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, σ_t² = β̃_t, the "fixed_small" variance).

    eps_model: ``(x_t, t) -> eps`` as described in the module docstring.
    shape: (N, C, H, W); ``len(generators) == N``.
    betas: float (T,) training noise schedule.
    generators: sample i draws x_T (C×H×W, float32) then one C×H×W N(0, I) per step with t > 0,
        in that order, from ``generators[i]``.
    steps: None runs all T steps (t = T-1 … 0, T model calls); n < T strides the chain with
        leading spacing (t = (n-1)·⌊T/n⌋ … 0), as diffusers' DDPMScheduler.set_timesteps(n).
    clip_sample: clamp the predicted x_0 to [-1, 1] at every step.

    Returns float32 N×C×H×W in [0, 1] (``clamp((x_0 + 1) / 2)``) on ``device``.
    """
    _check(shape, generators)
    device = torch.device(device)
    acp = alphas_cumprod(betas).to(device)
    T = acp.shape[0]
    x = noise(shape, generators, device)
    for t, prev, a_t, a_prev in _steps(acp, leading_timesteps(T, steps or T)):
        eps = eps_model(x, torch.full((shape[0],), t, dtype=torch.long, device=device)).to(torch.float32)
        z = noise(shape, generators, device) if prev >= 0 else None
        x = step(x, eps, a_t, a_prev, noise=z, clip_sample=clip_sample)
    return _to_unit(x)


def ddim_sample(
    eps_model: EpsModel,
    shape: Sequence[int],
    alphas_cumprod: torch.Tensor,
    generators: Sequence[torch.Generator],
    num_steps: int,
    eta: float = 0.0,
    *,
    clip_sample: bool = True,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021) over ``num_steps`` leading-spaced timesteps.

    eps_model: ``(x_t, t) -> eps`` as described in the module docstring; called num_steps times.
    shape: (N, C, H, W); ``len(generators) == N``.
    alphas_cumprod: float (T,) ᾱ_t of the training schedule; ᾱ before t = 0 is taken as 1.
    eta: 0 is deterministic DDIM (noise only in x_T); 1 has DDPM-like stochasticity, with
        σ_t = eta · sqrt((1-ᾱ_prev)/(1-ᾱ_t) · (1-ᾱ_t/ᾱ_prev)).
    generators: sample i draws x_T (C×H×W, float32) and then, when eta > 0, one C×H×W N(0, I)
        per step that has a previous timestep (all steps but the last), from ``generators[i]``.
    clip_sample: clamp the predicted x_0 to [-1, 1] (ε is not recomputed from the clamped x_0).

    Returns float32 N×C×H×W in [0, 1] on ``device``.
    """
    _check(shape, generators)
    if eta < 0:
        raise ValueError(f"eta must be ≥ 0, got {eta}")
    device = torch.device(device)
    acp = alphas_cumprod.to(device=device, dtype=torch.float32)
    x = noise(shape, generators, device)
    for t, prev, a_t, a_prev in _steps(acp, leading_timesteps(acp.shape[0], num_steps)):
        eps = eps_model(x, torch.full((shape[0],), t, dtype=torch.long, device=device)).to(torch.float32)
        z = noise(shape, generators, device) if eta > 0 and prev >= 0 else None
        x = step(x, eps, a_t, a_prev, eta=eta, noise=z, clip_sample=clip_sample)
    return _to_unit(x)
