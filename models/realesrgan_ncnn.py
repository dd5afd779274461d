"""Real-ESRGAN's ncnn exports mapped to PyTorch state_dicts in Real-ESRGAN's own key layout.

Two architectures, whose networks spandrel builds from these state_dicts (models/realesrgan.py):

* SRVGGNetCompact: a plain stack of 3×3 convolutions with PReLU, then a pixel shuffle, plus the
  input upsampled by nearest neighbour as a residual; keys ``body.{i}.weight`` / ``.bias``.
* RRDBNet ×4 (ESRGAN's Residual-in-Residual Dense Blocks): ``conv_first`` → ``blocks`` RRDBs →
  ``conv_body``, added to the ``conv_first`` features; two (nearest ×2 upsample → conv →
  LeakyReLU) stages, ``conv_hr`` + LeakyReLU and ``conv_last``. Each RRDB chains three residual
  dense blocks (five 3×3 convs, each seeing the block input and every earlier conv's output) and
  scales every residual by 0.2; keys ``body.{i}.rdb{1,2,3}.conv{1..5}``, ``conv_up1`` ….

Each converter returns (the export's shape, state_dict) and refuses (``NcnnFormatError``) a graph
that is not the architecture it maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.ncnn import NcnnFormatError, NcnnLayer

SCALE = 4  # RRDBNet: two nearest ×2 upsampling stages; the ×1/×2 variants (pixel-unshuffled input) are not handled
LRELU_SLOPE = 0.2
RESIDUAL_SCALE = 0.2


@dataclass(frozen=True)
class SRVGGConfig:
    in_channels: int = 3
    out_channels: int = 3
    features: int = 64
    convs: int = 16
    upscale: int = 4


@dataclass(frozen=True)
class RRDBConfig:
    in_channels: int = 3
    out_channels: int = 3
    features: int = 64  # num_feat
    growth: int = 32  # num_grow_ch: channels each dense conv adds
    blocks: int = 23  # RRDBs in the body


def srvgg_from_ncnn(layers: list[NcnnLayer]) -> tuple[SRVGGConfig, dict[str, torch.Tensor]]:
    """Map an ncnn SRVGGNetCompact export to (config, state_dict).

    The export lists conv, PReLU, conv, PReLU, …, conv in the same order as the network's ``body``
    (``body.{i}.weight``: a conv's weight and bias, or a PReLU's slopes).
    """
    weighted = [layer for layer in layers if layer.type in ("Convolution", "PReLU")]
    convs = [layer for layer in weighted if layer.type == "Convolution"]
    shuffles = [layer for layer in layers if layer.type == "PixelShuffle"]
    if len(convs) < 2 or not shuffles:
        raise NcnnFormatError("not an SRVGGNetCompact export (need ≥2 convolutions and a PixelShuffle)")
    upscale = int(shuffles[0].params[0])
    first, last = convs[0].weights["weight"], convs[-1].weights["weight"]
    cfg = SRVGGConfig(
        in_channels=first.shape[1],
        out_channels=last.shape[0] // upscale**2,
        features=first.shape[0],
        convs=len(convs) - 2,
        upscale=upscale,
    )
    sd: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(weighted):
        if layer.type == "Convolution":
            sd[f"body.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(layer.weights["weight"]))
            sd[f"body.{i}.bias"] = torch.from_numpy(layer.weights["bias"])
        else:
            sd[f"body.{i}.weight"] = torch.from_numpy(layer.weights["slope"])
    return cfg, sd


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise NcnnFormatError(f"not a Real-ESRGAN RRDBNet ×4 export: {what}")


def _close(value: object, target: float) -> bool:
    return isinstance(value, (int, float)) and abs(float(value) - target) < 1e-6


def rrdbnet_from_ncnn(layers: list[NcnnLayer]) -> tuple[RRDBConfig, dict[str, torch.Tensor]]:
    """Map an ncnn RRDBNet export to (config, state_dict).

    The export (PyTorch → ONNX → ncnn) lists the convolutions in forward order:
    ``conv_first``, then per RRDB and per dense block ``conv1..conv5``, then
    ``conv_body, conv_up1, conv_up2, conv_hr, conv_last``; so the block count is
    ``(convs - 6) / 15``. LeakyReLU(0.2) is fused into the convolutions (param 9=2),
    the 0.2 residual scalings are Eltwise sums with coefficients (0.2, 1), the long skip
    is a BinaryOp add and the upsampling two nearest Interp ×2 layers. Before mapping,
    the graph is walked (through Split layers) to check that every convolution reads
    what its role says — in particular that each dense Concat lists its inputs in
    PyTorch's ``torch.cat`` order, which fixes the input-channel order of the weights.
    """
    convs = [layer for layer in layers if layer.type == "Convolution"]
    blocks, rest = divmod(len(convs) - 6, 15)
    _expect(len(convs) >= 21 and rest == 0, f"{len(convs)} convolutions is not 1 + 15·blocks + 5")
    conv_first = convs[0]
    cfg = RRDBConfig(
        in_channels=conv_first.weights["weight"].shape[1],
        out_channels=convs[-1].weights["weight"].shape[0],
        features=conv_first.weights["weight"].shape[0],
        growth=convs[1].weights["weight"].shape[0],
        blocks=blocks,
    )

    source: dict[str, NcnnLayer] = {}  # blob → the layer that computed it, Splits seen through
    for layer in layers:
        for blob in layer.outputs:
            source[blob] = source[layer.inputs[0]] if layer.type == "Split" else layer

    def reads(layer: NcnnLayer) -> list[NcnnLayer]:
        return [source[blob] for blob in layer.inputs]

    def check_conv(conv: NcnnLayer, name: str, in_ch: int, out_ch: int, act: bool) -> None:
        w = conv.weights["weight"]
        expected = (out_ch, in_ch, 3, 3)
        _expect(w.shape == expected, f"{name} ({conv.name}) has weight {w.shape}, expected {expected}")
        _expect("bias" in conv.weights, f"{name} ({conv.name}) has no bias")
        plain = all(
            int(conv.params.get(k, default)) == 1 for k, default in ((2, 1), (3, 1), (4, 0))
        )  # dilation, stride, pad
        _expect(plain, f"{name} ({conv.name}) is not a stride-1, pad-1 convolution")
        if act:
            slope = conv.params.get(10, [None])
            _expect(
                int(conv.params.get(9, 0)) == 2 and _close(slope[0], LRELU_SLOPE),
                f"{name} ({conv.name}) lacks a fused LeakyReLU({LRELU_SLOPE})",
            )
        else:
            _expect(int(conv.params.get(9, 0)) == 0, f"{name} ({conv.name}) has an unexpected activation")

    def check_reads(layer: NcnnLayer, name: str, expected: list[NcnnLayer]) -> None:
        got = reads(layer)
        _expect(
            [x.name for x in got] == [x.name for x in expected],
            f"{name} ({layer.name}) reads {[x.name for x in got]}, expected {[x.name for x in expected]}",
        )

    def check_residual(add: NcnnLayer, name: str, scaled: NcnnLayer, skip: NcnnLayer) -> None:
        _expect(add.type == "Eltwise" and int(add.params.get(0, 1)) == 1, f"{name} ({add.name}) is not an Eltwise sum")
        coeffs = dict(zip((x.name for x in reads(add)), add.params.get(1, [])))
        ok = (
            len(add.inputs) == 2
            and _close(coeffs.get(scaled.name), RESIDUAL_SCALE)
            and _close(coeffs.get(skip.name), 1.0)
        )
        _expect(ok, f"{name} ({add.name}) is not {scaled.name}·{RESIDUAL_SCALE} + {skip.name}")

    def consumer(layer: NcnnLayer) -> NcnnLayer:
        users = [x for x in layers if x.type != "Split" and any(source.get(b) is layer for b in x.inputs)]
        _expect(len(users) == 1, f"{layer.name} is read by {len(users)} layers, expected 1")
        return users[0]

    _expect(reads(conv_first)[0].type == "Input", "the first convolution does not read the input")
    check_conv(conv_first, "conv_first", cfg.in_channels, cfg.features, act=False)
    f, g = cfg.features, cfg.growth
    sd: dict[str, torch.Tensor] = {}

    def put(key: str, conv: NcnnLayer) -> None:
        sd[f"{key}.weight"] = torch.from_numpy(np.ascontiguousarray(conv.weights["weight"]))
        sd[f"{key}.bias"] = torch.from_numpy(conv.weights["bias"])

    put("conv_first", conv_first)
    pos = 1
    feat = conv_first
    for b in range(blocks):
        block_in = rdb_in = feat
        for r in (1, 2, 3):
            dense: list[NcnnLayer] = []
            for c in range(1, 6):
                conv, name = convs[pos], f"body.{b}.rdb{r}.conv{c}"
                pos += 1
                check_conv(conv, name, f + (c - 1) * g, g if c < 5 else f, act=c < 5)
                if c == 1:
                    check_reads(conv, name, [rdb_in])
                else:
                    concat = source[conv.inputs[0]]
                    _expect(concat.type == "Concat", f"{name} ({conv.name}) does not read a Concat")
                    check_reads(concat, f"the Concat before {name}", [rdb_in, *dense])
                dense.append(conv)
                put(name, conv)
            rdb_out = consumer(dense[-1])
            check_residual(rdb_out, f"body.{b}.rdb{r} residual", dense[-1], rdb_in)
            rdb_in = rdb_out
        feat = consumer(rdb_in)
        check_residual(feat, f"body.{b} residual", rdb_in, block_in)

    conv_body, conv_up1, conv_up2, conv_hr, conv_last = convs[pos:]
    check_conv(conv_body, "conv_body", f, f, act=False)
    check_reads(conv_body, "conv_body", [feat])
    skip = consumer(conv_body)
    is_add = skip.type == "BinaryOp" and int(skip.params.get(0, 0)) == 0  # op_type 0: add
    summands = {x.name for x in reads(skip)}
    _expect(is_add and summands == {conv_first.name, conv_body.name}, f"{skip.name} is not conv_first + conv_body")
    feat = skip
    for name, conv in (("conv_up1", conv_up1), ("conv_up2", conv_up2)):
        up = source[conv.inputs[0]]
        nearest_x2 = int(up.params.get(0, 0)) == 1 and _close(up.params.get(1), 2.0) and _close(up.params.get(2), 2.0)
        _expect(up.type == "Interp" and nearest_x2, f"{name} ({conv.name}) does not read a nearest ×2 Interp")
        check_reads(up, f"the Interp before {name}", [feat])
        check_conv(conv, name, f, f, act=True)
        feat = conv
    check_conv(conv_hr, "conv_hr", f, f, act=True)
    check_reads(conv_hr, "conv_hr", [conv_up2])
    check_conv(conv_last, "conv_last", f, cfg.out_channels, act=False)
    check_reads(conv_last, "conv_last", [conv_hr])
    tail = {
        "conv_body": conv_body,
        "conv_up1": conv_up1,
        "conv_up2": conv_up2,
        "conv_hr": conv_hr,
        "conv_last": conv_last,
    }
    for key, conv in tail.items():
        put(key, conv)
    return cfg, sd
