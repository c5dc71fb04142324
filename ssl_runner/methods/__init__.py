"""Self-supervised methods: one small module each, over `BaseMethod`.

Importing this package registers every method.
"""

from ssl_runner.methods import byol, moco, npid, simclr, simsiam  # noqa: F401  (each registers itself)
from ssl_runner.methods.base import BaseMethod
from ssl_runner.methods.registry import METHODS


def method_schemas() -> dict:
    return {name: schema for name, (_, schema) in METHODS.items()}


def build_method(cfg, num_classes: int, num_samples: int = 0) -> BaseMethod:
    cls, _ = METHODS[cfg.method.name]
    return cls(cfg, num_classes, num_samples)


__all__ = ["BaseMethod", "METHODS", "method_schemas", "build_method"]
