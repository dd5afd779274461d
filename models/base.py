"""The contract every image model fulfils, and how weights are described."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WeightsSpec:
    """Where a model's weights come from, described as data.

    uri: an fsspec URI (``s3://…``, a local path) or ``package://<module>/<relative path>``
        for files shipped inside an installed Python package.
    sha256: hex digest of the file at ``uri``; checked before use, a mismatch is refused.
    format: ``safetensors`` | ``pth`` (loaded with ``weights_only=True``) | ``ncnn``
        (a ``.bin`` whose sibling ``.param`` describes the layers).
    scale: output size / input size of the network these weights belong to.
    value_range: range of the network's input and output pixels.
    licence: licence of the weights themselves.
    """

    uri: str
    sha256: str
    format: str
    scale: int
    licence: str
    value_range: tuple[float, float] = (0.0, 1.0)


@dataclass
class ImageModel:
    """A ready-to-run model.

    ``module`` maps a float tensor N×C×H×W with values in [0, 1] to
    N×C×round(H·scale)×round(W·scale), values in [0, 1] (clamping is the caller's job).
    ``channels`` is C (1 or 3); ``supports_half`` says whether fp16/bf16 is safe;
    ``weights_sha256`` is None for models without learned weights.
    """

    name: str
    module: torch.nn.Module
    scale: float
    channels: int
    supports_half: bool
    weights_sha256: str | None = None

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return round(height * self.scale), round(width * self.scale)
