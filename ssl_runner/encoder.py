"""Loading a pretrained encoder for the evaluation stages, strictly.

Two files are accepted: the `encoder.pt` a pretrain stage exports (plain
tensors, read with `weights_only=True`) and a Lightning checkpoint of an
ssl_runner method (its `backbone.*` weights). Either way the backbone is
rebuilt from the config stored with the weights and loaded with
`strict=True`: a missing or unexpected key is an error, never a silently
random layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import torch
from omegaconf import OmegaConf

from ssl_runner.config import BackboneConfig
from ssl_runner.errors import UserError
from ssl_runner.methods.base import ENCODER_FORMAT
from ssl_runner.models.backbones import ResNet, build_backbone


@dataclass
class LoadedEncoder:
    backbone: ResNet
    method: str
    path: str


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


def _backbone_weights(data: Dict[str, Any], path: Path) -> tuple[Dict[str, Any], Dict[str, Any], str, int]:
    if data.get("format") == ENCODER_FORMAT:
        return data["backbone"], data["backbone_config"], data["method"], data["image_size"]
    if "state_dict" in data and "hyper_parameters" in data and "config" in data["hyper_parameters"]:
        config = data["hyper_parameters"]["config"]
        weights = {k[len("backbone."):]: v for k, v in data["state_dict"].items() if k.startswith("backbone.")}
        return weights, config["backbone"], config["method"]["name"], config["data"]["image_size"]
    raise UserError(
        f"checkpoint {path} was not written by ssl_runner (no '{ENCODER_FORMAT}' encoder and no Lightning "
        "state_dict with an ssl_runner config). Pass a pretrain stage's encoder.pt or last.ckpt."
    )


def load_encoder(path: str | Path) -> LoadedEncoder:
    path = Path(path)
    weights, backbone_cfg, method, image_size = _backbone_weights(_read(path), path)
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
    return LoadedEncoder(backbone, method, str(path))
