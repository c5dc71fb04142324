"""Jigsaw: solving jigsaw puzzles (Noroozi & Favaro, ECCV 2016)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from ssl_runner.methods.base import BaseMethod, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.models.heads import MLPHead
from ssl_runner.validation import check_choice
from ssl_runner.views.jigsaw import TILE_NORMALIZATIONS, JigsawPuzzles, JigsawTiles
from ssl_runner.views.jigsaw_permutations import cached_permutation_set
from ssl_runner.views.recipe import view_recipe_from_config


@dataclass
class JigsawConfig:
    name: str = "jigsaw"
    # Size of the permutation set (Sec. 3.2 and Table 4: 100 or 1000; fewer
    # or closer permutations make the task easier and the features worse).
    permutations: int = 1000
    # The set is chosen greedily for maximal average Hamming distance,
    # deterministically from this seed, and cached (views/jigsaw_permutations.py).
    permutation_seed: int = 0
    # The classifier over the nine towers' concatenated features (the paper:
    # fc7 of 4096 over 9 x 1024); 0: the backbone's feature width x 9.
    hidden_dim: int = 1024
    # Images shown in grayscale (Sec. 3.1: 30 %, against colour shortcuts).
    grayscale_p: float = 0.3
    # Area range of the random crop the puzzle is cut from, instead of
    # views.crop_scale (the paper: a 225-px crop of a 256-px image, 77 %; a
    # small crop would leave tiles of a few source pixels).
    crop_scale: List[float] = field(default_factory=lambda: [0.6, 1.0])
    # "per_tile": each channel of each tile standardised on its own (the
    # paper's guard, Table 5); "dataset": the data set's mean and std, as the
    # evaluation stages normalise whole images (the towers then see inputs
    # with the statistics their BatchNorm layers meet at evaluation).
    tile_normalization: str = "per_tile"


@register_method("jigsaw", JigsawConfig, paper="Noroozi & Favaro, ECCV 2016",
                 published="no CIFAR-10 figure; ImageNet ResNet-50 linear about 48 (VISSL)", kind="pretext task")
class Jigsaw(BaseMethod):
    """Nine weight-sharing towers (the backbone on each tile), their features
    concatenated in slot order, an MLP classifies which permutation of the
    set shuffled the tiles (Sec. 3)."""

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        check_choice("method.tile_normalization", cfg.method.tile_normalization, TILE_NORMALIZATIONS)

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        m = cfg.method
        permutations = cached_permutation_set(m.permutations, 9, m.permutation_seed)
        per_tile = m.tile_normalization == "per_tile"
        tiles = JigsawTiles.for_image_side(permutations, cfg.data.image_size, grayscale_p=m.grayscale_p,
                                           normalize_tiles=per_tile)
        # Crop and flip only: the puzzle brings its own colour treatment.
        recipe = view_recipe_from_config(cfg, num_views=1, jitter_p=0.0, grayscale_p=0.0,
                                         crop_scale=tuple(m.crop_scale))
        dataset_stats = (None, None) if per_tile else (list(cfg.data.mean), list(cfg.data.std))
        self.view_maker = JigsawPuzzles(recipe, tiles, *dataset_stats)
        concat = 9 * self.feature_dim
        self.classifier = MLPHead([concat, m.hidden_dim or concat, m.permutations])

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        tiles, labels = views
        n = len(tiles)
        h = self.backbone(tiles.flatten(0, 1))  # N*9 tiles through one shared tower
        logits = self.classifier(h.view(n, -1))
        loss = F.cross_entropy(logits, labels.long())
        accuracy = (logits.argmax(1) == labels).float().mean() * 100
        # The online probe sees the mean of each image's tile features.
        return SSLStepOutput(loss=loss, features=h.view(n, 9, -1).mean(1), logs={"permutation_top1": accuracy.detach()})


__all__ = ["Jigsaw"]
