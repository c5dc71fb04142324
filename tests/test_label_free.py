"""The label-free monitors (issue 18): RankMe, alignment and uniformity as
pure functions (ssl_runner/eval/label_free.py) checked against values worked
out by hand, the pretraining callback that measures them every epoch
(ssl_runner/label_free_monitor.py) and a real run that records them in
metrics.csv and summary.json without changing what the run trains."""

from __future__ import annotations

import copy
import csv
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_config, strict_json
from lightning.pytorch.callbacks import Callback

from ssl_runner.callbacks import EpochRecord
from ssl_runner.data.datasets import ImageSet
from ssl_runner.errors import UserError
from ssl_runner.eval.label_free import alignment, rankme, uniformity
from ssl_runner.label_free_monitor import LabelFreeMonitor, label_free_result, monitored_indices
from ssl_runner.methods import build_method
from ssl_runner.models.backbones import build_backbone
from ssl_runner.sweeps.objective import check_objective, objective_value
from ssl_runner.views.pixels import eval_view


# ---- RankMe ---------------------------------------------------------------------------------
def test_rankme_of_a_rank_one_matrix_is_one():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 1, generator=g) @ torch.randn(1, 64, generator=g)
    assert rankme(z) == pytest.approx(1.0, abs=1e-3)


def test_rankme_of_isotropic_gaussian_embeddings_is_close_to_the_dimension():
    z = torch.randn(2000, 64, generator=torch.Generator().manual_seed(0))
    assert 0.9 * 64 < rankme(z) <= 64


@pytest.mark.parametrize("k", [1, 3, 10])
def test_rankme_of_k_equal_orthogonal_singular_values_is_k(k):
    q, _ = torch.linalg.qr(torch.randn(100, 32, generator=torch.Generator().manual_seed(k), dtype=torch.float64))
    z = 2.5 * q[:, :k] @ torch.eye(32, dtype=torch.float64)[:k]  # 100 x 32, k singular values of 2.5
    assert rankme(z) == pytest.approx(k, abs=1e-3)


def test_rankme_by_hand_normalises_by_the_l1_norm_of_the_singular_values():
    # Singular values 3 and 1: p = (0.75, 0.25), RankMe = exp(-0.75 log 0.75 - 0.25 log 0.25) = 1.7548...
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert rankme(torch.tensor([[3.0, 0.0], [0.0, 1.0]])) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1.754765, abs=1e-6)
    # (Normalised by the squares, p = (0.9, 0.1), it would be 1.384.)


def test_rankme_takes_the_raw_matrix_not_the_mean_centred_one():
    # Two orthogonal rows: singular values 1 and 1, RankMe 2; centred, the rows would be
    # opposite (rank 1), and N identical rows would be the zero matrix instead of rank 1.
    assert rankme(torch.eye(2)) == pytest.approx(2.0, abs=1e-3)
    assert rankme(torch.ones(50, 8)) == pytest.approx(1.0, abs=1e-3)


def test_rankme_of_a_non_finite_or_zero_matrix():
    assert math.isnan(rankme(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])))
    assert rankme(torch.zeros(10, 4)) == 0.0


# ---- alignment and uniformity -----------------------------------------------------------------
def test_alignment_of_identical_antipodal_and_orthogonal_views():
    z = torch.randn(100, 16, generator=torch.Generator().manual_seed(0))
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-12)
    assert alignment(z, 3.0 * z) == pytest.approx(0.0, abs=1e-12)  # normalised inside
    assert alignment(z, -z) == pytest.approx(4.0, abs=1e-12)
    e = torch.eye(2)
    assert alignment(e[:1], e[1:], alpha=2) == pytest.approx(2.0)
    assert alignment(e[:1], e[1:], alpha=1) == pytest.approx(math.sqrt(2.0))


def test_uniformity_by_hand_on_three_points():
    # e1, e2, -e1 (the last given unnormalised): squared distances 2, 4 and 2.
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-5.0, 0.0]])
    expected = math.log((2 * math.exp(-2 * 2) + math.exp(-2 * 4)) / 3)
    assert uniformity(points) == pytest.approx(expected, abs=1e-12)
    assert uniformity(points, t=1) == pytest.approx(math.log((2 * math.exp(-2) + math.exp(-4)) / 3), abs=1e-12)


def test_uniformity_bounds():
    assert uniformity(torch.ones(20, 5)) == pytest.approx(0.0, abs=1e-12)  # all one point
    assert uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)  # the bound for N = 2
    for n, d in [(10, 3), (500, 64)]:
        value = uniformity(torch.randn(n, d, generator=torch.Generator().manual_seed(n)))
        assert -2 * (2 + 2 / (n - 1)) <= value < 0
    # Many points over a high-dimensional sphere: close to -2t.
    assert uniformity(torch.randn(1000, 256, generator=torch.Generator().manual_seed(1))) < -3.8


# ---- the callback -----------------------------------------------------------------------------
def _monitor_setup():
    cfg = compose_config(["method=simclr", "experiment=smoke", "data.eval_batch_size=12",
                          "monitor.label_free_images=24"])
    g = torch.Generator().manual_seed(0)
    images = ImageSet(labels=torch.arange(40) % 10, classes=[str(c) for c in range(10)],
                      images=torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g))
    torch.manual_seed(0)
    return cfg, images, build_method(cfg, 10, 40)


def test_the_monitored_images_are_fixed_by_the_seed():
    first = monitored_indices(1000, 64, seed=0)
    assert torch.equal(first, monitored_indices(1000, 64, seed=0)) and len(set(first.tolist())) == 64
    assert torch.equal(first, first.sort().values)
    assert not torch.equal(first, monitored_indices(1000, 64, seed=1))
    assert torch.equal(monitored_indices(30, 64, seed=0), torch.arange(30))  # fewer images: all of them


def test_measuring_leaves_the_training_state_alone_and_is_reproducible():
    cfg, images, method = _monitor_setup()
    monitor = LabelFreeMonitor(cfg, images)
    backbone = method.backbone.train()
    first_bn = next(m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first_bn.eval()  # a module kept in eval mode stays so
    modes = [m.training for m in backbone.modules()]
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    rng = torch.get_rng_state()
    figures = monitor.measure(backbone, epoch=3, device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng)  # the global generator is never drawn from
    assert [m.training for m in backbone.modules()] == modes
    assert all(torch.equal(v, state[k]) for k, v in backbone.state_dict().items())  # BatchNorm statistics too
    assert monitor.pixels().shape == (24, 3, 32, 32)
    # Seeded from (seed, epoch): the same again, other views at another epoch (RankMe reads the unaugmented images).
    assert monitor.measure(backbone, epoch=3, device=torch.device("cpu")) == figures
    other = monitor.measure(backbone, epoch=4, device=torch.device("cpu"))
    assert other["rankme"] == figures["rankme"] and other["alignment"] != figures["alignment"]
    assert 1 < figures["rankme"] <= min(24, backbone.feature_dim)
    assert 0 <= figures["alignment"] <= 4 and -4.2 <= figures["uniformity"] <= 0
    # The unaugmented images' features, as the evaluation reads them.
    with torch.no_grad():
        backbone.eval()
        plain = backbone(eval_view(images.images[monitored_indices(40, 24, cfg.seed)], cfg.data.mean, cfg.data.std))
    assert figures["rankme"] == pytest.approx(rankme(plain), rel=1e-5)


def test_the_history_survives_the_checkpoint_and_the_summary_never_holds_nan():
    cfg, images, method = _monitor_setup()
    monitor = LabelFreeMonitor(cfg, images)
    monitor._record(0, {"rankme": 12.345678, "alignment": 0.5, "uniformity": -2.0})
    monitor._record(1, {"rankme": float("nan"), "alignment": 0.25, "uniformity": float("inf")})
    restored = LabelFreeMonitor(cfg, images)
    restored.load_state_dict(monitor.state_dict())
    result = label_free_result(SimpleNamespace(callbacks=[EpochRecord(), restored]))
    assert result == {"rankme": None, "alignment": 0.25, "uniformity": None,
                      "monitors": {"rankme": [12.3457, None], "alignment": [0.5, 0.25], "uniformity": [-2.0, None]}}
    assert label_free_result(SimpleNamespace(callbacks=[EpochRecord()])) == {}  # monitor.label_free=false


def test_an_epoch_stopped_before_its_measurement_is_measured_on_resume():
    """A stop request at an epoch's end saves before the monitor's turn; the
    resumed run measures the restored weights (that epoch's last) at fit start."""
    cfg, images, method = _monitor_setup()
    monitor = LabelFreeMonitor(cfg, images)
    monitor._record(0, {"rankme": 2.0, "alignment": 0.5, "uniformity": -2.0})
    record = EpochRecord()
    record.epoch, record.epoch_finished = 1, True
    trainer = SimpleNamespace(callbacks=[record, monitor], strategy=SimpleNamespace(broadcast=lambda x, src: x))
    monitor.on_fit_start(trainer, method)
    expected = monitor.measure(method.backbone, 1, method.device)
    assert monitor.history["alignment"] == [0.5, round(expected["alignment"], 4)]
    monitor.on_fit_start(trainer, method)  # nothing missing: nothing measured
    assert len(monitor.history["rankme"]) == 2


# ---- config and objective ---------------------------------------------------------------------
def test_the_monitors_are_sweep_objectives_only_when_measured():
    keys = {"stages.pretrain.rankme": "maximize", "stages.pretrain.alignment": "minimize",
            "stages.pretrain.uniformity": "minimize"}
    for key, direction in keys.items():
        cfg = compose_config(["method=simclr", f"objective.key={key}", f"objective.direction={direction}"])
        check_objective(cfg.objective.key, cfg.objective.direction, ["pretrain", "knn"], [])
    with pytest.raises(UserError, match="monitor.label_free=false.*Set monitor.label_free=true"):
        compose_config(["method=simclr", "objective.key=stages.pretrain.rankme", "monitor.label_free=false"])
    with pytest.raises(UserError, match="monitor.label_free_images' must be at least 2"):
        compose_config(["method=simclr", "monitor.label_free_images=1"])
    compose_config(["method=simclr", "monitor.label_free_images=0", "monitor.label_free=false"])


# ---- a real run -------------------------------------------------------------------------------
RUN = ["method=simclr", "data=cifar10", "experiment=smoke", "pipeline=pretrain", "data.subset=256",
       "monitor.knn_every_n_epochs=0", "pipeline.plots=false"]


class CrashAtTrainEnd(Callback):
    def on_train_end(self, trainer, pl_module):
        raise RuntimeError("simulated crash")


@pytest.mark.integration
def test_a_run_records_the_monitors_per_epoch_without_changing_its_training(tmp_path, monkeypatch, cifar_root):
    from ssl_runner.pipeline import run_pipeline

    monkeypatch.setenv("SSL_RUNNER_DATA", str(cifar_root.parent))
    with pytest.raises(RuntimeError, match="simulated crash"):  # after the last checkpoint
        run_pipeline(compose_config(RUN), tmp_path / "on", callbacks=[CrashAtTrainEnd()])
    # As if a stop request at the last epoch's end had saved before the monitor's turn:
    # the rerun, with nothing left to train, measures the restored weights and gets the same figures.
    last = tmp_path / "on" / "pretrain" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    measured = copy.deepcopy(checkpoint["callbacks"]["LabelFreeMonitor"]["history"])
    checkpoint["callbacks"]["LabelFreeMonitor"]["history"] = {k: v[:-1] for k, v in measured.items()}
    torch.save(checkpoint, last)
    on = run_pipeline(compose_config(RUN), tmp_path / "on")
    assert on["stages"]["pretrain"]["monitors"] == measured

    off = run_pipeline(compose_config([*RUN, "monitor.label_free=false"]), tmp_path / "off")
    pretrain, pretrain_off = on["stages"]["pretrain"], off["stages"]["pretrain"]
    # The monitor draws nothing from the training's generators and changes no weight.
    assert pretrain["loss"] == pretrain_off["loss"]
    encoders = [torch.load(d / "pretrain" / "encoder.pt", weights_only=True)["backbone"]
                for d in (tmp_path / "on", tmp_path / "off")]
    assert all(torch.equal(encoders[0][k], encoders[1][k]) for k in encoders[0])
    assert not {"rankme", "alignment", "uniformity", "monitors"} & set(pretrain_off)

    written = strict_json(tmp_path / "on" / "summary.json")
    cfg = compose_config(RUN)
    feature_dim = build_backbone(cfg.backbone, cfg.data.image_size).feature_dim
    figures = written["stages"]["pretrain"]
    assert 1 < figures["rankme"] <= min(256, feature_dim)  # all 256 images (fewer than label_free_images)
    assert 0 <= figures["alignment"] <= 4 and -4 <= figures["uniformity"] <= 0
    assert {k: len(v) for k, v in figures["monitors"].items()} == {"rankme": 2, "alignment": 2, "uniformity": 2}
    assert all(figures["monitors"][k][-1] == figures[k] for k in ("rankme", "alignment", "uniformity"))
    assert objective_value(written, "stages.pretrain.rankme") == figures["rankme"]
    with open(tmp_path / "on" / "pretrain" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("monitor/rankme")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for name, values in figures["monitors"].items():
        assert [round(float(r[f"monitor/{name}"]), 4) for r in rows] == pytest.approx(values, abs=1e-4)
