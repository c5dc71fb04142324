"""The evaluation protocol of every accuracy: what a figure measured, stated
beside it in summary.json, the logs and the tables.

Much of "I can't reproduce the published number" is protocol confusion (an
online probe read as linear evaluation, a fine-tuned backbone read as frozen,
the best epoch on the test split). So every stage result with a `top1`
carries `protocol`: a dict whose `name` is one of `PROTOCOLS` and whose other
keys are the settings that change the figure. Stages that know their
protocol best (semi-supervised, transfer) set it themselves; the others get
it here, from their stage name and the config (`with_protocol`, called by the
pipeline as a stage finishes). All accuracies are last-epoch test top-1; a
best-epoch figure, where one exists, is a separate key chosen on a validation
split, never on test.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional

from omegaconf import DictConfig

# The protocol names, and what each means (the README's table of protocols).
PROTOCOLS = {
    "knn": "weighted k-nearest neighbours on frozen features of unaugmented images (Wu et al. 2018)",
    "linear": "a linear classifier on the frozen backbone's features",
    "finetune": "the whole network fine-tuned on all the labels",
    "semi": "the whole network fine-tuned on a fraction of the labels (SimCLR's semi-supervised protocol)",
    "nonlinear": "RotNet's non-linear classifier on the frozen feature map",
    "probe": "a linear classifier predicting an image property (rotation, colour) from frozen features",
    "online_probe": "a linear classifier trained during pretraining on detached features of the training "
                    "views: a monitor, not an offline result, and kept out of the tables",
    "transfer": "kNN and the linear probe on another data set (transfer:<data>)",
}


def feature_source(cfg: DictConfig) -> str:
    """Which backbone output the frozen evaluations read."""
    layer = cfg.eval.feature_layer
    return f"{cfg.backbone.name} {layer}, pooled" if layer else f"{cfg.backbone.name} output"


def knn_protocol(cfg: DictConfig) -> Dict[str, Any]:
    return {"name": "knn", "k": cfg.eval.knn.k, "temperature": cfg.eval.knn.temperature,
            "features": f"{feature_source(cfg)}, unaugmented images"}


def optimizer_text(stage_cfg: Any) -> str:
    nesterov = ", Nesterov" if stage_cfg.nesterov else ""
    return (f"SGD lr {stage_cfg.lr}, momentum {stage_cfg.momentum}{nesterov}, weight decay {stage_cfg.weight_decay}, "
            f"batch {stage_cfg.batch_size}")


def classifier_protocol(name: str, stage_cfg: Any, backbone: str, features: str) -> Dict[str, Any]:
    """A supervised classifier's protocol: `backbone` frozen or fine-tuned,
    what it read, its epochs, optimiser and augmentation."""
    return {"name": name, "backbone": backbone, "features": features, "epochs": stage_cfg.epochs,
            "optimizer": optimizer_text(stage_cfg), "augmentation": "crop + flip" if stage_cfg.augment else "none"}


def _linear(cfg: DictConfig, result: Dict[str, Any]) -> Dict[str, Any]:
    return classifier_protocol("linear", cfg.eval.linear, "frozen",
                               f"{feature_source(cfg)}, {result.get('features', '?')}")


def _linear_concat(cfg: DictConfig, result: Dict[str, Any]) -> Dict[str, Any]:
    return classifier_protocol("linear", cfg.eval.linear, "frozen",
                               f"LooC++: every head's hidden layer, concatenated; {result.get('features', '?')}")


def _finetune(cfg: DictConfig, result: Dict[str, Any]) -> Dict[str, Any]:
    return classifier_protocol("finetune", cfg.eval.finetune, "fine-tuned", "all labelled training images")


def _nonlinear(cfg: DictConfig, result: Dict[str, Any]) -> Dict[str, Any]:
    return {**classifier_protocol("nonlinear", cfg.eval.nonlinear, "frozen", result.get("features", "?")),
            "hidden_dim": cfg.eval.nonlinear.hidden_dim}


def _probe(prop: str) -> Callable[[DictConfig, Dict[str, Any]], Dict[str, Any]]:
    def protocol(cfg: DictConfig, result: Dict[str, Any]) -> Dict[str, Any]:
        return {**classifier_protocol("probe", cfg.eval.probe, "frozen", f"{feature_source(cfg)}, cached"),
                "property": prop, "chance": result.get("chance")}
    return protocol


# Stage name -> its protocol (a random-init twin shares its stage's).
STAGE_PROTOCOLS: Dict[str, Callable[[DictConfig, Dict[str, Any]], Dict[str, Any]]] = {
    "knn": lambda cfg, result: knn_protocol(cfg),
    "linear": _linear,
    "linear_concat": _linear_concat,
    "finetune": _finetune,
    "nonlinear": _nonlinear,
    "probe_rotation": _probe("rotation"),
    "probe_color": _probe("colour or grayscale"),
}


def pretrain_protocols(cfg: DictConfig) -> Dict[str, Any]:
    """The protocols of the figures pretraining records while it trains."""
    return {
        "online_probe_top1": {"name": "online_probe", "features": f"{feature_source(cfg)}, detached, training views",
                              "lr": cfg.monitor.online_probe_lr},
        "knn_monitor_top1": {**knn_protocol(cfg), "during": "pretraining, the last monitored epoch"},
    }


def with_protocol(stage: str, cfg: DictConfig, result: Dict[str, Any]) -> Dict[str, Any]:
    """`result` with its `protocol` (or, for pretraining, `protocols` of its
    monitors), unless the stage set its own."""
    if stage == "pretrain":
        present = {k: v for k, v in pretrain_protocols(cfg).items() if k in result}
        return {**result, "protocols": present} if present and "protocols" not in result else result
    if "protocol" in result or "top1" not in result:
        return result
    build = STAGE_PROTOCOLS.get(stage.removesuffix("_random_init"))
    return {**result, "protocol": build(cfg, result)} if build is not None else result


def protocol_label(protocol: Optional[Dict[str, Any]]) -> str:
    """A protocol in a few words, for a log line or a table's note:
    "knn (k 200, τ 0.1)", "linear (frozen, 30 epochs, augmentation none)"."""
    if not protocol:
        return "protocol not recorded"
    name = protocol.get("name", "?")
    if name == "knn":
        return f"knn (k {protocol.get('k')}, τ {protocol.get('temperature')})"
    details = [protocol[k] for k in ("backbone",) if k in protocol]
    if "label_fraction" in protocol:
        details.append(f"{protocol['label_fraction']:.0%} of the labels")
    if "epochs" in protocol:
        details.append(f"{protocol['epochs']} epochs")
    if "augmentation" in protocol:
        details.append(f"augmentation {protocol['augmentation']}")
    return f"{name} ({', '.join(str(d) for d in details)})" if details else name


def protocol_notes(summaries: Iterable[Dict[str, Any]], stages: Iterable[str]) -> List[str]:
    """One line per (stage, protocol) found among `summaries`, for the note
    under a table: "knn: knn (k 200, τ 0.1); features resnet_tiny output, ..."."""
    lines: List[str] = []
    for stage in stages:
        seen: List[str] = []
        for summary in summaries:
            for section in ("stages", "baseline"):
                protocol = summary.get(section, {}).get(stage, {}).get("protocol")
                if protocol is None:
                    continue
                extra = "; ".join(f"{k} {v}" for k, v in protocol.items()
                                  if k in ("features", "optimizer"))
                text = protocol_label(protocol) + (f"; {extra}" if extra else "")
                if text not in seen:
                    seen.append(text)
        lines += [f"- `{stage}`: {text}" for text in seen]
    return lines
