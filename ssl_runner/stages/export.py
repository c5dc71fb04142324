"""The export stage: the pretrained backbone as plain state dicts that
torchvision's and timm's ResNets load strictly (`export/<arch>_torchvision.pt`,
`export/<arch>_timm.pt`), for use outside ssl_runner. The conversion, the
refusal of backbones without an equivalent and the load lines are in
`ssl_runner/backbone_export.py` (shared with scripts/export_encoder.py)."""

from __future__ import annotations

from typing import Any, Dict

from ssl_runner.backbone_export import EXPORT_STAGE, export_backbone, exported_arch
from ssl_runner.distributed import collectives
from ssl_runner.stages.context import RunContext
from ssl_runner.stages.registry import ENCODER, Stage, register_stage


def export(ctx: RunContext) -> Dict[str, Any]:
    cfg = ctx.cfg
    enc = ctx.encoder()
    label = f"backbone '{cfg.backbone.name}'"
    # Every rank checks, so that a refused backbone stops them all alike.
    exported_arch(enc.backbone, label)
    result: Dict[str, Any] = {}
    if collectives.is_main_process():
        # The whole backbone: eval.feature_layer truncates only what the evaluation stages see.
        result = export_backbone(enc.backbone, ctx.run_dir / EXPORT_STAGE, label, relative_to=ctx.run_dir)
    collectives.barrier()
    # What an outside user must feed the model: the run's input size and normalisation.
    return {**result, "image_size": cfg.data.image_size, "mean": list(cfg.data.mean), "std": list(cfg.data.std),
            "encoder_checkpoint": enc.path, "encoder_method": enc.method}


# Reads the encoder only (no split). Never `provides` ENCODER, and its result has
# no "encoder" key: that key would replace the manifest's record of pretrain's file.
register_stage(Stage(EXPORT_STAGE, export, reads=(ENCODER,),
                     writes=("<arch>_torchvision.pt", "<arch>_timm.pt")))
