"""Sampling from latent-variable generators (GAN generators, VAE decoders) as a pure function.

A latent generator is a callable ``decode(z, y) -> images``:

* ``z``: N×latent_dim latent codes, float (the network's dtype);
* ``y``: int64 (N,) class indices in 0 … num_classes-1;
* ``images``: N×C×H×W in [0, 1] (any float dtype; returned as float32).

Determinism contract (models/base.py GenerativeModel): sample ``i`` draws its latent code
(``latent_dim`` N(0, 1) float32 values) and then, only when no label is given, its class
(uniform in 0 … num_classes-1) from ``generators[i]`` and nothing else. The code is then scaled
by the ``temperature`` (:class:`LatentParams`): below 1 the samples stay nearer the typical
images of their class ("truncation", Brock et al. 2019; reduced-temperature sampling, Kingma &
Dhariwal 2018) — more of them legible, less varied; docs/generation.md measures both. Drawing ``z`` first means
that a sample whose class was drawn equals the sample asked for with that class. The network runs
on chunks of exactly ``micro_batch`` rows (the last one padded), so a row's output does not
depend on the batch size or its neighbours (see :func:`models.diffusion.unet_eps` for why).

:func:`latent_model` wraps such a network (models.gan, models.vae) as a GenerativeModel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import torch
from torch import nn

from models.base import GenerativeModel, SampleFn
from models.weights import WeightsSpec, fetch, load_state_dict

Decoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Net = TypeVar("Net", bound=nn.Module)


class LatentConfig(Protocol):
    """What :func:`latent_sampler` and :func:`latent_model` read of a network's ``cfg``
    (models.gan.GANConfig, models.vae.VAEConfig)."""

    image_size: int
    channels: int
    latent_dim: int
    num_classes: int


def doublings_from_4x4(image_size: int) -> int:
    """k ≥ 1 with image_size = 4·2^k: how many times a decoder doubles its 4×4 map to reach
    the image side (an encoder halves as often); ValueError for any other size."""
    k = int(math.log2(image_size // 4))
    if 4 * 2**k != image_size or k < 1:
        raise ValueError(f"image_size must be 4·2^k with k ≥ 1, got {image_size}")
    return k


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
    temperature: float = 1.0,
) -> torch.Tensor:
    """Images from a latent generator: float32 N×C×H×W in [0, 1] on ``device``, N = len(generators).

    ``dtype`` is the network's parameter dtype (``z`` is cast to it); ``micro_batch`` as in
    :func:`decode_fixed_batch`; ``z`` is scaled by ``temperature``. An empty ``generators`` is refused.
    """
    if not generators:
        raise ValueError("no generators: nothing to sample")
    z, y = draw_latents(generators, labels, latent_dim, num_classes)
    device = torch.device(device)
    out = decode_fixed_batch(decode, (z * temperature).to(device=device, dtype=dtype), y.to(device), micro_batch)
    return out.to(torch.float32).clamp(0, 1)


def latent_sampler(net: nn.Module, decode: Decoder, micro_batch: int = 16, temperature: float = 1.0) -> SampleFn:
    """The GenerativeModel ``sample`` function of ``decode``, a method of ``net`` (or ``net``
    itself): :func:`latent_sample` with ``net.cfg``'s latent_dim and num_classes (a
    :class:`LatentConfig`) and ``net``'s parameter dtype, read at each call (so it follows
    ``net.to(dtype)``)."""

    def sample(generators, labels, device):
        cfg: LatentConfig = net.cfg
        dtype = next(net.parameters()).dtype
        return latent_sample(
            decode, generators, labels, device,
            latent_dim=cfg.latent_dim, num_classes=cfg.num_classes, dtype=dtype, micro_batch=micro_batch,
            temperature=temperature,
        )  # fmt: skip

    return sample


def load_pinned(net: Net, spec: WeightsSpec) -> Net:
    """``net`` with the weights of ``spec`` (safetensors, sha256-checked; never unpickled),
    in eval mode; returns ``net``."""
    net.load_state_dict(load_state_dict(fetch(spec.uri, spec.sha256)))
    return net.eval()


def latent_model(
    name: str,
    net: nn.Module,
    decode: Decoder,
    sampler: str,
    spec: WeightsSpec,
    micro_batch: int = 16,
    temperature: float = 1.0,
) -> GenerativeModel:
    """The GenerativeModel of a latent-code generator (one network evaluation per sample):
    images ``net.cfg.channels``×``image_size``×``image_size`` from :func:`latent_sampler`;
    ``sampler`` ("gan" | "vae") and ``spec.sha256`` go into the manifest."""
    cfg: LatentConfig = net.cfg
    return GenerativeModel(
        name=name,
        module=net,
        sample=latent_sampler(net, decode, micro_batch, temperature),
        shape=(cfg.channels, cfg.image_size, cfg.image_size),
        sampler=sampler,
        steps=1,
        weights_sha256=spec.sha256,
        num_classes=cfg.num_classes,
    )
