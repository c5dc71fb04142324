"""The method registry: name -> (LightningModule class, config schema)."""

from __future__ import annotations

from typing import Callable, Dict, Tuple, Type

METHODS: Dict[str, Tuple[type, type]] = {}


def register_method(name: str, schema: type) -> Callable[[Type], Type]:
    """Class decorator: make `python -m ssl_runner method=<name>` build this class,
    its `method:` config checked against `schema`."""

    def register(cls: Type) -> Type:
        if name in METHODS:
            raise ValueError(f"method '{name}' is registered twice")
        METHODS[name] = (cls, schema)
        return cls

    return register
