"""Sampling from latent-variable generators (GAN generators, VAE decoders) as a pure function.

A latent generator is a callable ``decode(z, y) -> images``:

* ``z``: N×latent_dim latent codes, float (the network's dtype);
* ``y``: int64 (N,) class indices in 0 … num_classes-1;
* ``images``: N×C×H×W in [0, 1] (any float dtype; returned as float32).

Determinism contract (models/base.py GenerativeModel): sample ``i`` draws its latent code
(``latent_dim`` N(0, 1) float32 values) and then, only when no label is given, its class
(uniform in 0 … num_classes-1) from ``generators[i]`` and nothing else. Drawing ``z`` first means
that a sample whose class was drawn equals the sample asked for with that class. The network runs
on chunks of exactly ``micro_batch`` rows (the last one padded), so a row's output does not
depend on the batch size or its neighbours (see :func:`models.diffusion.unet_eps` for why).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Decoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def draw_latents(
    generators: Sequence[torch.Generator], labels: Sequence[int] | None, latent_dim: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z float32 N×latent_dim, y int64 (N,)) on the CPU, drawn as the module docstring says.

    ``labels``: one class per generator, or None to draw each sample's class from its generator.
    At least one generator; a label outside 0 … num_classes-1 is refused with ValueError.
    """
    if labels is not None and len(labels) != len(generators):
        raise ValueError(f"{len(generators)} generators need {len(generators)} labels, got {len(labels)}")
    zs, ys = [], []
    for i, gen in enumerate(generators):
        zs.append(torch.randn(latent_dim, generator=gen, device=gen.device, dtype=torch.float32).cpu())
        if labels is None:
            ys.append(int(torch.randint(num_classes, (), generator=gen, device=gen.device)))
        else:
            label = int(labels[i])
            if not 0 <= label < num_classes:
                raise ValueError(f"label {label} outside 0…{num_classes - 1}")
            ys.append(label)
    return torch.stack(zs), torch.tensor(ys, dtype=torch.long)


def decode_fixed_batch(decode: Decoder, z: torch.Tensor, y: torch.Tensor, micro_batch: int) -> torch.Tensor:
    """``decode`` run on chunks of exactly ``micro_batch`` rows, the last padded by repeating its
    last row; returns the N rows of output (no grad)."""
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be ≥ 1, got {micro_batch}")
    outs = []
    with torch.no_grad():
        for start in range(0, z.shape[0], micro_batch):
            zc, yc = z[start : start + micro_batch], y[start : start + micro_batch]
            rows = zc.shape[0]
            if rows < micro_batch:
                zc = torch.cat([zc, zc[-1:].expand(micro_batch - rows, -1)])
                yc = torch.cat([yc, yc[-1:].expand(micro_batch - rows)])
            outs.append(decode(zc, yc)[:rows])
    return torch.cat(outs)


def latent_sample(
    decode: Decoder,
    generators: Sequence[torch.Generator],
    labels: Sequence[int] | None,
    device: str | torch.device,
    *,
    latent_dim: int,
    num_classes: int,
    dtype: torch.dtype = torch.float32,
    micro_batch: int = 16,
) -> torch.Tensor:
    """Images from a latent generator: float32 N×C×H×W in [0, 1] on ``device``, N = len(generators).

    ``dtype`` is the network's parameter dtype (``z`` is cast to it); ``micro_batch`` as in
    :func:`decode_fixed_batch`. An empty ``generators`` is refused.
    """
    if not generators:
        raise ValueError("no generators: nothing to sample")
    z, y = draw_latents(generators, labels, latent_dim, num_classes)
    device = torch.device(device)
    out = decode_fixed_batch(decode, z.to(device=device, dtype=dtype), y.to(device), micro_batch)
    return out.to(torch.float32).clamp(0, 1)
