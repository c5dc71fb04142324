"""Results tables generated from run folders (never typed by hand).

Each row comes from one run's `summary.json` and carries what a figure needs
to be read honestly: epochs, batch size, backbone, hardware and seed, with
last-epoch test accuracies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List

from omegaconf import OmegaConf

from ssl_runner.protocols import protocol_notes

COLUMNS = ("method", "backbone", "image px", "features", "train images", "epochs", "batch", "hardware", "seed",
           "pretrain min", "kNN top-1", "random-init kNN", "kNN gain", "linear top-1", "run")


def find_summaries(paths: Iterable[Path]) -> List[Path]:
    found: List[Path] = []
    for path in paths:
        found += [path] if path.is_file() else sorted(path.rglob("summary.json"))
    return found


def format_cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def load_summary(path: Path) -> Dict[str, Any]:
    """A run's summary.json; facts that summaries written before they were
    recorded lack (image_size, feature_layer) are read from the run's
    config.yaml beside it, when there is one."""
    summary = json.loads(path.read_text())
    config = path.with_name("config.yaml")
    if config.is_file() and not {"image_size", "feature_layer"} <= summary.keys():
        cfg = OmegaConf.load(config)
        summary.setdefault("image_size", OmegaConf.select(cfg, "data.image_size"))
        summary.setdefault("feature_layer", OmegaConf.select(cfg, "eval.feature_layer"))
    return summary


def run_name(summary: Dict[str, Any]) -> str:
    """The run folder's name (`run`; summaries written before it was added
    held the folder's path as `run_dir`)."""
    return summary.get("run") or Path(summary.get("run_dir", "?")).name


def summary_row(summary: Dict[str, Any]) -> Dict[str, str]:
    stages, baseline = summary.get("stages", {}), summary.get("baseline", {})
    knn = stages.get("knn", {}).get("top1")
    random_knn = baseline.get("knn_random_init", {}).get("top1")
    hw = summary.get("hardware", {})
    hardware = (hw.get("gpu") or f"{hw.get('accelerator', '?')} ({hw.get('cpu_threads', '?')} threads)") if hw else None
    seconds = stages.get("pretrain", {}).get("seconds")
    return {
        "method": summary.get("method"),
        "backbone": summary.get("backbone"),
        "image px": summary.get("image_size"),
        # The backbone stage the evaluation read: h (after the last stage) unless eval.feature_layer.
        "features": summary.get("feature_layer") or ("h" if "feature_layer" in summary else None),
        # null: the whole split; absent: a job that failed before its data were loaded.
        "train images": summary.get("train_images") or ("all" if "train_images" in summary else None),
        "epochs": summary.get("epochs"),
        "batch": summary.get("batch_size"),
        "hardware": hardware,
        "seed": summary.get("seed"),
        "pretrain min": None if seconds is None else round(seconds / 60, 1),
        "kNN top-1": knn,
        "random-init kNN": random_knn,
        "kNN gain": None if knn is None or random_knn is None else round(knn - random_knn, 2),
        "linear top-1": stages.get("linear", {}).get("top1"),
        "run": run_name(summary),
    }


# Figures shown only when some run has them: column -> (summary section, stage).
OPTIONAL_COLUMNS = {
    "random-init linear": ("baseline", "linear_random_init"),
    "LooC++ linear": ("stages", "linear_concat"),
    "non-linear": ("stages", "nonlinear"),
    "random-init non-linear": ("baseline", "nonlinear_random_init"),
    "rotation probe": ("stages", "probe_rotation"),
    "random-init rotation probe": ("baseline", "probe_rotation_random_init"),
    "colour probe": ("stages", "probe_color"),
    "random-init colour probe": ("baseline", "probe_color_random_init"),
    "fine-tuned": ("stages", "finetune"),
    "semi 1 %": ("stages", "semi_1pct"),
    "random-init semi 1 %": ("baseline", "semi_1pct_random_init"),
    "semi 10 %": ("stages", "semi_10pct"),
    "random-init semi 10 %": ("baseline", "semi_10pct_random_init"),
}


def optional_figure(summary: Dict[str, Any], column: str) -> Any:
    section, stage = OPTIONAL_COLUMNS[column]
    return summary.get(section, {}).get(stage, {}).get("top1")


def run_outcome(summary: Dict[str, Any]) -> str:
    """"done", or the status and the reason of a run that did not finish
    (summaries written before runs recorded a status count as done)."""
    status = summary.get("status", "done")
    if status == "done":
        return "done"
    reason = " ".join(str(summary.get("error", "")).split())
    where = f" in {summary['stage']}" if summary.get("stage") else ""
    return f"{status}{where}: {reason[:160]}" if reason else f"{status}{where}"


# The stages whose figures the tables show, in the order their protocols are listed.
TABLE_STAGES = ("knn", "linear", *dict.fromkeys(stage for _, stage in OPTIONAL_COLUMNS.values()))


def protocols_note(summaries: List[Dict[str, Any]]) -> str:
    """The note under a table: each figure's protocol, as its runs recorded it."""
    stages = [s.removesuffix("_random_init") for s in TABLE_STAGES]
    lines = protocol_notes(summaries, dict.fromkeys(stages))
    return "\n\nProtocols (every figure is last-epoch top-1 on the test split, %):\n" + "\n".join(lines) if lines else ""


def markdown_table(summaries: Iterable[Path]) -> str:
    """One row per run; a "status" column (with the reason) when any run
    failed or diverged; the figures' protocols below it."""
    loaded = [load_summary(p) for p in summaries]
    extra = [c for c in OPTIONAL_COLUMNS if any(optional_figure(s, c) is not None for s in loaded)]
    failed = any(run_outcome(s) != "done" for s in loaded)
    columns = [*COLUMNS[:-1], *extra, *(["status"] if failed else []), COLUMNS[-1]]
    rows = []
    for summary in loaded:
        row = summary_row(summary)
        row.update({c: optional_figure(summary, c) for c in extra})
        row["status"] = run_outcome(summary).replace("|", "/")
        rows.append(row)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + protocols_note(loaded)
