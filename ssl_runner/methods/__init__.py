"""Self-supervised methods: one small module each, over `BaseMethod`.

Importing this package registers every method.
"""

# In the order of the README's methods table.
from ssl_runner.methods import (  # noqa: F401,I001  (each registers itself)
    simclr, moco, simsiam, byol, npid, looc, rotnet, jigsaw, relative_loc, exemplar, colorization, context_encoder,
    counting, pirl,
)
from ssl_runner.methods.base import BaseMethod
from ssl_runner.methods.registry import METHODS


def build_method(cfg, num_classes: int, num_samples: int = 0) -> BaseMethod:
    cls, _ = METHODS[cfg.method.name]
    return cls(cfg, num_classes, num_samples)


__all__ = ["BaseMethod", "METHODS", "build_method"]
