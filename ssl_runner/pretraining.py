"""The Lightning side of pretraining that every method shares, as the base
class of `methods.base.BaseMethod`: views made from the batch, the training
step with its logs, the online probe and the collapse monitor, the features
the kNN monitor gathers (monitors.py), the optimizer and lr schedule built
from the config, and the EMA step of the momentum copies a method declares.

A method never overrides these; it implements the hooks `BaseMethod`
declares (`ssl_step`, `momentum_pairs`, `param_groups`, ...), which these
steps call.
"""

from __future__ import annotations

from typing import Any, Dict

import lightning as L
import torch.nn.functional as F
from torch import Tensor

from ssl_runner.data.encoded import EncodedImages, views_of_encoded
from ssl_runner.distributed.batch import batch_sizes
from ssl_runner.models.momentum import momentum_at
from ssl_runner.optim import build_optimizer, build_scheduler, scale_lr
from ssl_runner.views.pixels import eval_view


def collapse_std(embeddings: Tensor) -> Tensor:
    """Mean per-dimension std of L2-normalised embeddings: about 1/sqrt(d)
    when healthy, 0 when every input maps to one point (SimSiam, Sec. 4.1)."""
    return F.normalize(embeddings.detach().float(), dim=1).std(dim=0).mean()


class PretrainingSteps(L.LightningModule):
    """Lightning's hooks for pretraining, over the hooks of `BaseMethod`."""

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels, indices = batch
        if self.trainer.training:
            if isinstance(images, Tensor):  # uint8 images: views made here, batched
                views = self.make_views(images)
            elif isinstance(images, EncodedImages):  # image files' bytes: decoded here, then the views
                views = views_of_encoded(images, self.view_maker, self.device)
            else:  # views already made per image in the DataLoader workers
                views = list(images)
            return views, labels, indices
        return eval_view(images, self.cfg.data.mean, self.cfg.data.std), labels, indices

    # ---- training -----------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        views, labels, indices = batch
        out = self.ssl_step(views, indices)
        batch_size = views[0].shape[0]
        # Epoch figures are means over all ranks' batches (each rank's loss is
        # its share of the global loss, see nt_xent_loss).
        sync = self.trainer.world_size > 1
        self.log("train/loss", out.loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size,
                 sync_dist=sync)
        for name, value in out.logs.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=sync)
        total = out.loss
        if self.online_probe is not None:
            probe_loss, acc = self.online_probe_loss(out.features, labels)
            total = total + probe_loss
            self.log("train/probe_loss", probe_loss, on_step=False, on_epoch=True, batch_size=batch_size,
                     sync_dist=sync)
            self.log("train/probe_top1", acc, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=sync)
        if self.cfg.monitor.collapse and out.embeddings is not None:
            self.log("train/embedding_std", collapse_std(out.embeddings), on_step=False, on_epoch=True,
                     batch_size=batch_size, sync_dist=sync)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False,
                 batch_size=batch_size)
        return total

    def online_probe_loss(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy of the online probe on detached features (every view's
        features, each with its image's label) and its accuracy in percent."""
        assert self.online_probe is not None
        labels = labels.repeat(features.shape[0] // labels.shape[0])
        known = labels >= 0
        logits = self.online_probe(features.detach()[known])
        loss = F.cross_entropy(logits, labels[known])
        return loss, (logits.argmax(1) == labels[known]).float().mean() * 100

    # ---- validation: what the kNN monitor gathers (monitors.py) --------------------
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Dict[str, Tensor]:
        """The backbone's features of an evaluation batch and, with an online
        probe, its predicted classes (in the step, under the precision's
        autocast), for `monitors.KnnMonitor`."""
        images, _, _ = batch
        features = self.backbone(images)
        out = {"features": features}
        if self.online_probe is not None:
            out["probe_predictions"] = self.online_probe(features).argmax(1)
        return out

    # ---- optimisation -------------------------------------------------------------
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        """Called after each real optimizer step (not after every batch when
        gradients accumulate; manual optimisation calls it itself): the
        momentum copies take their EMA step, in the order declared."""
        pairs = self.momentum_pairs()
        if pairs:
            momentum = self.ema_momentum()
            for online, momentum_copy in pairs:
                momentum_copy.update(online, momentum)

    def ema_momentum(self) -> float:
        """The EMA momentum at the current optimizer step: `method.momentum` on
        `method.momentum_schedule` (models/momentum.py)."""
        m = self.cfg.method
        return momentum_at(self.trainer.global_step, int(self.trainer.estimated_stepping_batches), m.momentum,
                           m.momentum_schedule)

    def global_batch_size(self) -> int:
        return batch_sizes(self.cfg, self.trainer.world_size).global_batch

    def configure_optimizers(self) -> Dict[str, Any]:
        opt_cfg, sched_cfg = self.cfg.optimizer, self.cfg.scheduler
        lr = scale_lr(opt_cfg.lr, self.global_batch_size(), opt_cfg.reference_batch, opt_cfg.lr_scaling)
        groups = self.param_groups(opt_cfg.weight_decay)
        if self.online_probe is not None:
            # Its own fixed lr, no weight decay, no LARS adaptation.
            groups.append({"params": list(self.online_probe.parameters()), "lr": self.cfg.monitor.online_probe_lr,
                           "weight_decay": 0.0, "lars_exclude": True, "name": "online_probe"})
        optimizer = build_optimizer(
            opt_cfg.name, groups, lr=lr, momentum=opt_cfg.momentum, weight_decay=opt_cfg.weight_decay,
            nesterov=opt_cfg.nesterov, eta=opt_cfg.eta, betas=tuple(opt_cfg.betas),
        )
        total_steps = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total_steps // max(1, self.trainer.max_epochs))
        scheduler = build_scheduler(
            optimizer, sched_cfg.name, total_steps=total_steps,
            warmup_steps=int(round(sched_cfg.warmup_epochs * steps_per_epoch)),
            warmup_start_ratio=sched_cfg.warmup_start_ratio, final_ratio=sched_cfg.final_ratio,
            milestones=[int(round(epoch * steps_per_epoch)) for epoch in sched_cfg.milestones],
            gamma=sched_cfg.gamma,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
