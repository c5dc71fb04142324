"""The stages a pipeline chains: one module per stage or family of stages,
each registering its records (`registry.py`). Importing this package
registers them all, in the order the schema lists them."""

from ssl_runner.stages import pretrain, knn, classifiers, semi, probes, transfer, export  # noqa: F401,I001  (each registers itself)
from ssl_runner.stages.registry import STAGES, Stage, random_init_names, stage_names

__all__ = ["STAGES", "Stage", "random_init_names", "stage_names"]
