"""The pretrained backbone as torchvision and timm load it: the conversion,
the check that refuses a backbone they have no equivalent of, and the
Python lines that load each file. Used by the export stage
(`stages/export.py`), by `validation.py` (refused before training) and by
`scripts/export_encoder.py` (an existing run).

This lives outside `ssl_runner/stages/` because validation calls the check,
and importing anything under `stages` from validation would be an import
cycle (stages -> methods -> validation).

What is written: a plain state dict (tensors only, contiguous, on the CPU)
of the whole backbone, BatchNorm running statistics included, that loads
with `torch.load(..., weights_only=True)` and `load_state_dict(strict=True)`
into `torchvision.models.resnet18/34/50` or `timm.create_model("resnet18",
num_classes=0)` (and 34/50). There is no `fc`: self-supervised pretraining
trains no ImageNet classifier, and a random or zeroed 1000-way `fc` would be
a layer that looks trained and is not. So torchvision's model is built with
`model.fc = torch.nn.Identity()` (timm's `num_classes=0` does the same) and
returns the pooled representation h, as the runner's backbone does. With the
CIFAR stem, `conv1` is a 3x3 stride-1 conv and `maxpool` an identity in both
libraries; the load lines say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch import Tensor, nn

from ssl_runner.errors import UserError
from ssl_runner.models.backbones.base import TruncatedBackbone
from ssl_runner.models.backbones.registry import backbone_class
from ssl_runner.models.backbones.resnet import RESNET_LAYOUTS, ResNet
from ssl_runner.safe_io import atomic_torch_save

EXPORT_STAGE = "export"
# The ResNets torchvision.models and timm both build, at width 1.
EXPORTABLE_DEPTHS = (18, 34, 50)
# Output formats, in the order they are written. timm's ResNet
# (timm.models.resnet) names its parameters and buffers exactly as
# torchvision does (conv1, bn1, layerN.i.convK / bnK, layerN.i.downsample.0/1;
# only its weightless activations are named differently), so both files hold
# the same tensors under the same keys; tests/test_export.py loads each
# strictly into its library to keep that true.
FORMATS = ("torchvision", "timm")
TIMM_ARCHS = frozenset(f"resnet{depth}" for depth in EXPORTABLE_DEPTHS)
EXPORT_FIX = (
    "Pretrain with backbone=resnet18, backbone=resnet34 or backbone=resnet50 at backbone.width=1.0 to get an "
    "encoder that torchvision and timm can load, or leave export out of pipeline.stages; an encoder of this "
    "backbone loads only through ssl_runner (ssl_runner.encoder.load_encoder on its pretrain/encoder.pt)."
)


@dataclass(frozen=True)
class ExportedArch:
    """What the exported backbone is, in torchvision's terms."""

    arch: str  # torchvision's and timm's name: "resnet18", "resnet34" or "resnet50"
    cifar_stem: bool  # conv1 3x3 stride 1 and no max-pool, instead of 7x7 stride 2 + max-pool
    feature_dim: int  # the size of the pooled representation the model returns


def refusal(label: str, what: str) -> UserError:
    return UserError(
        f"{label} ({what}) has no torchvision or timm equivalent, so it cannot be exported as a state dict "
        f"that torchvision.models or timm load (they build ResNet-18, -34 and -50 at width 1 only). {EXPORT_FIX}"
    )


def _resnet_description(depth: int, width: float) -> str:
    return f"a ResNet-{depth} at width {width:g}"


def check_exportable(cfg: Any) -> None:
    """Refuse (before training) a run whose pipeline.stages has the export
    stage and whose pretraining trains a backbone torchvision and timm do
    not have. When the encoder comes from `checkpoint=` (no pretrain stage),
    the run adopts the checkpoint's architecture, which the config does not
    name: the stage checks the loaded backbone instead (`exported_arch`)."""
    stages = list(cfg.pipeline.stages)
    if EXPORT_STAGE not in stages or (cfg.checkpoint and "pretrain" not in stages):
        return
    b = cfg.backbone
    kind = backbone_class(b.name)
    if kind is not ResNet:
        raise refusal(f"backbone '{b.name}'", kind.describe(b))
    if b.depth not in EXPORTABLE_DEPTHS or b.width != 1.0:
        raise refusal(f"backbone '{b.name}'", _resnet_description(b.depth, b.width))


def whole_backbone(backbone: nn.Module) -> nn.Module:
    """The full backbone behind an eval.feature_layer truncation."""
    return backbone.backbone if isinstance(backbone, TruncatedBackbone) else backbone


def exported_arch(backbone: nn.Module, label: str) -> ExportedArch:
    """The torchvision architecture `backbone` is, read from the module
    itself (what the encoder file holds, whatever the config says);
    `UserError` naming `label` if there is none."""
    backbone = whole_backbone(backbone)
    if not isinstance(backbone, ResNet):
        name = type(backbone).__name__
        raise refusal(label, "RotNet's Network-In-Network" if name == "NetworkInNetwork" else f"a {name}")
    block = type(backbone.layer1[0])
    blocks = [len(getattr(backbone, stage)) for stage in backbone.stage_names]
    depth = next((d for d, (kind, layout) in RESNET_LAYOUTS.items() if kind is block and layout == blocks), None)
    width = backbone.conv1.out_channels / 64
    if depth is None:
        raise refusal(label, f"a ResNet of {blocks} {block.__name__}s per stage")
    if depth not in EXPORTABLE_DEPTHS or width != 1.0:
        raise refusal(label, _resnet_description(depth, width))
    cifar_stem = backbone.conv1.kernel_size == (3, 3)
    return ExportedArch(f"resnet{depth}", cifar_stem, backbone.feature_dim)


def torchvision_state_dict(backbone: nn.Module) -> Dict[str, Tensor]:
    """The backbone's parameters and buffers under torchvision's keys (the
    runner's ResNet already uses them), as plain contiguous CPU tensors: a
    channels-last backbone's weights are converted, so the file does not
    depend on how the run laid out memory."""
    return {k: v.detach().cpu().contiguous() for k, v in whole_backbone(backbone).state_dict().items()}


def formats(arch: ExportedArch) -> List[str]:
    return [fmt for fmt in FORMATS if fmt != "timm" or arch.arch in TIMM_ARCHS]


def file_name(arch: ExportedArch, fmt: str) -> str:
    return f"{arch.arch}_{fmt}.pt"


def load_lines(arch: ExportedArch, fmt: str, path: str) -> List[str]:
    """The Python lines that build `fmt`'s model and load the file at `path`
    strictly into it."""
    if fmt == "torchvision":
        lines = ["import torch, torchvision", f"model = torchvision.models.{arch.arch}()"]
    else:
        lines = ["import timm, torch", f"model = timm.create_model({arch.arch!r}, num_classes=0)"]
    if arch.cifar_stem:
        lines += ["model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)",
                  "model.maxpool = torch.nn.Identity()"]
    if fmt == "torchvision":
        lines.append("model.fc = torch.nn.Identity()  # no classifier: model(x) is the pooled representation")
    lines.append(f"model.load_state_dict(torch.load({path!r}, weights_only=True), strict=True)")
    return lines


def export_backbone(backbone: nn.Module, out_dir: Path, label: str,
                    relative_to: Optional[Path] = None) -> Dict[str, Any]:
    """Write `backbone` (the whole of it, not an eval.feature_layer
    truncation) into `out_dir` in every format its architecture has, each
    file atomically. Returns the architecture facts, the files and the lines
    that load each; paths relative to `relative_to` when given (a run
    folder), else as written. Refuses (`UserError` naming `label`) a
    backbone without a torchvision equivalent before writing anything."""
    arch = exported_arch(backbone, label)
    state = torchvision_state_dict(backbone)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: Dict[str, str] = {}
    load: Dict[str, List[str]] = {}
    for fmt in formats(arch):
        path = out_dir / file_name(arch, fmt)
        atomic_torch_save(state, path)
        shown = str(path.relative_to(relative_to) if relative_to is not None else path)
        files[fmt] = shown
        load[fmt] = load_lines(arch, fmt, shown)
    return {"arch": arch.arch, "cifar_stem": arch.cifar_stem, "feature_dim": arch.feature_dim,
            "files": files, "load": load}


__all__ = ["EXPORTABLE_DEPTHS", "EXPORT_STAGE", "ExportedArch", "FORMATS", "check_exportable", "export_backbone",
           "exported_arch", "load_lines", "torchvision_state_dict"]
