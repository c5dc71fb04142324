"""Shared fixtures: composing configs and finding the real CIFAR-10."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import pytest
from hydra import compose, initialize_config_dir

from ssl_runner.__main__ import config_dir
from ssl_runner.config import validate
from ssl_runner.methods import method_schemas

REPO = Path(__file__).resolve().parent.parent


def compose_config(overrides: List[str] = (), validated: bool = True):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return validate(cfg, method_schemas()) if validated else cfg


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """The real CIFAR-10 image folder from SSL_RUNNER_DATA (../shared/data here and in CI)."""
    data = os.environ.get("SSL_RUNNER_DATA")
    root = (Path(data) / "cifar10" if data else REPO.parent / "shared" / "data" / "cifar10").resolve()
    if not (root / "train").is_dir():
        pytest.fail(f"real CIFAR-10 not found at {root}: set SSL_RUNNER_DATA to the folder holding cifar10/")
    return root
