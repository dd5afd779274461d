"""Real-ESRGAN RRDBNet (x4plus, x4plus-anime): the ncnn → PyTorch conversion, checked against the ncnn runtime.

(The SRVGGNetCompact conversion is tested in test_realesrgan.py.)
"""

import numpy as np
import pytest
import torch

from models import default_registry
from models import ncnn as ncnn_reader
from models.realesrgan import ANIMEVIDEOV3, X4PLUS, X4PLUS_ANIME
from models.realesrgan_ncnn import rrdbnet_from_ncnn as state_dict_from_ncnn
from models.weights import package_file
from tests.models.test_realesrgan import run_ncnn

MODELS = [("realesrgan-x4plus", X4PLUS, 23), ("realesrgan-x4plus-anime", X4PLUS_ANIME, 6)]
IDS = [name for name, _, _ in MODELS]


def _layers(spec):
    path = package_file(spec.uri)
    return ncnn_reader.read_model(path.with_suffix(".param").read_text(), path.read_bytes())


@pytest.mark.parametrize("name, spec, _blocks", MODELS, ids=IDS)
def test_conversion_matches_ncnn_runtime(name, spec, _blocks):
    model = default_registry().build(name)
    assert model.weights_sha256 == spec.sha256 and model.scale == 4
    x = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = model.module(x)[0].numpy()
    theirs = run_ncnn(package_file(spec.uri), x[0].numpy())
    assert ours.shape == theirs.shape == (3, 48, 64)
    assert np.abs(ours - theirs).max() <= 1e-4


@pytest.mark.parametrize("name, spec, blocks", MODELS, ids=IDS)
def test_converted_state_dict_loads_in_spandrel(name, spec, blocks):
    spandrel = pytest.importorskip("spandrel")
    cfg, sd = state_dict_from_ncnn(_layers(spec))
    assert (cfg.blocks, cfg.features, cfg.growth, cfg.in_channels, cfg.out_channels) == (blocks, 64, 32, 3, 3)
    desc = spandrel.ModelLoader().load_from_state_dict(sd)  # strict: every key and shape matches
    assert desc.architecture.name == "ESRGAN"
    assert sum(p.numel() for p in desc.model.parameters()) == sum(v.numel() for v in sd.values())
    assert desc.scale == 4 and desc.input_channels == 3 and desc.output_channels == 3


def test_other_graphs_refused():
    with pytest.raises(ncnn_reader.NcnnFormatError, match="not a Real-ESRGAN RRDBNet"):
        state_dict_from_ncnn(_layers(ANIMEVIDEOV3))  # an SRVGGNetCompact export
    layers = _layers(X4PLUS_ANIME)
    concat = next(layer for layer in layers if layer.type == "Concat")
    concat.inputs.reverse()  # dense inputs out of torch.cat order: weights would be misread
    with pytest.raises(ncnn_reader.NcnnFormatError, match="Concat"):
        state_dict_from_ncnn(layers)
