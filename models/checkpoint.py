"""Any public restoration checkpoint a user brings, its architecture detected by spandrel.

A ``checkpoint`` step names a weights file on any fsspec filesystem (``s3://…``, a local
path, ``package://…``) and optionally pins its sha256::

    - model: checkpoint
      params: {uri: s3://models/RealESRGAN_x4plus.pth, sha256: "…"}

The file is fetched (and checked against the pin) by :func:`models.weights.fetch`, read
without unpickling code by :func:`models.weights.load_state_dict`, unwrapped from the usual
training wrappers (``params_ema``, ``params``, ``state_dict``, ``model``, ``net_g``; a
``module.`` prefix from DataParallel) and handed to spandrel, which detects the
architecture (ESRGAN, Real-ESRGAN Compact, SwinIR, HAT, DAT, SCUNet, DRUNet, …) and
builds the network. Scale, channels and fp16 safety come from spandrel's descriptor.

Weights digest. The manifest and the job fingerprint record the digest of the file's
content: the pin when there is one, otherwise the digest computed by
:func:`weights_digest` on the driver when the run is planned (the file is read there
once per process and version). Every model actor computes the digest of the file it
actually loaded (``ImageModel.weights_sha256``); the pipeline refuses to run when it
differs from the planned one, so a file replaced mid-run cannot produce outputs that the
manifest attributes to other weights.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from models import catalog
from models import fetch as remote
from models.base import ImageModel
from models.catalog import CheckpointParams
from models.weights import PACKAGE_SCHEME, WeightsError, fetch, file_sha256, load_state_dict, package_file

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g")  # in order of preference
LICENCE = catalog.CHECKPOINT_LICENCE
SHOWN_KEYS = 10  # keys listed in an error message


class SpandrelModule(nn.Module):
    """An ``nn.Module`` around a spandrel descriptor.

    The network is a registered submodule (so ``.to(device)`` moves it); calls go through
    the descriptor, which pads inputs to the architecture's size requirements (window
    multiples for transformers), applies the architecture's own call convention (DRUNet
    appends a noise-level channel), crops the padding off and clamps the output to [0, 1].
    spandrel's call API takes one image at a time (some call conventions build 1×… tensors),
    so a batch is run image by image.
    """

    def __init__(self, descriptor):
        super().__init__()
        self.net = descriptor.model
        self._descriptor = descriptor  # shares ``net``: not a second copy of the weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            return self._descriptor(x)
        return torch.cat([self._descriptor(x[i : i + 1]) for i in range(x.shape[0])])


def unwrap(obj: dict) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, out of the usual training wrappers and DataParallel prefixes."""
    for _ in range(3):  # e.g. {"state_dict": {"params_ema": {...}}}
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
        if inner is None:
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"no tensors found; top-level keys: {_some(list(obj))}")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def read_state_dict(uri: str, sha256: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Fetch, verify and read the checkpoint at ``uri``: (unwrapped state_dict, the file's sha256)."""
    path = fetch(uri, sha256)
    digest = sha256 or file_sha256(path)  # fetch has checked the pin
    try:
        raw = load_state_dict(path)
    except WeightsError as exc:  # named after the local file (a digest, for downloads): name the URI instead
        raise WeightsError(f"{uri}: {str(exc).removeprefix(f'{Path(path).name}: ')}") from None
    except Exception as exc:  # a corrupt safetensors header, a truncated zip, …
        raise WeightsError(f"{uri}: cannot be read as {Path(path).suffix or 'a weights file'}: {exc}") from None
    try:
        return unwrap(raw), digest
    except WeightsError as exc:
        raise WeightsError(f"{uri}: {exc}") from None


def describe(state_dict: dict[str, torch.Tensor], uri: str = "<state_dict>"):
    """spandrel's descriptor for ``state_dict``, or a ``WeightsError`` that says what is wrong."""
    import spandrel  # ~2 s to import: only where a checkpoint is actually loaded

    try:
        return spandrel.ModelLoader().load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError:
        raise WeightsError(
            f"{uri}: architecture not detected: spandrel {spandrel.__version__} recognises none of its "
            f"architectures in this state_dict ({len(state_dict)} tensors; keys: {_some(list(state_dict))})"
        ) from None
    except Exception as exc:  # detected, but the tensors do not fit the network built for them
        arch = _detected_architecture(state_dict)
        raise WeightsError(f"{uri}: detected as {arch}, but the checkpoint does not fit it: {_mismatch(exc)}") from None


def check_descriptor(desc, uri: str) -> None:
    """Refuse what darkroom cannot run: a model that needs a mask, or other than RGB→RGB / gray→gray."""
    import spandrel

    arch = desc.architecture.name
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise WeightsError(
            f"{uri}: {arch} is a {desc.purpose} model (it needs a mask as well as an image); not supported"
        )
    if desc.input_channels != desc.output_channels or desc.input_channels not in (1, 3):
        raise WeightsError(
            f"{uri}: {arch} maps {desc.input_channels} channels to {desc.output_channels}; "
            "darkroom runs models whose input and output are both RGB (3) or both grayscale (1)"
        )


def build(p: CheckpointParams) -> ImageModel:
    state_dict, digest = read_state_dict(p.uri, p.sha256)
    desc = describe(state_dict, p.uri)
    del state_dict  # the network holds its own copy
    import spandrel

    arch = desc.architecture.name
    check_descriptor(desc, p.uri)
    if desc.tiling != spandrel.ModelTiling.SUPPORTED:
        log.warning(
            "%s: spandrel advises against tiling %s (%s); consider resources.tile: 0", p.uri, arch, desc.tiling.name
        )
    return ImageModel(
        name="checkpoint",
        module=SpandrelModule(desc.eval()),
        scale=desc.scale,
        channels=desc.input_channels,
        supports_half=desc.supports_half,
        supports_bfloat16=desc.supports_bfloat16,
        weights_sha256=digest,
    )


_inspected: dict[tuple, str] = {}  # (uri, sha256) → details, for the driver's repeated asks


def inspect(p: CheckpointParams) -> str:
    """Check on the driver, before any actor starts, that ``build`` would load these weights (the
    pin, a file that holds only tensors, a detected architecture darkroom can run: the state_dict
    is read on the CPU and spandrel builds the network once); returns what was detected, e.g.
    ``ESRGAN×4``, as the manifest's ``model_details`` records it. ``WeightsError`` says what is wrong."""
    key = (p.uri, weights_digest(p))
    if key not in _inspected:
        state_dict, _ = read_state_dict(p.uri, p.sha256)
        desc = describe(state_dict, p.uri)
        check_descriptor(desc, p.uri)
        _inspected[key] = f"{desc.architecture.name}×{desc.scale}"
    return _inspected[key]


def weights_digest(p: CheckpointParams) -> str:
    """The sha256 that the manifest and the fingerprint record for these params.

    The pin when given (``build`` refuses any other file); otherwise the digest of the
    file as it is now, computed once per process and file version (:func:`models.fetch.digest`),
    since the driver asks for it several times while planning a run.
    """
    if p.sha256:
        return p.sha256
    local = package_file(p.uri) if p.uri.startswith(PACKAGE_SCHEME) else None
    fs, path = remote.filesystem(str(local) if local else p.uri)
    try:
        return remote.digest(fs, path)
    except FileNotFoundError:
        raise WeightsError(f"{p.uri}: weights file not found") from None


def _some(keys: list) -> str:
    shown = ", ".join(map(str, keys[:SHOWN_KEYS]))
    return shown + (f", … ({len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def _detected_architecture(state_dict: dict[str, torch.Tensor]) -> str:
    import spandrel

    for support in spandrel.MAIN_REGISTRY.architectures("detection"):
        try:
            if support.detect(state_dict):
                return support.architecture.name
        except Exception:
            continue
    return "an architecture"


def _mismatch(exc: Exception) -> str:
    """torch's load_state_dict error (or a key the builder looked for) as short lists of keys."""
    if isinstance(exc, KeyError):
        return f"missing keys (1): {exc.args[0]}"
    text = str(exc)
    parts = []
    for label, pattern in (
        ("missing keys", r"Missing key\(s\) in state_dict: (.*)"),
        ("unexpected keys", r"Unexpected key\(s\) in state_dict: (.*)"),
    ):
        match = re.search(pattern, text)
        if match:
            keys = re.findall(r'"([^"]+)"', match.group(1))
            parts.append(f"{label} ({len(keys)}): {_some(keys)}")
    sizes = re.findall(
        r"size mismatch for ([^:]+): copying a param with shape (torch\.Size\(\[[^\]]*\]\)) from checkpoint, "
        r"the shape in current model is (torch\.Size\(\[[^\]]*\]\))",
        text,
    )
    if sizes:
        shown = "; ".join(f"{k} {a[11:-1]} vs {b[11:-1]}" for k, a, b in sizes[:SHOWN_KEYS])
        parts.append(f"shape mismatches ({len(sizes)}; checkpoint vs network): {shown}")
    if parts:
        return "; ".join(parts)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
