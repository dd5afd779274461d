"""Read ncnn ``.param`` / ``.bin`` model files into numpy arrays.

Facts about the format this relies on:
- ``.param`` is text: a magic line (7767517), a "layers blobs" count line, then one line
  per layer: type, name, input count, output count, input blob names, output blob
  names, then ``key=value`` params (integers, floats, or ``-23300=n,a,b`` arrays).
- ``.bin`` holds the weights of the layers in ``.param`` order. A Convolution's weight
  starts with a 4-byte tag (0x01306B47: fp16 follows; 0: fp32 follows), then
  ``[out][in][kh][kw]`` values padded to 4 bytes; its bias (param 5=1) and PReLU slopes
  are raw fp32 without a tag.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

TAG_FP16 = 0x01306B47
TAG_FP32 = 0x00000000


class NcnnFormatError(ValueError):
    pass


@dataclass
class NcnnLayer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, object]
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def _param_value(text: str) -> object:
    if "." in text or "e" in text.lower():
        return float(text)
    return int(text)


def parse_param(text: str) -> list[NcnnLayer]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != "7767517":
        raise NcnnFormatError("not an ncnn .param file (missing magic 7767517)")
    n_layers = int(lines[1].split()[0])
    layers = []
    for line in lines[2 : 2 + n_layers]:
        parts = line.split()
        ltype, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
        rest = parts[4:]
        inputs, outputs = rest[:n_in], rest[n_in : n_in + n_out]
        params: dict[int, object] = {}
        for kv in rest[n_in + n_out :]:
            key, value = kv.split("=", 1)
            k = int(key)
            if k <= -23300:  # array param: -23300-k=count,v1,v2,…
                params[-(k + 23300)] = [_param_value(v) for v in value.split(",")[1:]]
            else:
                params[k] = _param_value(value)
        layers.append(NcnnLayer(ltype, name, inputs, outputs, params))
    if len(layers) != n_layers:
        raise NcnnFormatError(f".param declares {n_layers} layers but lists {len(layers)}")
    return layers


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def raw_fp32(self, count: int) -> np.ndarray:
        end = self.pos + 4 * count
        if end > len(self.data):
            raise NcnnFormatError("unexpected end of .bin")
        out = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).copy()
        self.pos = end
        return out

    def tagged(self, count: int) -> np.ndarray:
        if self.pos + 4 > len(self.data):
            raise NcnnFormatError("unexpected end of .bin")
        (tag,) = struct.unpack_from("<I", self.data, self.pos)
        self.pos += 4
        if tag == TAG_FP16:
            nbytes = 2 * count
            out = np.frombuffer(self.data, dtype="<f2", count=count, offset=self.pos)
            self.pos += (nbytes + 3) // 4 * 4
            return out.astype(np.float32)
        if tag == TAG_FP32:
            return self.raw_fp32(count)
        raise NcnnFormatError(f"unsupported weight tag 0x{tag:08X} (quantized weights?)")


def read_model(param_text: str, bin_data: bytes) -> list[NcnnLayer]:
    """Parse both files; every Convolution and PReLU layer gets its weights attached.

    Convolution: ``weight`` (out, in, kh, kw) float32 and, if present, ``bias`` (out,).
    PReLU: ``slope`` (num_slope,).
    """
    layers = parse_param(param_text)
    reader = _Reader(bin_data)
    for layer in layers:
        if layer.type == "Convolution":
            out_ch, k = int(layer.params[0]), int(layer.params[1])
            kh = int(layer.params.get(11, k))
            size = int(layer.params[6])
            w = reader.tagged(size)
            layer.weights["weight"] = w.reshape(out_ch, size // (out_ch * k * kh), kh, k)
            if int(layer.params.get(5, 0)):
                layer.weights["bias"] = reader.raw_fp32(out_ch)
        elif layer.type == "PReLU":
            layer.weights["slope"] = reader.raw_fp32(int(layer.params.get(0, 1)))
        elif layer.type in ("InnerProduct", "Deconvolution", "ConvolutionDepthWise", "BatchNorm"):
            raise NcnnFormatError(f"layer type {layer.type} is not supported by this reader")
    if reader.pos != len(bin_data):
        raise NcnnFormatError(
            f".bin has {len(bin_data) - reader.pos} bytes left after the last layer: "
            "the .param does not describe this .bin"
        )
    return layers
