"""darkroom's model zoo: networks, their weights described as data, and a registry.

Nothing in this package knows about Ray or lists storage: a model is built from a
registry entry and validated params, and maps a float batch N×C×H×W in [0, 1] to
N×C×H'×W' in [0, 1].
"""

from models.base import ImageModel, WeightsSpec
from models.registry import ModelEntry, Registry, default_registry

__all__ = ["ImageModel", "ModelEntry", "Registry", "WeightsSpec", "default_registry"]
