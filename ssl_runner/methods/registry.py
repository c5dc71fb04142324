"""The method registry: name -> (LightningModule class, config schema), and
what the README's methods table and `--help` say of each method (its paper,
its kind, and the published CIFAR-10 figure it should approach)."""

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
    # Its family, one of METHOD_KINDS, for `--help` (register_method requires
    # it; the default serves records built by hand, as in tests/test_report.py).
    kind: str = ""


# The families a method belongs to, as `--help` names them: contrastive (other
# images of the batch are the negatives), momentum contrastive (a momentum
# encoder's keys in a queue), non-contrastive (no negatives), memory bank (the
# negatives are stored features of the data set), instance classification (a
# classifier with one class per image), pretext task (a label made from the
# image: rotation, patch order, position, counts), generative pretext task
# (predicting pixels or colours).
METHOD_KINDS = ("contrastive", "momentum contrastive", "non-contrastive", "memory bank", "instance classification",
                "pretext task", "generative pretext task")

METHOD_INFO: Dict[str, MethodInfo] = {}


def register_method(name: str, schema: type, paper: str, published: str, kind: str) -> Callable[[Type], Type]:
    """Class decorator: make `python -m ssl_runner method=<name>` build this class,
    its `method:` config checked against `schema`."""
    if kind not in METHOD_KINDS:
        raise ValueError(f"method '{name}': kind '{kind}' is not one of {', '.join(METHOD_KINDS)}")

    def register(cls: Type) -> Type:
        if name in METHODS:
            raise ValueError(f"method '{name}' is registered twice")
        METHODS[name] = (cls, schema)
        METHOD_INFO[name] = MethodInfo(paper, published, kind)
        return cls

    return register
