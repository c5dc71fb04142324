"""PIRL: pretext-invariant representations (Misra & van der Maaten, CVPR 2020)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_runner.errors import UserError
from ssl_runner.losses import pirl_loss
from ssl_runner.methods.base import BaseMethod, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.models.momentum import MemoryBank
from ssl_runner.validation import check_choice
from ssl_runner.views.jigsaw import TILE_NORMALIZATIONS, JigsawPuzzles, JigsawTiles
from ssl_runner.views.jigsaw_permutations import cached_permutation_set
from ssl_runner.views.pirl import PIRLViews
from ssl_runner.views.recipe import view_recipe_from_config


@dataclass
class PIRLConfig:
    name: str = "pirl"
    # Both branches end in 128-d L2-normalised embeddings (Sec. 3.3).
    embedding_dim: int = 128
    # tau of the NCE terms (Sec. 4: 0.07).
    temperature: float = 0.07
    # m_I <- normalise(m m_I + (1 - m) f(v_I)) (Sec. 3.2: 0.5).
    bank_momentum: float = 0.5
    # lambda of Eq. 6: lambda NCE(m_I, g(v_It)) + (1 - lambda) NCE(m_I, f(v_I)) (Sec. 3.2: 0.5).
    jigsaw_weight: float = 0.5
    # Negatives per image drawn from the bank (the paper: 32,000 of ImageNet's
    # 1.28M); 0: every other entry of the bank, an exact softmax (CIFAR's 50,000 fit).
    negatives: int = 0
    # The tiles are shuffled by a permutation drawn from a set of this many
    # (the jigsaw branch must be invariant to the order, Sec. 3.3; no label is
    # predicted, so only the set's variety matters).
    permutations: int = 1000
    permutation_seed: int = 0
    # Area range of the random crop the tiles are cut from (the image branch uses views.crop_scale).
    crop_scale: List[float] = field(default_factory=lambda: [0.6, 1.0])
    # Tiles normalised as whole images are ("dataset"), or each on its own
    # ("per_tile", the jigsaw paper's guard against shortcuts; PIRL has none).
    tile_normalization: str = "dataset"


@register_method("pirl", PIRLConfig, paper="Misra & van der Maaten, CVPR 2020",
                 published="no CIFAR-10 figure; ImageNet ResNet-50 linear 63.6", kind="memory bank")
class PIRL(BaseMethod):
    """Image branch f(v_I): the backbone and a linear map to 128-d. Jigsaw
    branch g(v_It): the backbone on each of the nine tiles, a linear map of
    each to 128-d, the nine concatenated in slot order and mapped to 128-d
    (Sec. 3.3). Both are pulled towards the image's entry in a memory bank of
    past f(v_I) and pushed from the other entries (Eq. 6); the representation
    evaluated is the backbone's on whole images."""

    not_exported = ("memory",)

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        check_choice("method.tile_normalization", cfg.method.tile_normalization, TILE_NORMALIZATIONS)

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        if num_samples < 2:
            raise UserError(f"PIRL's memory bank holds one row per training image and needs at least 2, "
                            f"not {num_samples}: train on more images (data.subset).")
        m = cfg.method
        per_tile = m.tile_normalization == "per_tile"
        tiles = JigsawTiles.for_image_side(cached_permutation_set(m.permutations, 9, m.permutation_seed),
                                           cfg.data.image_size, normalize_tiles=per_tile, grayscale_p=0.0)
        # The tiles get crop and flip here; the image view has the full colour recipe of `views`.
        tile_recipe = view_recipe_from_config(cfg, num_views=1, jitter_p=0.0, grayscale_p=0.0,
                                              crop_scale=tuple(m.crop_scale))
        stats = (None, None) if per_tile else (list(cfg.data.mean), list(cfg.data.std))
        image_recipe = view_recipe_from_config(cfg, num_views=1)
        self.view_maker = PIRLViews(image_recipe, JigsawPuzzles(tile_recipe, tiles, *stats))
        d = m.embedding_dim
        self.image_head = nn.Linear(self.feature_dim, d)
        self.tile_head = nn.Linear(self.feature_dim, d)
        self.jigsaw_head = nn.Linear(9 * d, d)
        self.memory = MemoryBank(num_samples, d)

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        m = self.cfg.method
        image, tiles = views
        n = len(image)
        h = self.backbone(image)
        # Two passes: the tiles (18 px on CIFAR) get BatchNorm statistics of their own.
        tile_features = self.tile_head(self.backbone(tiles.flatten(0, 1)))
        f = F.normalize(self.image_head(h), dim=1)
        g = F.normalize(self.jigsaw_head(tile_features.view(n, -1)), dim=1)
        bank = self.memory.bank
        negatives = None
        if m.negatives:
            negatives = torch.randint(0, len(bank), (n, m.negatives), device=f.device)
        # A copy: the bank is updated in place below, before the backward pass.
        loss, jigsaw_term, image_term = pirl_loss(f, g, bank.clone(), indices, m.temperature, m.jigsaw_weight,
                                                  negatives)
        self.memory.update(indices, f, m.bank_momentum)
        return SSLStepOutput(loss=loss, features=h, embeddings=f,
                             logs={"jigsaw_nce": jigsaw_term.detach(), "image_nce": image_term.detach()})


__all__ = ["PIRL"]
