"""darkroom's model zoo: networks, their weights described as data, and a registry.

Nothing in this package knows about Ray or lists storage: a model is built from a
registry entry and validated params, and maps a float batch N×C×H×W in [0, 1] to
N×C×H'×W' in [0, 1]. Importing the package (and the registry) does not import torch;
building a model does.
"""

from typing import Any

from models.registry import ModelEntry, Registry, default_registry
from models.weights import WeightsSpec

__all__ = ["ImageModel", "ModelEntry", "Registry", "WeightsSpec", "default_registry"]


def __getattr__(name: str) -> Any:
    # ImageModel's module imports torch: loaded on first use, so that `from models import Registry` stays light.
    if name == "ImageModel":
        from models.base import ImageModel

        return ImageModel
    raise AttributeError(f"module 'models' has no attribute {name!r}")
