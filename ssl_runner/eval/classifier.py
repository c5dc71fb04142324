"""Supervised evaluation on a pretrained encoder: the linear probe (on cached
features or on augmented images), fine-tuning, and RotNet's non-linear
classifier on a frozen feature map (`head=`, eval/nonlinear.py)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_runner.config import ClassifierStageConfig
from ssl_runner.optim import build_optimizer, build_scheduler
from ssl_runner.views.pixels import eval_view
from ssl_runner.views.recipe import ViewRecipe


class Classifier(L.LightningModule):
    """A linear layer (or `head`) over features, which come precomputed
    (`encoder=None`), from a frozen encoder (linear probe on augmented images,
    the non-linear classifier) or from an encoder trained with it
    (`train_encoder=True`, fine-tuning).

    Test accuracy is measured once, after the last epoch (never the best
    epoch on the test split).
    """

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        stage: ClassifierStageConfig,
        encoder: Optional[nn.Module] = None,
        train_encoder: bool = False,
        recipe: Optional[ViewRecipe] = None,
        mean: Optional[List[float]] = None,
        std: Optional[List[float]] = None,
        head: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.stage = stage
        self.encoder = encoder
        self.train_encoder = train_encoder
        self.recipe = recipe
        self.mean, self.std = mean, std
        self.num_classes = num_classes
        self.head = head if head is not None else nn.Linear(feature_dim, num_classes)
        if encoder is not None and not train_encoder:
            encoder.requires_grad_(False)
        self._test_correct: Dict[int, List[Tensor]] = {1: [], 5: []}

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, labels, _ = batch
        if isinstance(x, list):  # one view made per image in the DataLoader workers
            x = x[0]
        elif x.dtype == torch.uint8:
            if self.trainer.training and self.recipe is not None:
                x = self.recipe(x)
            else:
                x = eval_view(x, self.mean, self.std)
        return x, labels

    def forward(self, x: Tensor) -> Tensor:
        if self.encoder is not None:
            if self.train_encoder:
                x = self.encoder(x)
            else:
                # A frozen encoder keeps its BatchNorm statistics. Set here, not in
                # train(): Lightning restores each submodule's mode by attribute.
                self.encoder.eval()
                with torch.no_grad():
                    x = self.encoder(x)
        return self.head(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, labels = batch
        logits = self(x)
        loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels),
                 sync_dist=True)
        self.log("train/top1", (logits.argmax(1) == labels).float().mean() * 100, on_step=False, on_epoch=True,
                 batch_size=len(labels), sync_dist=True)
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, labels = batch
        top5 = self(x).topk(min(5, self.num_classes), dim=1).indices
        self._test_correct[1].append((top5[:, 0] == labels).float())
        self._test_correct[5].append((top5 == labels[:, None]).any(1).float())

    def on_test_epoch_end(self) -> None:
        for k, correct in self._test_correct.items():
            # Every rank scores the whole test split (see pipeline), so the
            # ranks agree and the mean over them is that same value.
            self.log(f"test/top{k}", torch.cat(correct).mean() * 100, sync_dist=True)
        self._test_correct = {1: [], 5: []}

    def configure_optimizers(self) -> Dict[str, Any]:
        params = list(self.head.parameters())
        if self.encoder is not None and self.train_encoder:
            params += list(self.encoder.parameters())
        optimizer = build_optimizer(
            "sgd", [{"params": params}], lr=self.stage.lr, momentum=self.stage.momentum,
            weight_decay=self.stage.weight_decay, nesterov=self.stage.nesterov,
        )
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, "warmup_cosine", total_steps=total_steps,
                                    warmup_steps=0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
