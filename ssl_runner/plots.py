"""The pictures in a run folder (`pipeline.plots`): a training stage's
curves from its metrics.csv (`curves.png`), the inputs a method trains on
(`pretrain/views.png`) and a t-SNE map of the test features
(`knn/embedding.png`).

Pictures are not results: `save_figure` turns a picture that fails into a
warning, so that a plotting bug never loses a run. Figures are drawn with
matplotlib's object API on the Agg canvas (no pyplot: no global state, no
display) and written atomically, like every file in the run folder.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import Tensor
from torchvision.utils import make_grid

from ssl_runner.data.datasets import balanced_subset
from ssl_runner.distributed import collectives
from ssl_runner.methods.base import BaseMethod
from ssl_runner.methods.context_encoder import ContextEncoder
from ssl_runner.methods.counting import Counting, counting_inputs
from ssl_runner.methods.rotnet import RotNet, four_rotations
from ssl_runner.safe_io import atomic_write_bytes
from ssl_runner.views.colorization import ColorizationViews
from ssl_runner.views.jigsaw import JigsawPuzzles
from ssl_runner.views.lab import lab_to_rgb
from ssl_runner.views.leave_one_out import LeaveOneOutViews
from ssl_runner.views.masks import draw_mask
from ssl_runner.views.pirl import PIRLViews
from ssl_runner.views.pixels import normalize, to_unit_float
from ssl_runner.views.relative_location import PatchPairs

log = logging.getLogger(__name__)

DPI = 100
# Inches: one curve panel, one cell of the views grid (a picture stays under 1400 px wide).
PANEL, CELL, PANELS_PER_ROW = (4.0, 3.0), 1.4, 3
EMBEDDING_SIZE = (9.0, 6.5)
# The t-SNE map's cap on points, and the most classes that get a legend.
EMBEDDING_POINTS, LEGEND_CLASSES = 2000, 20
# t-SNE's optimisation steps (scikit-learn's default is 1000): half the cost,
# and with the PCA start the map has settled by then.
TSNE_ITERATIONS = 500
# Training images in views.png, and draws of a method that makes one view and changes it no further.
VIEW_IMAGES, SINGLE_VIEW_DRAWS = 6, 4
VIEWS_MIN_WIDTH = 4.2  # inches: room for the title above a narrow grid
# Lightness at which colorization's ab target is shown (Lab's L is 0..100).
AB_LIGHTNESS = 65.0

# (panel title, y label, [(metrics.csv column, legend label)]); a panel is drawn when one of its columns has values.
Panel = Tuple[str, str, List[Tuple[str, str]]]
PRETRAIN_PANELS: List[Panel] = [
    ("SSL loss", "loss", [("train/loss_step", "per step"), ("train/loss_epoch", "epoch mean")]),
    ("learning rate", "lr (first parameter group)", [("train/lr", "per step")]),
    ("kNN monitor", "top-1 (%)", [("val/knn_top1", "test split")]),
    ("online linear probe", "top-1 (%)",
     [("train/probe_top1", "training views"), ("val/probe_top1", "test split")]),
    ("collapse monitor", "std of normalised embeddings", [("train/embedding_std", "epoch mean")]),
]
CLASSIFIER_PANELS: List[Panel] = [
    ("loss", "cross-entropy", [("train/loss", "train (epoch mean)")]),
    ("accuracy", "top-1 (%)", [("train/top1", "train (epoch mean)"), ("test/top1", "test (after training)")]),
]
# Columns logged per step (the others are epoch means or validation passes: drawn with markers).
STEP_COLUMNS = ("train/loss_step", "train/lr")


def plots_enabled(cfg: DictConfig) -> bool:
    """Pictures are drawn by the main process, unless pipeline.plots is false."""
    return bool(cfg.pipeline.plots) and collectives.is_main_process()


def save_figure(run_dir: Path, relative: str, draw: Callable[[], Optional[Figure]]) -> List[str]:
    """Draw the picture `relative` (a path in the run folder) as a PNG; returns
    [relative] when drawn, [] when `draw` had nothing to draw or failed (a warning
    with the reason: the run goes on without the picture)."""
    try:
        figure = draw()
        if figure is None:
            return []
        buffer = io.BytesIO()
        FigureCanvasAgg(figure).print_png(buffer)
        path = Path(run_dir) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
        return [relative]
    except Exception as err:  # a picture is never worth a run
        log.warning("could not draw %s (%s: %s); the run goes on without it", relative, type(err).__name__, err)
        return []


# ---- curves.png ---------------------------------------------------------------------
def read_metrics(path: Path) -> List[Dict[str, float]]:
    """metrics.csv's rows as {column: value}, empty cells left out."""
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if k and v not in (None, "")} for row in csv.DictReader(fh)]


def epoch_positions(rows: Sequence[Dict[str, float]]) -> List[float]:
    """Each row's place on a 1-based epoch axis: epoch e (0-based in the CSV)
    spans (e, e + 1], its last step at e + 1 (where its means and validation
    are logged), a step-level row at its share of the epoch's steps."""
    last_step: Dict[int, float] = {}
    for row in rows:
        epoch = int(row["epoch"])
        last_step[epoch] = max(last_step.get(epoch, -math.inf), row["step"])
    positions = []
    for row in rows:
        epoch = int(row["epoch"])
        start = last_step.get(epoch - 1, -1.0)
        span = last_step[epoch] - start
        positions.append(epoch + ((row["step"] - start) / span if span > 0 else 1.0))
    return positions


def curves_figure(metrics_csv: Path, panels: Sequence[Panel], title: str) -> Optional[Figure]:
    """One panel per entry of `panels` that metrics.csv has values for, against
    epochs; None when it has none. A test figure (logged once, after training)
    is placed at the last training epoch."""
    rows = [row for row in read_metrics(metrics_csv) if "epoch" in row and "step" in row]
    positions = epoch_positions(rows)
    trained = [x for x, row in zip(positions, rows) if any(k.startswith("train/") for k in row)]
    drawn = [panel for panel in panels if any(column in row for column, _ in panel[2] for row in rows)]
    if not drawn:
        return None
    grid_rows = math.ceil(len(drawn) / PANELS_PER_ROW)
    columns = math.ceil(len(drawn) / grid_rows)  # 4 panels: 2 x 2, not 3 + 1
    figure = Figure(figsize=(PANEL[0] * columns, PANEL[1] * grid_rows), dpi=DPI, layout="constrained")
    figure.suptitle(title)
    axes = figure.subplots(grid_rows, columns, squeeze=False).flatten()
    for ax, (name, ylabel, series) in zip(axes, drawn):
        for column, label in series:
            points = [(x, row[column]) for x, row in zip(positions, rows) if column in row]
            if column.startswith("test/") and trained:
                points = [(max(trained), y) for _, y in points]
            if points:
                xs, ys = zip(*points)
                style = {"linewidth": 1.0, "alpha": 0.6} if column in STEP_COLUMNS else {"marker": "o", "ms": 4}
                ax.plot(xs, ys, label=label, **style)
        ax.set(title=name, xlabel="epoch", ylabel=ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(drawn):]:
        ax.set_visible(False)
    return figure


# ---- views.png ----------------------------------------------------------------------
def _displayed(image: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """A C x H x W input -> 3 x H x W in [0, 1]. RGB is un-normalised with the
    data's mean and std, then, when that leaves [0, 1] (a tile standardised on
    its own), rescaled to it as a whole (hues kept); one channel is gray; two
    are Lab's ab (colorization's target), shown at a fixed lightness."""
    image = image.detach().float().cpu()
    if image.shape[0] == 2:
        return lab_to_rgb(torch.cat([torch.full_like(image[:1], AB_LIGHTNESS), image]))
    if image.shape[0] == 3:
        image = image * std + mean
    low, high = image.min(), image.max()
    if image.shape[0] != 3 or low < -0.05 or high > 1.05:
        image = (image - low) / (high - low).clamp_min(1e-8)
    return image.clamp(0.0, 1.0).expand(3, -1, -1)


def _cell(item: Tensor, mean: Tensor, std: Tensor) -> np.ndarray:
    """One image (C x H x W) or tile set (T x C x h x w, in a square grid) as H x W x 3."""
    if item.dim() == 4:
        tiles = torch.stack([_displayed(tile, mean, std) for tile in item])
        item = make_grid(tiles, nrow=math.ceil(math.sqrt(len(tiles))), padding=1, pad_value=1.0)
    else:
        item = _displayed(item, mean, std)
    return item.permute(1, 2, 0).numpy()


# Column titles of a pretext maker's image-like views, and what its labels are.
VIEW_NAMES = {ColorizationViews: (["L input", "ab target"], "label"),
              PatchPairs: (["centre patch", "neighbour patch"], "position"),
              JigsawPuzzles: (["tiles (shuffled)"], "permutation"),
              PIRLViews: (["image view", "tiles (shuffled)"], "label")}


def _view_names(maker: object, count: int) -> Tuple[List[str], str]:
    if isinstance(maker, LeaveOneOutViews):
        return ["query q", "key k0"] + [f"k{i}: q's {name}" for i, name in enumerate(maker.augmentations, 1)], "label"
    return VIEW_NAMES.get(type(maker), ([f"view {i}" for i in range(1, count + 1)], "label"))


Columns = List[Tuple[str, Tensor]]


def method_inputs(method: BaseMethod, images: Tensor, generator: torch.Generator) -> Tuple[Columns, Columns]:
    """What the method trains on for uint8 `images`: named image-like tensors
    (N x C x H x W, or N x T x C x h x w tiles) and named label tensors (N) of
    a pretext task. Inputs made in the method's `ssl_step` from its views
    (RotNet's rotations, Counting's inputs, the context encoder's masked
    image) are made here with the method's own functions."""
    views = method.view_maker.views(images, generator)
    shown = [v for v in views if v.is_floating_point() and v.dim() in (4, 5)]
    names, label_name = _view_names(method.view_maker, len(shown))
    labels = [(label_name, v) for v in views if v.dim() == 1]
    view = shown[0]
    if isinstance(method, RotNet):
        rotated = four_rotations(view)[0].view(4, *view.shape)
        return [(f"rotated {90 * k} deg", rotated[k]) for k in range(4)], labels
    if isinstance(method, Counting):
        mode = str(method.cfg.method.interpolations[0])
        inputs = counting_inputs(view, mode, mode).view(5, *view.shape)
        return [("view", view), ("D(x)", inputs[0]), ("tiles T1-T4", inputs[1:].transpose(0, 1))], labels
    if isinstance(method, ContextEncoder):
        m = method.cfg.method
        mask = draw_mask(m.mask, len(view), view.shape[-2], view.shape[-1], m.min_region_fraction,
                         generator=generator)
        # Filled with 0 (the data mean after normalisation), as ContextEncoder.inpaint does.
        return [("view", view), ("context (masked)", view.masked_fill(mask, 0.0))], labels
    if len(shown) == 1 and view.dim() == 4:  # one view and nothing else: several draws show the augmentation
        draws = [view] + [method.view_maker.views(images, generator)[0] for _ in range(SINGLE_VIEW_DRAWS - 1)]
        return [(f"draw {i}", d) for i, d in enumerate(draws, 1)], labels
    return list(zip(names, shown)), labels


def views_figure(method: BaseMethod, images: Tensor, seed: int) -> Figure:
    """A row per uint8 training image of `images`: the image, then the inputs
    the method trains on, drawn with a generator seeded by `seed` (the same
    picture every time; the global random state is left as it was)."""
    images = images.cpu()
    with torch.random.fork_rng(devices=[]):
        columns, labels = method_inputs(method, images, torch.Generator().manual_seed(seed))
    data = method.cfg.data
    mean, std = (torch.tensor(list(v), dtype=torch.float32).view(3, 1, 1) for v in (data.mean, data.std))
    columns = [("image", normalize(to_unit_float(images), data.mean, data.std))] + columns
    width = max(CELL * len(columns), VIEWS_MIN_WIDTH)
    figure = Figure(figsize=(width, CELL * len(images) + 0.5), dpi=DPI, layout="constrained")
    figure.suptitle(f"{method.cfg.method.name}: images and their training inputs", fontsize="medium")
    axes = figure.subplots(len(images), len(columns), squeeze=False)
    for row in range(len(images)):
        for col, (title, batch) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(_cell(batch[row], mean, std), interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            if row == 0:
                ax.set_title(title, fontsize="small")
        if labels:
            axes[row, -1].set_xlabel(", ".join(f"{name} {int(t[row])}" for name, t in labels), fontsize="small")
    return figure


# ---- embedding.png -----------------------------------------------------------------
def embedding_figure(features: Tensor, labels: Tensor, classes: Sequence[str], title: str,
                     seed: int) -> Figure:
    """A 2-d t-SNE (PCA initialised, seeded) of at most `EMBEDDING_POINTS`
    features, class-balanced, coloured by class. The features are L2-normalised
    first: Euclidean distances then rank neighbours as the kNN's cosine does."""
    from sklearn.manifold import TSNE  # imported when drawn: it costs a CLI start about a second
    from threadpoolctl import threadpool_limits

    chosen = balanced_subset(labels, EMBEDDING_POINTS, seed)
    points = F.normalize(features[chosen].float(), dim=1).numpy()
    chosen_labels = labels[chosen].numpy()
    perplexity = min(30.0, (len(points) - 1) / 3)
    # One thread: beside torch's OpenMP runtime, scikit-learn's own threads spin
    # against torch's idle ones (2000 points: 4 s on one thread, 30 s on two).
    with threadpool_limits(limits=1):
        xy = TSNE(2, perplexity=perplexity, init="pca", max_iter=TSNE_ITERATIONS,
                  random_state=seed).fit_transform(points)
    figure = Figure(figsize=EMBEDDING_SIZE, dpi=DPI, layout="constrained")
    ax = figure.subplots()
    present = np.unique(chosen_labels)
    few = len(classes) <= LEGEND_CLASSES  # distinct colours and a legend; else a colour scale
    palette = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20" if few else "turbo"]
    for c in present:
        at = chosen_labels == c
        ax.scatter(xy[at, 0], xy[at, 1], s=float(np.clip(12000 / len(points), 4, 30)), label=classes[int(c)],
                   color=palette(int(c) if few else int(c) / (len(classes) - 1)), alpha=0.8, linewidths=0)
    ax.set(title=f"{title}\nt-SNE of {len(points)} test features, {len(present)} classes",
           xlabel="t-SNE 1", ylabel="t-SNE 2", xticks=[], yticks=[])
    if few:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3, fontsize="small", frameon=False)
    return figure


__all__ = ["CLASSIFIER_PANELS", "PRETRAIN_PANELS", "curves_figure", "embedding_figure", "epoch_positions",
           "method_inputs", "plots_enabled", "read_metrics", "save_figure", "views_figure"]
