"""The pictures in a run folder (ssl_runner/plots.py): curves.png from a
stage's metrics.csv, pretrain/views.png for every method, knn/embedding.png;
listed in summary.json, off with pipeline.plots=false, never fatal."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import cli, compose_config, figures
from PIL import Image
from torchvision.io import read_image

from ssl_runner import plots
from ssl_runner.data.image_folder import UNLABELLED
from ssl_runner.methods import METHODS, build_method
from ssl_runner.methods.counting import counting_inputs
from ssl_runner.plots import (CELL, CLASSIFIER_PANELS, DPI, PANEL, PRETRAIN_PANELS, VIEWS_MIN_WIDTH, curves_figure,
                              epoch_positions, method_inputs, read_metrics, save_figure, views_figure)
from ssl_runner.stages.knn import embedding_plot

SMALL_RUN = ("method=simclr", "data=cifar10", "experiment=smoke", "data.subset=256", "data.test_subset=128",
             "trainer.max_epochs=2", "trainer.log_every_n_steps=1")


def small_run(cifar_root: Path, run_dir: Path, *args: str) -> dict:
    """A small real run (too small for accuracy, enough for every picture); its summary."""
    proc = cli(cifar_root, *SMALL_RUN, *args, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def png_size(path: Path) -> tuple:
    with Image.open(path) as image:
        image.load()  # decodes the whole PNG, not only its header
        return image.size


def render(figure) -> bytes:
    """A figure as save_figure writes it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def panels_size(count: int) -> tuple:
    rows = -(-count // 3)
    return (round(PANEL[0] * DPI * -(-count // rows)), round(PANEL[1] * DPI * rows))


@pytest.fixture(scope="module")
def cifar_images(cifar_root) -> torch.Tensor:
    """Six real CIFAR-10 training images, one per class, uint8 6 x 3 x 32 x 32."""
    classes = sorted(p.name for p in (cifar_root / "train").iterdir())[:6]
    return torch.stack([read_image(str(sorted((cifar_root / "train" / c).iterdir())[0])) for c in classes])


def built_method(name: str):
    cfg = compose_config([f"method={name}", "experiment=smoke"])
    subset = METHODS[name][0].pretrain_images(cfg, 2000).indices
    return build_method(cfg, 10, 2000 if subset is None else len(subset))


# ---- views.png ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(METHODS))
def test_views_png_is_drawn_for_every_method(name, cifar_images, tmp_path):
    method = built_method(name)
    columns, _ = method_inputs(method, cifar_images, torch.Generator().manual_seed(0))
    again, _ = method_inputs(method, cifar_images, torch.Generator().manual_seed(0))
    other, _ = method_inputs(method, cifar_images, torch.Generator().manual_seed(1))
    assert columns and all(t.is_floating_point() and len(t) == len(cifar_images) and t.shape[-3] in (1, 2, 3)
                           for _, t in columns)
    # Seeded: the same picture every time, another one for another seed.
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(columns, again))
    assert not all(torch.equal(a, b) for (_, a), (_, b) in zip(columns, other))
    state = torch.get_rng_state()
    assert save_figure(tmp_path, "pretrain/views.png", lambda: views_figure(method, cifar_images, 0)) == \
        ["pretrain/views.png"]
    assert torch.equal(torch.get_rng_state(), state)  # later stages draw what they would have without it
    width = max(CELL * (1 + len(columns)), VIEWS_MIN_WIDTH)
    assert png_size(tmp_path / "pretrain" / "views.png") == (round(width * DPI), round((CELL * 6 + 0.5) * DPI))
    with Image.open(tmp_path / "pretrain" / "views.png") as image:
        assert len(image.convert("RGB").getcolors(1 << 16) or range(1 << 16)) > 1000  # images, not a blank grid


def test_the_views_show_what_each_pretext_method_trains_on(cifar_images):
    def inputs(name):
        method = built_method(name)
        columns, labels = method_inputs(method, cifar_images, torch.Generator().manual_seed(0))
        return method, dict(columns), dict(labels)

    _, rotnet, _ = inputs("rotnet")  # all four rotations of one view
    assert list(rotnet) == ["rotated 0 deg", "rotated 90 deg", "rotated 180 deg", "rotated 270 deg"]
    for k, view in enumerate(rotnet.values()):
        assert torch.equal(view, torch.rot90(rotnet["rotated 0 deg"], k, dims=(-2, -1)))
    counting, columns, _ = inputs("counting")  # D(x) and the four tiles, as ssl_step makes them
    made = counting_inputs(columns["view"], *[str(counting.cfg.method.interpolations[0])] * 2)
    assert torch.equal(columns["D(x)"], made[:6]) and columns["tiles T1-T4"].shape == (6, 4, 3, 32, 32)
    assert torch.equal(columns["tiles T1-T4"][:, 2], made[18:24])
    _, context, _ = inputs("context_encoder")  # a region dropped to 0, the rest the view
    dropped = (context["context (masked)"] != context["view"]).any(1)
    assert 0.05 < dropped.float().mean() <= 0.25 and (context["context (masked)"][:, 0][dropped] == 0).all()
    _, jigsaw, labels = inputs("jigsaw")
    assert jigsaw["tiles (shuffled)"].shape[:2] == (6, 9) and labels["permutation"].dtype == torch.int64
    _, pairs, labels = inputs("relative_loc")
    assert set(pairs) == {"centre patch", "neighbour patch"} and labels["position"].max() < 8
    _, colour, _ = inputs("colorization")
    assert colour["ab target"].shape[1] == 2 and colour["L input"].shape[1] == 3
    looc, keys, _ = inputs("looc")
    assert len(keys) == 2 + len(looc.cfg.method.augmentations)
    for name in ("exemplar", "npid"):  # one view per image: several draws show the augmentation
        _, draws, _ = inputs(name)
        assert len(draws) == 4 and not torch.equal(draws["draw 1"], draws["draw 2"])


# ---- curves.png, embedding.png, failures -----------------------------------------------
@pytest.fixture(scope="module")
def plotted_run(cifar_root, tmp_path_factory):
    """A small real run with the pictures on, metrics logged every step."""
    run_dir = tmp_path_factory.mktemp("plots") / "run"
    return run_dir, small_run(cifar_root, run_dir, "pipeline.plots=true")  # conftest's cli() turns them off


@pytest.mark.integration
def test_curves_from_a_real_metrics_csv(plotted_run, tmp_path):
    run_dir, _ = plotted_run
    rows = read_metrics(run_dir / "pretrain" / "metrics.csv")
    positions = epoch_positions(rows)
    assert [x for x, r in zip(positions, rows) if "train/loss_epoch" in r] == [1.0, 2.0]
    steps = [x for x, r in zip(positions, rows) if "train/loss_step" in r]
    assert len(steps) == 4 and steps == sorted(steps) and 0 < steps[0] < 1 < steps[2] and steps[-1] <= 2
    figure = curves_figure(run_dir / "pretrain" / "metrics.csv", PRETRAIN_PANELS, "t")
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert titles == ["SSL loss", "learning rate", "kNN monitor", "online linear probe", "collapse monitor"]
    assert all(ax.get_xlabel() == "epoch" and ax.get_legend() for ax in figure.axes if ax.get_visible())
    assert png_size(io.BytesIO(render(figure))) == panels_size(5)
    # Only what was logged: without the kNN monitor's columns, four panels (2 x 2).
    with open(run_dir / "pretrain" / "metrics.csv") as fh:
        table = list(csv.DictReader(fh))
    kept = [k for k in table[0] if not k.startswith("val/")]
    with open(tmp_path / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, kept, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r for r in table if any(r[k] for k in kept if k not in ("epoch", "step")))
    figure = curves_figure(tmp_path / "metrics.csv", PRETRAIN_PANELS, "t")
    assert [ax.get_title() for ax in figure.axes] == ["SSL loss", "learning rate", "online linear probe",
                                                      "collapse monitor"]
    assert png_size(io.BytesIO(render(figure))) == panels_size(4)
    # The linear probe: loss and accuracy by epoch, its test figure at the last epoch.
    figure = curves_figure(run_dir / "linear" / "metrics.csv", CLASSIFIER_PANELS, "t")
    lines = {line.get_label(): line for ax in figure.axes for line in ax.get_lines()}
    assert list(lines["train (epoch mean)"].get_xdata()) == [1, 2, 3, 4, 5]
    assert list(lines["test (after training)"].get_xdata()) == [5]


def test_a_picture_that_fails_is_a_warning_and_nothing_is_written(tmp_path, caplog):
    def broken():
        raise ValueError("no such column")

    with caplog.at_level(logging.WARNING, logger="ssl_runner.plots"):
        assert save_figure(tmp_path, "pretrain/curves.png", broken) == []
    assert "could not draw pretrain/curves.png (ValueError: no such column)" in caplog.text
    assert save_figure(tmp_path, "pretrain/curves.png", lambda: None) == []  # nothing to draw
    assert not list(tmp_path.rglob("*"))


def test_the_embedding_is_class_balanced_capped_and_coloured_by_class(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "EMBEDDING_POINTS", 300)
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 500 + [1] * 200 + [2] * 100)
    features = torch.randn(800, 16, generator=generator) + 4 * torch.eye(16)[labels]
    figure = plots.embedding_figure(features, labels, ["cat", "dog", "ship"], "t", seed=0)
    ax = figure.axes[0]
    assert [len(c.get_offsets()) for c in ax.collections] == [100, 100, 100]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cat", "dog", "ship"]
    assert len({tuple(c.get_facecolor()[0]) for c in ax.collections}) == 3
    ctx = SimpleNamespace(run_dir=tmp_path, cfg=SimpleNamespace(seed=0),
                          test_images=SimpleNamespace(classes=["cat", "dog", "ship"]))
    assert embedding_plot(ctx, {"test": features, "test_labels": labels}, "t") == ["knn/embedding.png"]
    assert png_size(tmp_path / "knn" / "embedding.png") == (900, 650)


def test_no_embedding_without_labels(tmp_path, caplog):
    ctx = SimpleNamespace(run_dir=tmp_path, cfg=SimpleNamespace(seed=0), test_images=SimpleNamespace(classes=[]))
    unlabelled = {"test": torch.randn(50, 8), "test_labels": torch.full((50,), UNLABELLED)}
    with caplog.at_level(logging.INFO, logger="ssl_runner.stages.knn"):
        assert embedding_plot(ctx, unlabelled, "t") == []
    assert len(caplog.records) == 1 and "no class labels" in caplog.text
    assert not (tmp_path / "knn").exists()


# ---- a run ----------------------------------------------------------------------------
@pytest.mark.integration
def test_a_run_lists_its_pictures_and_they_are_drawn(plotted_run):
    run_dir, summary = plotted_run
    listed = {name: record.get("plots") for section in ("stages", "baseline")
              for name, record in summary[section].items()}
    assert listed == {"pretrain": ["pretrain/curves.png", "pretrain/views.png"], "knn": ["knn/embedding.png"],
                      "linear": ["linear/curves.png"], "knn_random_init": None,
                      "linear_random_init": ["linear_random_init/curves.png"]}
    sizes = {"pretrain/curves.png": panels_size(5), "pretrain/views.png": (420, 890),
             "knn/embedding.png": (900, 650), "linear/curves.png": panels_size(2),
             "linear_random_init/curves.png": panels_size(2)}
    assert {p: png_size(run_dir / p) for p in sizes} == sizes
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.png")) == sorted(sizes)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["knn"]["plots"] == ["knn/embedding.png"]


@pytest.mark.integration
def test_plots_false_draws_nothing_and_changes_no_figure(cifar_root, plotted_run, tmp_path):
    run_dir, summary = plotted_run
    off = small_run(cifar_root, tmp_path / "run", "pipeline.plots=false")
    assert not list((tmp_path / "run").rglob("*.png"))
    assert not any("plots" in record for section in ("stages", "baseline") for record in off[section].values())
    # Pictures are drawn beside the work, not in it: every figure is the same.
    drawn = {name: {k: v for k, v in record.items() if k != "plots"} for name, record in figures(summary).items()}
    assert figures(off) == drawn
