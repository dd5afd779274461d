"""darkroom-gan-digits: a class-conditional DCGAN for 32×32 class-coloured digits.

Generator (DCGAN, Radford et al. 2016): the latent code concatenated with a learned class
embedding is projected to a 4×4 map, then transposed convolutions (4×4, stride 2) with BatchNorm
and ReLU double the side up to ``image_size``; a sigmoid gives [0, 1]. BatchNorm runs in eval
mode at inference (fixed statistics, recalibrated on the final weights after training), so a
sample never depends on the others in its batch.

Discriminator (training only, not shipped): strided 4×4 convolutions with spectral norm and
leaky ReLU, and a projection head (Miyato & Koyama 2018): logit = w·h + embed(y)·h; optionally
a minibatch-stddev feature (Karras et al. 2018; the shipped weights were trained without it).

Trained by ``models/training/train_gan_digits.py`` on the training split of
``models/training/digits.py`` (class-coloured); only the generator's weights ship, as safetensors
in ``models/weights/``. Sampling: :func:`models.latent.latent_sample`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from models import catalog
from models.base import GenerativeModel
from models.catalog import LatentParams
from models.latent import doublings_from_4x4, latent_model, latent_sampler, load_pinned
from models.weights import WeightsSpec

NAME = catalog.GAN_DIGITS_NAME
LICENCE = catalog.DIGITS_LICENCE
WEIGHTS = catalog.GAN_DIGITS  # models/catalog.py: read by the registry without torch


@dataclass(frozen=True)
class GANConfig:
    """image_size: side of the square output (4·2^k); channels: 3 (RGB);
    latent_dim: length of z; num_classes: classes of the label embedding (embed_dim wide);
    g_features: generator channels at 4×4 (halved at every doubling);
    d_features: discriminator channels after its first convolution (doubled at every halving);
    d_minibatch_std: whether the discriminator sees the minibatch-stddev feature."""

    image_size: int = 32
    channels: int = 3
    latent_dim: int = 64
    num_classes: int = 10
    embed_dim: int = 32
    g_features: int = 64
    d_features: int = 24
    d_minibatch_std: bool = False

    @property
    def doublings(self) -> int:
        return doublings_from_4x4(self.image_size)

    def as_metadata(self) -> dict[str, str]:
        return {f"config.{k}": str(v) for k, v in asdict(self).items()}


class Generator(nn.Module):
    """(z float N×latent_dim, y int64 (N,)) → float N×channels×image_size×image_size in [0, 1]."""

    def __init__(self, cfg: GANConfig = GANConfig()):
        super().__init__()
        self.cfg = cfg
        ch = cfg.g_features
        self.embed = nn.Embedding(cfg.num_classes, cfg.embed_dim)
        self.project = nn.Linear(cfg.latent_dim + cfg.embed_dim, ch * 16, bias=False)
        layers: list[nn.Module] = [nn.BatchNorm2d(ch), nn.ReLU()]
        for _ in range(cfg.doublings - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, cfg.channels, 4, 2, 1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, self.embed(y).to(z.dtype)], dim=1))
        return self.body(h.view(z.shape[0], self.cfg.g_features, 4, 4))


class Discriminator(nn.Module):
    """(x float N×channels×image_size×image_size in [0, 1], y int64 (N,)) → float (N,) logits (real > 0).

    Sees real and generated batches separately, so the minibatch-stddev feature (when
    ``cfg.d_minibatch_std``) tells it how varied a batch is.
    """

    def __init__(self, cfg: GANConfig = GANConfig()):
        super().__init__()
        ch, in_ch, layers = cfg.d_features, cfg.channels, []
        for _ in range(cfg.doublings):
            layers += [spectral_norm(nn.Conv2d(in_ch, ch, 4, 2, 1)), nn.LeakyReLU(0.2)]
            in_ch, ch = ch, ch * 2
        self.body = nn.Sequential(*layers)
        self.minibatch_std = cfg.d_minibatch_std
        width = (in_ch + cfg.d_minibatch_std) * 16
        self.linear = spectral_norm(nn.Linear(width, 1))
        self.embed = spectral_norm(nn.Embedding(cfg.num_classes, width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body(x * 2 - 1)
        if self.minibatch_std:
            spread = h.std(dim=0, unbiased=False).mean().expand(h.shape[0], 1, *h.shape[2:])
            h = torch.cat([h, spread], dim=1)
        h = h.flatten(1)
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


def sampler(net: Generator, micro_batch: int = 16):
    """The GenerativeModel ``sample`` function of ``net`` (see models.latent.latent_sample)."""
    return latent_sampler(net, decode=net, micro_batch=micro_batch)


def load(spec: WeightsSpec = WEIGHTS, cfg: GANConfig = GANConfig()) -> Generator:
    """The shipped generator (sha256-checked), in eval mode on the CPU."""
    return load_pinned(Generator(cfg), spec)


def build(p: LatentParams | None = None, spec: WeightsSpec = WEIGHTS, micro_batch: int = 16) -> GenerativeModel:
    """The shipped weights as a GenerativeModel sampling at ``p.temperature`` (models.latent)."""
    net = load(spec)
    temperature = (p or LatentParams()).temperature
    return latent_model(
        NAME, net, decode=net, sampler="gan", spec=spec, micro_batch=micro_batch, temperature=temperature
    )


__all__ = [
    "GANConfig",
    "Generator",
    "Discriminator",
    "LatentParams",
    "build",
    "load",
    "sampler",
    "NAME",
    "WEIGHTS",
    "LICENCE",
]
