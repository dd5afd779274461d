"""darkroom-vae-digits: a class-conditional variational autoencoder for 32×32 class-coloured digits.

Conditional (a CVAE, Sohn et al. 2015) so that jobs can ask for a class, as with the GAN: the
class embedding is given to both the encoder (next to the flattened features) and the decoder
(next to the latent code), so the latent code only has to carry the style of the stroke.

Encoder: strided 4×4 convolutions (SiLU) halve the side down to 4×4; a linear layer gives the
posterior's mean and log-variance. Decoder: a linear layer to a 4×4 map, then (nearest ×2
upsampling, 3×3 convolution) until ``image_size``; the last convolution gives per-pixel logits,
a sigmoid the image in [0, 1] (the Bernoulli mean; no pixel noise is sampled). No normalisation
layers, so train and eval mode compute the same thing.

Generation: ``decode(z, y)`` with z ~ N(0, I) drawn from the sample's generator
(:func:`models.latent.latent_sample`). Trained by ``models/training/train_vae_digits.py`` on the
training split of ``models/training/digits.py``; the whole VAE (encoder too) ships as
safetensors in ``models/weights/``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from models import catalog
from models.base import GenerativeModel
from models.catalog import LatentParams
from models.latent import doublings_from_4x4, latent_model, latent_sampler, load_pinned
from models.weights import WeightsSpec

NAME = catalog.VAE_DIGITS_NAME
LICENCE = catalog.DIGITS_LICENCE
WEIGHTS = catalog.VAE_DIGITS  # models/catalog.py: read by the registry without torch


@dataclass(frozen=True)
class VAEConfig:
    """image_size: side of the square images (4·2^k); channels: 3 (RGB); latent_dim: length of z;
    num_classes / embed_dim: the class embedding; features: encoder channels after its first
    convolution (doubled at every halving; the decoder mirrors them)."""

    image_size: int = 32
    channels: int = 3
    latent_dim: int = 16
    num_classes: int = 10
    embed_dim: int = 16
    features: int = 16

    @property
    def halvings(self) -> int:
        return doublings_from_4x4(self.image_size)

    def as_metadata(self) -> dict[str, str]:
        return {f"config.{k}": str(v) for k, v in asdict(self).items()}


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig = VAEConfig()):
        super().__init__()
        self.cfg = cfg
        widths = [cfg.features * 2**i for i in range(cfg.halvings)]  # 16, 32, 64 at 32×32
        self.embed = nn.Embedding(cfg.num_classes, cfg.embed_dim)
        enc: list[nn.Module] = []
        for c_in, c_out in zip([cfg.channels, *widths[:-1]], widths):
            enc += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.SiLU()]
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.posterior = nn.Linear(widths[-1] * 16 + cfg.embed_dim, 2 * cfg.latent_dim)
        self.project = nn.Linear(cfg.latent_dim + cfg.embed_dim, widths[-1] * 16)
        dec: list[nn.Module] = []
        for c_in, c_out in zip(widths[::-1], [*widths[-2::-1], cfg.channels]):
            dec += [nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, 1, 1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x float N×C×H×W in [0, 1], y int64 (N,) → (mean, log-variance), each N×latent_dim."""
        h = torch.cat([self.encoder(x * 2 - 1), self.embed(y).to(x.dtype)], dim=1)
        mean, logvar = self.posterior(h).chunk(2, dim=1)
        return mean, logvar

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z float N×latent_dim, y int64 (N,) → per-pixel logits N×C×H×W."""
        h = self.project(torch.cat([z, self.embed(y).to(z.dtype)], dim=1))
        return self.decoder(h.view(z.shape[0], -1, 4, 4))

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z float N×latent_dim, y int64 (N,) → images N×C×H×W in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z, y))

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (logits N×C×H×W, mean, logvar) for z = mean + exp(logvar/2)·noise."""
        mean, logvar = self.encode(x, y)
        return self.decode_logits(mean + torch.exp(0.5 * logvar) * noise, y), mean, logvar


def negative_elbo(
    logits: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor, kl_weight: float = 1.0
):
    """(loss, reconstruction, kl), each a scalar in nats per image averaged over the batch:
    Bernoulli cross-entropy of ``target`` (in [0, 1]) summed over pixels + kl_weight · KL(q(z|x) ‖ N(0, I))."""
    n = target.shape[0]
    recon = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / n
    kl = 0.5 * torch.sum(mean**2 + logvar.exp() - 1 - logvar) / n
    return recon + kl_weight * kl, recon, kl


def sampler(net: VAE, micro_batch: int = 16):
    """The GenerativeModel ``sample`` function of ``net``: the decoder on z ~ N(0, I) (models.latent)."""
    return latent_sampler(net, decode=net.decode, micro_batch=micro_batch)


def load(spec: WeightsSpec = WEIGHTS, cfg: VAEConfig = VAEConfig()) -> VAE:
    """The shipped VAE (sha256-checked), in eval mode on the CPU."""
    return load_pinned(VAE(cfg), spec)


def build(p: LatentParams | None = None, spec: WeightsSpec = WEIGHTS, micro_batch: int = 16) -> GenerativeModel:
    """The shipped weights as a GenerativeModel sampling at ``p.temperature`` (models.latent)."""
    net = load(spec)
    temperature = (p or LatentParams()).temperature
    return latent_model(
        NAME, net, decode=net.decode, sampler="vae", spec=spec, micro_batch=micro_batch, temperature=temperature
    )


__all__ = [
    "VAEConfig",
    "VAE",
    "LatentParams",
    "build",
    "load",
    "negative_elbo",
    "sampler",
    "NAME",
    "WEIGHTS",
    "LICENCE",
]
