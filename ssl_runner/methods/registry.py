"""The method registry: name -> (LightningModule class, config schema), and
what the README's methods table says of each method (its paper and the
published CIFAR-10 figure it should approach)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple, Type

METHODS: Dict[str, Tuple[type, type]] = {}


@dataclass(frozen=True)
class MethodInfo:
    paper: str
    # The published figure to compare against (from ../shared/REFERENCES.md),
    # with its protocol: network, epochs, and whose number it is.
    published: str


METHOD_INFO: Dict[str, MethodInfo] = {}


def register_method(name: str, schema: type, paper: str, published: str) -> Callable[[Type], Type]:
    """Class decorator: make `python -m ssl_runner method=<name>` build this class,
    its `method:` config checked against `schema`."""

    def register(cls: Type) -> Type:
        if name in METHODS:
            raise ValueError(f"method '{name}' is registered twice")
        METHODS[name] = (cls, schema)
        METHOD_INFO[name] = MethodInfo(paper, published)
        return cls

    return register
