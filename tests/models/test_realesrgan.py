"""The ncnn → PyTorch conversion, checked against the ncnn runtime itself."""

import numpy as np
import pytest
import torch

from models import default_registry
from models import ncnn as ncnn_reader
from models.realesrgan import ANIMEVIDEOV3
from models.realesrgan_ncnn import srvgg_from_ncnn as state_dict_from_ncnn
from models.weights import WeightsError, fetch, package_file


def run_ncnn(bin_path, x: np.ndarray) -> np.ndarray:
    ncnn = pytest.importorskip("ncnn")
    net = ncnn.Net()
    for flag in (
        "use_vulkan_compute",
        "use_fp16_packed",
        "use_fp16_storage",
        "use_fp16_arithmetic",
        "use_bf16_storage",
    ):
        if hasattr(net.opt, flag):
            setattr(net.opt, flag, False)  # fp32 everywhere: the reference must not round
    net.load_param(str(bin_path.with_suffix(".param")))
    net.load_model(str(bin_path))
    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(np.ascontiguousarray(x)))
    ret, out = ex.extract("output")
    assert ret == 0
    return np.array(out)


def test_conversion_matches_ncnn_runtime():
    model = default_registry().build("realesr-animevideov3")
    x = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = model.module(x)[0].numpy()
    theirs = run_ncnn(package_file(ANIMEVIDEOV3.uri), x[0].numpy())
    assert ours.shape == theirs.shape == (3, 80, 112)
    assert np.abs(ours - theirs).max() <= 1e-4


def test_converted_state_dict_loads_in_spandrel():
    spandrel = pytest.importorskip("spandrel")
    path = package_file(ANIMEVIDEOV3.uri)
    layers = ncnn_reader.read_model(path.with_suffix(".param").read_text(), path.read_bytes())
    cfg, sd = state_dict_from_ncnn(layers)
    assert (cfg.in_channels, cfg.out_channels, cfg.features, cfg.convs, cfg.upscale) == (3, 3, 64, 16, 4)
    desc = spandrel.ModelLoader().load_from_state_dict(sd)  # strict: every key matches
    assert desc.architecture.name == "RealESRGAN Compact"
    assert desc.model.num_conv == cfg.convs and desc.model.num_feat == cfg.features
    assert desc.scale == 4 and desc.input_channels == 3


def test_truncated_bin_refused():
    path = package_file(ANIMEVIDEOV3.uri)
    with pytest.raises(ncnn_reader.NcnnFormatError, match="unexpected end"):
        ncnn_reader.read_model(path.with_suffix(".param").read_text(), path.read_bytes()[:-100])
    with pytest.raises(ncnn_reader.NcnnFormatError, match="bytes left"):
        ncnn_reader.read_model(path.with_suffix(".param").read_text(), path.read_bytes() + b"\0" * 8)


def test_sha256_pin_mismatch_refused(tmp_path):
    fake = tmp_path / "w.safetensors"
    fake.write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        fetch(str(fake), ANIMEVIDEOV3.sha256)
