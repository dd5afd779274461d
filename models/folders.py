"""Model folders (diffusers, transformers) in the cache: the one owner of ``$DARKROOM_CACHE/diffusers/``.

Remote folders are copied under ``<cache>/diffusers/`` in one of two ways, both through
:func:`models.fetch.fetch` (retried, hashed, written atomically):

* :func:`cache_folder`: a folder keyed by the remote location, into which a loader copies the few
  files it needs one at a time (models/diffusers_folder.py: a DDPM folder pinned by its weights file);
* :func:`fetch_folder`: a whole folder pinned by :func:`folder_digest` (the sha256 of the sorted
  lines ``<relative path>\\t<sha256 of the file>`` over every file in it, so a pin changes when any
  file is added, removed, renamed or edited), copied into ``<cache>/diffusers/<digest>/``.

Local folders are read in place. Only safetensors weights are accepted: a folder holding a pickled
weights file (``.bin``, ``.ckpt``, ``.pt``, ``.pth``, ``.pkl``, …) is refused before anything is
read, whatever else it holds. Torch-free: the loaders (models/text_to_image.py) read the folder.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from models import fetch as remote
from models.weights import WeightsError, cache_dir

CACHE_SUBDIR = "diffusers"
PICKLED_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle", ".msgpack", ".h5")


def cache_folder(fs, root: str) -> Path:
    """The cache folder (``<cache>/diffusers/<key of the location>``) that holds local copies of
    files of the remote folder ``root`` of ``fs``; the caller copies the files it needs there."""
    key = hashlib.sha256(f"{fs.protocol}:{root}".encode()).hexdigest()[:24]
    folder = cache_dir() / CACHE_SUBDIR / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _files(uri: str, storage_options: dict | None) -> tuple[Any, str, list[str]]:
    """(filesystem, root, sorted relative paths of every file under ``uri``); refuses pickles."""
    fs, root = remote.filesystem(uri, storage_options)
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    try:
        found = remote.retrying(lambda: fs.find(root, detail=True), f"list {remote.redact(uri)}")
    except FileNotFoundError:
        found = {}
    files = sorted(path[len(root) + 1 :] for path, info in found.items() if info.get("type", "file") == "file")
    if not files:
        raise WeightsError(f"{remote.redact(uri)}: no files (a model folder saved with save_pretrained is needed)")
    pickled = [rel for rel in files if rel.lower().endswith(PICKLED_SUFFIXES)]
    if pickled:
        raise WeightsError(
            f"{remote.redact(uri)}: holds pickled weights ({', '.join(pickled[:3])}); only safetensors folders are "
            "loaded (save_pretrained(..., safe_serialization=True) and remove the others)"
        )
    if not any(rel.endswith(".safetensors") for rel in files):
        raise WeightsError(
            f"{remote.redact(uri)}: no .safetensors file (save_pretrained(..., safe_serialization=True))"
        )
    return fs, root, files


def _digest_of(lines: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{rel}\t{lines[rel]}\n" for rel in sorted(lines)).encode()).hexdigest()


def folder_digest(uri: str, storage_options: dict | None = None) -> str:
    """64-hex sha256 over the folder's files (see the module docstring). Each file's sha256 is
    :func:`models.fetch.digest`'s, remembered once per process and file version, since the driver
    asks several times while planning a run."""
    fs, root, files = _files(uri, storage_options)
    return _digest_of({rel: remote.digest(fs, f"{root}/{rel}") for rel in files})


def params_digest(params) -> str:
    """The ``weights_digest`` of a registry entry whose params are a ``models.catalog.FolderParams``:
    the pin when given, else the folder's :func:`folder_digest`."""
    return params.sha256 or folder_digest(params.uri, params.storage_options)


def _check_pin(uri: str, pinned: str, actual: str) -> None:
    if actual != pinned:
        raise WeightsError(
            f"{remote.redact(uri)}: folder digest mismatch (pinned {pinned}, files give {actual}); refusing"
        )


def fetch_folder(uri: str, sha256: str, storage_options: dict | None = None) -> Path:
    """A local folder holding the files of the folder at ``uri``, whose :func:`folder_digest` is ``sha256``.

    A local folder is checked and returned in place. A remote one is copied into
    ``<cache>/diffusers/<sha256>/`` (reused when already there: the name is the pin); the copy is
    built beside it and renamed into place, so concurrent loaders never see half a folder. A folder
    whose files hash to another digest is refused.
    """
    sha256 = sha256.lower()
    fs, root = remote.filesystem(uri, storage_options)
    if remote.is_local(fs):
        _check_pin(uri, sha256, folder_digest(uri, storage_options))
        return Path(root.rstrip("/"))
    target = cache_dir() / CACHE_SUBDIR / sha256
    if target.is_dir():
        return target
    fs, root, files = _files(uri, storage_options)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".part-"))
    try:
        lines = {rel: remote.fetch(fs, f"{root}/{rel}", staging / rel) for rel in files}
        _check_pin(uri, sha256, _digest_of(lines))
        try:
            staging.rename(target)
        except OSError:  # another loader put it there first: same pin, same files
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
