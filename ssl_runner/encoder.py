"""The encoder file: writing it after pretraining, and loading a pretrained
encoder for the evaluation stages, strictly.

`save_encoder` writes the `encoder.pt` a pretrain stage exports (plain
tensors and the configs that rebuild them, `ENCODER_FORMAT`). Two files are
accepted for loading: that `encoder.pt` (read with `weights_only=True`) and a
Lightning checkpoint of an ssl_runner method (its `backbone.*` weights).
Either way the backbone is rebuilt from the config stored with the weights
and loaded with `strict=True`: a missing or unexpected key is an error, never
a silently random layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

import logging

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ssl_runner.config import BackboneConfig, to_plain
from ssl_runner.errors import UserError
from ssl_runner.models.backbones import Backbone, build_backbone, check_backbone
from ssl_runner.safe_io import atomic_torch_save


log = logging.getLogger(__name__)

ENCODER_FORMAT = "ssl_runner.encoder/1"


def save_encoder(path: Path, cfg: DictConfig, backbone: nn.Module, heads: Dict[str, Tensor]) -> None:
    """Write `backbone`'s weights (and a method's `heads`, its other tensors)
    to `path` as plain tensors, with the method, backbone config and image
    size of the run `cfg`: loadable with `torch.load(weights_only=True)` and
    strictly by `load_encoder`."""
    atomic_torch_save(
        {
            "format": ENCODER_FORMAT,
            "method": cfg.method.name,
            "method_config": to_plain(cfg.method),
            "backbone_config": to_plain(cfg.backbone),
            "image_size": int(cfg.data.image_size),
            "backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
            "heads": {k: v.detach().cpu() for k, v in heads.items()},
        },
        path,
    )


@dataclass
class LoadedEncoder:
    # A ResNet or NetworkInNetwork (a TruncatedBackbone at eval.feature_layer).
    backbone: Backbone
    method: str
    path: str
    # The method's exported heads (plain tensors) and its config: what a
    # method-specific evaluation (LooC++'s concatenated heads) rebuilds.
    heads: Dict[str, Any] = field(default_factory=dict)
    method_config: Dict[str, Any] = field(default_factory=dict)


def _read(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist. Pass checkpoint=PATH to a pretrain stage's encoder.pt "
            "(or a Lightning .ckpt of an ssl_runner method), or run the pretrain stage first."
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"could not read checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "It is corrupt, truncated or not a PyTorch file: pass the encoder.pt that a pretrain stage "
            "wrote (outputs/<run>/pretrain/encoder.pt) or rerun pretraining."
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"checkpoint {path} holds a {type(data).__name__}, not an ssl_runner checkpoint.")
    return data


def _parts(data: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """Backbone weights and config, method name and config, image size and the
    method's head tensors, from either kind of file."""
    if data.get("format") == ENCODER_FORMAT:
        return {"weights": data["backbone"], "backbone": data["backbone_config"], "method": data["method"],
                "image_size": data["image_size"], "heads": data.get("heads", {}),
                "method_config": data.get("method_config", {})}
    if "state_dict" in data and "hyper_parameters" in data and "config" in data["hyper_parameters"]:
        config = data["hyper_parameters"]["config"]
        state = data["state_dict"]
        return {"weights": {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")},
                "backbone": config["backbone"], "method": config["method"]["name"],
                "image_size": config["data"]["image_size"],
                "heads": {k: v for k, v in state.items() if not k.startswith(("backbone.", "online_probe."))},
                "method_config": config["method"]}
    raise UserError(
        f"checkpoint {path} was not written by ssl_runner (no '{ENCODER_FORMAT}' encoder and no Lightning "
        "state_dict with an ssl_runner config). Pass a pretrain stage's encoder.pt or last.ckpt."
    )


def load_encoder(path: str | Path) -> LoadedEncoder:
    path = Path(path)
    parts = _parts(_read(path), path)
    weights, backbone_cfg, image_size = parts["weights"], parts["backbone"], parts["image_size"]
    typed = OmegaConf.merge(OmegaConf.structured(BackboneConfig), backbone_cfg)
    backbone = build_backbone(typed, image_size)  # type: ignore[arg-type]
    try:
        backbone.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise UserError(
            f"checkpoint {path} does not match the backbone it declares ({backbone_cfg.get('name')}): "
            f"{' '.join(str(err).split())[:600]} Loading is strict, so the file is damaged or was edited; "
            "export it again from its pretrain run."
        ) from None
    return LoadedEncoder(backbone, parts["method"], str(path), parts["heads"], parts["method_config"])


def adopt_checkpoint_architecture(cfg: DictConfig) -> None:
    """Set `cfg.backbone` and `cfg.data.image_size` to those of the encoder in
    `cfg.checkpoint` (a pipeline without pretraining evaluates it): the
    summary then names the evaluated architecture, and the random-init
    baselines are built like it, not like a config default."""
    path = Path(cfg.checkpoint)
    parts = _parts(_read(path), path)
    adopted = OmegaConf.merge(OmegaConf.structured(BackboneConfig), parts["backbone"])
    if OmegaConf.to_container(adopted) != OmegaConf.to_container(cfg.backbone) or \
            int(parts["image_size"]) != cfg.data.image_size:
        log.warning("evaluating %s as it was trained: backbone %s at %d px (the config named %s at %d px)", path,
                    adopted.name, parts["image_size"], cfg.backbone.name, cfg.data.image_size)
    cfg.backbone = adopted
    cfg.data.image_size = int(parts["image_size"])
    check_backbone(cfg)
