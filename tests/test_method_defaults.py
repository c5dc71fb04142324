"""Each method's defaults are written twice: in its config dataclass (the
schema `validation.validate` types the `method:` section with, and what code that
builds a method without Hydra gets) and in conf/method/<name>.yaml (what a run
composes). They must agree, key for key and value for value."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ssl_runner.__main__ import config_dir
from ssl_runner.methods import METHODS

METHOD_YAMLS = sorted((Path(config_dir()) / "method").glob("*.yaml"))


def test_every_registered_method_has_a_yaml_and_every_yaml_a_method():
    assert {path.stem for path in METHOD_YAMLS} == set(METHODS)


@pytest.mark.parametrize("path", METHOD_YAMLS, ids=lambda path: path.stem)
def test_method_yaml_equals_its_dataclass_defaults(path):
    written = OmegaConf.to_container(OmegaConf.load(path))
    assert written["name"] == path.stem
    _, schema = METHODS[path.stem]
    defaults = OmegaConf.to_container(OmegaConf.structured(schema))
    assert sorted(written) == sorted(defaults), "keys in only one of the two"
    assert {key: written[key] for key in defaults} == defaults
