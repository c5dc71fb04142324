"""The context encoder's adversary (Pathak et al., CVPR 2016, Sec. 3.2, which
follows DCGAN, Radford et al. 2016): the discriminator network, how the
generator's loss reads it without training it, and `TrainsDiscriminator`,
what a method needs to train one beside itself with its own optimizer."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_runner.errors import UserError
from ssl_runner.losses.adversarial import discriminator_loss, discriminator_top1, generator_adversarial_loss

# Channels of the discriminator's first convolution (DCGAN's is 64 at 64 px;
# half of it suffices at CIFAR's 32 px and keeps the optional term cheap).
DISCRIMINATOR_WIDTH = 32


def build_discriminator(image_size: int, width: int = DISCRIMINATOR_WIDTH) -> nn.Sequential:
    """DCGAN's discriminator (Radford et al. 2016), as the paper's adversarial
    term uses (Sec. 3.2): 4x4 stride-2 convolutions, BatchNorm after all but
    the first, LeakyReLU 0.2, doubling the width (at most 512) until the map
    is at most 4 x 4, then one convolution over the whole map to a single
    logit per image (N x 1)."""
    layers: List[nn.Module] = []
    side, in_channels, out_channels = image_size, 3, width
    while side > 4:
        first = in_channels == 3
        layers.append(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=first))
        if not first:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        side //= 2
        in_channels, out_channels = out_channels, min(2 * out_channels, 512)
    layers += [nn.Conv2d(in_channels, 1, side), nn.Flatten()]
    return nn.Sequential(*layers)


def judge_without_training(discriminator: nn.Module, images: Tensor) -> Tensor:
    """The discriminator's logits for `images` with its parameters detached:
    the gradient reaches the images (the generator), not the discriminator."""
    frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
    return torch.func.functional_call(discriminator, frozen, (images,))


class TrainsDiscriminator:
    """Mixed into a BaseMethod (before it) whose `__init__` calls
    `init_discriminator`: with the adversarial term the method trains by
    Lightning's manual optimisation (`training_step`), the discriminator with
    its own Adam (`method.discriminator_lr`) that the main optimizer never
    holds (`ssl_modules`); its `ssl_step` adds `generator_loss`.

    One backward pass serves both players: the generator's term sees the
    discriminator through detached parameters (`judge_without_training`, so
    it reaches the encoder and decoder only), the discriminator's loss sees
    detached completed images (so it reaches the discriminator only). That
    gives exactly the gradients of "step the encoder, then the discriminator
    on the detached reconstructions" and leaves every parameter one gradient
    per step, as DistributedDataParallel wants. Lightning counts each
    optimizer's step, so `trainer.global_step` advances by 2 per batch in
    that mode (the schedule is stepped per batch here, the logs count
    batches)."""

    not_exported = ("discriminator",)

    @staticmethod
    def check_discriminator_training(cfg: DictConfig) -> None:
        """Lightning refuses gradient accumulation and clipping with manual
        optimisation, which the discriminator's own optimizer needs."""
        if cfg.trainer.accumulate_grad_batches > 1:
            raise UserError(
                "method.adversarial_weight > 0 trains a discriminator with its own optimizer (manual optimisation), "
                f"which does not accumulate gradients, but trainer.accumulate_grad_batches is "
                f"{cfg.trainer.accumulate_grad_batches}. Set trainer.accumulate_grad_batches=1 (raise data.batch_size "
                "instead) or method.adversarial_weight=0.")
        if cfg.trainer.gradient_clip_val:
            raise UserError(
                "method.adversarial_weight > 0 trains a discriminator with its own optimizer (manual optimisation), "
                f"which Lightning cannot clip gradients for, but trainer.gradient_clip_val is "
                f"{cfg.trainer.gradient_clip_val}. Set trainer.gradient_clip_val=null or method.adversarial_weight=0.")

    def init_discriminator(self, adversarial: bool, image_size: int) -> None:
        """A discriminator for image_size images if `adversarial` (else none):
        called after the method's own modules are built, so that they keep
        their place in the state dict and their initialisations."""
        self.adversarial = adversarial
        self.discriminator: Optional[nn.Module] = None
        if self.adversarial:
            self.discriminator = build_discriminator(image_size)
            self.automatic_optimization = False
        # (real, completed) of the last ssl_step, detached: the discriminator's batch.
        self._discriminator_batch: Optional[Tuple[Tensor, Tensor]] = None

    def generator_loss(self, real: Tensor, completed: Tensor) -> Tensor:
        """-log D(completed) through the untrained discriminator (the
        generator's side of Eq. 2); `real` and `completed`, detached, become
        the discriminator's batch of this step."""
        self._discriminator_batch = (real.detach(), completed.detach())
        return generator_adversarial_loss(judge_without_training(self.discriminator, completed))

    def ssl_modules(self) -> Dict[str, nn.Module]:
        """All but the discriminator, which has its own optimizer."""
        return {name: module for name, module in super().ssl_modules().items() if name != "discriminator"}

    def configure_optimizers(self) -> Any:
        main = super().configure_optimizers()
        if not self.adversarial:
            return main
        assert self.discriminator is not None
        adam = torch.optim.Adam(self.discriminator.parameters(), lr=self.cfg.method.discriminator_lr,
                                betas=(0.5, 0.999))
        return [main, {"optimizer": adam}]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        assert self.discriminator is not None
        main_optimizer, discriminator_optimizer = self.optimizers()
        total = super().training_step(batch, batch_idx)  # ssl_step, logs, the online probe
        real, completed = self._discriminator_batch
        self._discriminator_batch = None
        real_logits, fake_logits = self.discriminator(real), self.discriminator(completed)
        d_loss = discriminator_loss(real_logits, fake_logits)
        sync = self.trainer.world_size > 1
        self.log("train/discriminator_loss", d_loss.detach(), on_step=False, on_epoch=True, batch_size=len(real),
                 sync_dist=sync)
        self.log("train/discriminator_top1", discriminator_top1(real_logits, fake_logits), on_step=False,
                 on_epoch=True, batch_size=len(real), sync_dist=sync)
        main_optimizer.zero_grad()
        discriminator_optimizer.zero_grad()
        # One backward: `total` reaches no discriminator parameter, `d_loss` nothing else (see the class).
        self.manual_backward(total + d_loss)
        main_optimizer.step()
        self.lr_schedulers().step()
        self.after_optimizer_step()
        discriminator_optimizer.step()
        return total.detach()


__all__ = ["DISCRIMINATOR_WIDTH", "TrainsDiscriminator", "build_discriminator", "judge_without_training"]
