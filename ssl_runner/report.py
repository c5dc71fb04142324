"""Results tables generated from run folders (never typed by hand).

Each row comes from one run's `summary.json` and carries what a figure needs
to be read honestly: epochs, batch size, backbone, hardware and seed, with
last-epoch test accuracies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List

COLUMNS = ("method", "backbone", "train images", "epochs", "batch", "hardware", "seed", "pretrain min",
           "kNN top-1", "random-init kNN", "kNN gain", "linear top-1", "run")


def find_summaries(paths: Iterable[Path]) -> List[Path]:
    found: List[Path] = []
    for path in paths:
        found += [path] if path.is_file() else sorted(path.rglob("summary.json"))
    return found


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def summary_row(summary: Dict[str, Any]) -> Dict[str, str]:
    stages, baseline = summary.get("stages", {}), summary.get("baseline", {})
    knn = stages.get("knn", {}).get("top1")
    random_knn = baseline.get("knn_random_init", {}).get("top1")
    hw = summary.get("hardware", {})
    hardware = hw.get("gpu") or f"{hw.get('accelerator', '?')} ({hw.get('cpu_threads', '?')} threads)"
    seconds = stages.get("pretrain", {}).get("seconds")
    return {
        "method": summary.get("method"),
        "backbone": summary.get("backbone"),
        "train images": summary.get("train_images") or "all",
        "epochs": summary.get("epochs"),
        "batch": summary.get("batch_size"),
        "hardware": hardware,
        "seed": summary.get("seed"),
        "pretrain min": None if seconds is None else round(seconds / 60, 1),
        "kNN top-1": knn,
        "random-init kNN": random_knn,
        "kNN gain": None if knn is None or random_knn is None else round(knn - random_knn, 2),
        "linear top-1": stages.get("linear", {}).get("top1"),
        "run": Path(summary.get("run_dir", "?")).name,
    }


def markdown_table(summaries: Iterable[Path]) -> str:
    rows = [summary_row(json.loads(p.read_text())) for p in summaries]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)
