"""LooC: leave-one-out contrastive learning (Xiao, Wang, Efros, Darrell,
"What Should Not Be Contrastive in Contrastive Learning", ICLR 2021).

No public implementation exists; this one follows the paper's Sec. 3 and
states its choices where the paper is silent (marked "choice").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_runner.errors import UserError
from ssl_runner.losses import looc_loss
from ssl_runner.methods.base import BaseMethod, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.models.heads import ConcatSpaceFeatures, SpaceHeads
from ssl_runner.models.momentum import KeyQueue, MomentumEncoder, shuffled_bn_keys
from ssl_runner.views.leave_one_out import ATOMIC_AUGMENTATIONS, LeaveOneOutViews
from ssl_runner.views.recipe import view_recipe_from_config


@dataclass
class LooCConfig:
    name: str = "looc"
    # Atomic augmentations, one variant space Zi each (views/leave_one_out.py):
    # "color" (jitter + grayscale) and "rotation" (by 90/180/270 degrees).
    augmentations: List[str] = field(default_factory=lambda: ["color", "rotation"])
    # With "rotation" listed and views.rotation_p 0, views rotate with this
    # probability (0.75: each of the four orientations equally likely).
    rotation_p: float = 0.75
    # MoCo v2's machinery, which LooC builds on (Sec. 4: MoCo v2 hyperparameters).
    temperature: float = 0.1
    queue_size: int = 4096
    momentum: float = 0.99
    momentum_schedule: str = "constant"
    proj_hidden_dim: int = 0  # 0: the backbone's feature width
    proj_output_dim: int = 128
    shuffle_bn_splits: int = 8


def _space_heads(cfg_method: Any, feature_dim: int) -> SpaceHeads:
    return SpaceHeads(feature_dim, cfg_method.proj_hidden_dim or feature_dim, cfg_method.proj_output_dim,
                      len(cfg_method.augmentations) + 1)


@register_method("looc", LooCConfig, paper="Xiao et al., ICLR 2021",
                 published="no CIFAR-10 figure; ImageNet-100 rotation probe MoCo 61.1 vs LooC 65.2",
                 kind="momentum contrastive")
class LooC(BaseMethod):
    """One query q and keys k0..kn per image (LeaveOneOutViews); a shared
    backbone (V), n + 1 heads (Z0..Zn) for query and momentum key encoder
    alike, one queue per space.

    Loss (`looc_loss`): in Z0 every key of the image is a positive for q;
    in Zi only ki is, and the image's other keys are negatives; each space's
    queue adds the negatives of other images. Choices where the paper is
    silent: the spaces' losses are averaged; Z0 scores each positive key as
    its own InfoNCE term; queue s receives the key of view ks in space s (k0
    for Z0), the key that is a positive there.
    """

    extra_eval_stages = ("linear_concat", "probe_rotation")
    not_exported = ("key_encoder", "queues")

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        super().check_config(cfg)
        names = [str(a) for a in cfg.method.augmentations]
        if not names or len(set(names)) != len(names) or any(a not in ATOMIC_AUGMENTATIONS for a in names):
            raise UserError(
                f"config key 'method.augmentations' is {names}; it needs one or more distinct names from: "
                f"{', '.join(ATOMIC_AUGMENTATIONS)} (e.g. method.augmentations=[color,rotation])."
            )

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        m = cfg.method
        rotation_p = cfg.views.rotation_p
        if "rotation" in m.augmentations and rotation_p == 0:
            rotation_p = m.rotation_p
        recipe = view_recipe_from_config(cfg, num_views=1, rotation_p=rotation_p)
        self.view_maker = LeaveOneOutViews(recipe, list(m.augmentations))
        self.projector = _space_heads(m, self.feature_dim)
        self.key_encoder = MomentumEncoder(self.encoder_with(self.projector))
        self.queues = nn.ModuleList(KeyQueue(m.queue_size, m.proj_output_dim) for _ in self.projector.heads)

    def split_spaces(self, z: Tensor) -> Tensor:
        """N x (n + 1) d -> N x (n + 1) x d: the embeddings by space."""
        return z.view(len(z), len(self.queues), self.projector.output_dim)

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        m = self.cfg.method
        query, keys_views = views[0], views[1:]
        h = self.backbone(query)
        q = self.split_spaces(self.projector(h))  # N x spaces x d
        n = len(query)
        # All keys in one pass (shuffled BN over all of them): (n+1) N x spaces x d,
        # then N x views x spaces x d.
        k = self.split_spaces(shuffled_bn_keys(self.key_encoder, torch.cat(keys_views), m.shuffle_bn_splits))
        k = k.view(len(keys_views), n, *k.shape[1:]).transpose(0, 1)
        spaces = range(len(self.queues))
        queues = [queue.keys.clone() for queue in self.queues]
        loss = looc_loss([q[:, s] for s in spaces], [k[:, :, s] for s in spaces], queues, m.temperature)
        for s in spaces:
            self.queues[s].enqueue(k[:, s, s])
        return SSLStepOutput(loss=loss, features=h, embeddings=q[:, 0])

    def momentum_pairs(self) -> List[Tuple[nn.Module, MomentumEncoder]]:
        return [(self.encoder_with(self.projector), self.key_encoder)]

    @classmethod
    def concat_features(cls, backbone: nn.Module, heads: Dict[str, Tensor], method_cfg: Any) -> nn.Module:
        """LooC++'s feature extractor from an exported encoder, its heads loaded strictly."""
        space_heads = _space_heads(method_cfg, backbone.feature_dim)
        prefix = "projector."
        space_heads.load_state_dict({k[len(prefix):]: v for k, v in heads.items() if k.startswith(prefix)},
                                    strict=True)
        return ConcatSpaceFeatures(backbone, space_heads)


__all__ = ["LooC", "LooCConfig"]
