"""The random resized crop (torchvision's, vectorised) and the matrices that
resample a batch of crops on a CPU faster than `roi_align`. Every view
recipe starts with it: it sets the views' size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import roi_align

from ssl_runner.views.augmentation import Augmentation
from ssl_runner.views.protocol import Device


class RandomResizedCrop(Augmentation):
    """torchvision's `RandomResizedCrop.get_params`, vectorised, then a resize.

    Per image, 10 attempts: area fraction ~ U(scale), log aspect ratio ~
    U(log ratio), w = round(sqrt(area r)), h = round(sqrt(area / r)); the
    first attempt that fits wins, at top ~ U{0..H-h}, left ~ U{0..W-w};
    if none fits, torchvision's central crop of the ratio clamped into
    `ratio`. Params: "box", float N x 4 (x0, y0, x1, y1) in pixels.

    The resize is `roi_align` with aligned pixel centres: bilinear when
    enlarging (sampling like `F.interpolate(..., align_corners=False)`) and,
    with adaptive sampling, an average over each output cell when shrinking.
    """

    name = "crop"
    attempts = 10

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.size = size
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)

    def central_crop(self, height: int, width: int) -> tuple[int, int]:
        """torchvision's fallback (w, h): the whole image, its ratio clamped into `ratio`."""
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            return width, int(round(width / min(self.ratio)))
        if in_ratio > max(self.ratio):
            return int(round(height * max(self.ratio))), height
        return width, height

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        attempts = (n, self.attempts)
        area_fraction = torch.rand(attempts, device=device, generator=generator)
        area = height * width * (area_fraction * (self.scale[1] - self.scale[0]) + self.scale[0])
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        log_aspect = torch.rand(attempts, device=device, generator=generator) * (log_high - log_low) + log_low
        aspect = torch.exp(log_aspect)
        w = torch.sqrt(area * aspect).round()
        h = torch.sqrt(area / aspect).round()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first_fit = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
        w = w.gather(1, first_fit).squeeze(1)
        h = h.gather(1, first_fit).squeeze(1)
        found = fits.any(dim=1)
        fallback_w, fallback_h = self.central_crop(height, width)
        w = torch.where(found, w, float(fallback_w))
        h = torch.where(found, h, float(fallback_h))
        # floor(U[0, 1) * (k + 1)) is uniform on {0..k}; the clamp guards float rounding.
        top = torch.minimum((torch.rand(n, device=device, generator=generator) * (height - h + 1)).floor(),
                            height - h)
        left = torch.minimum((torch.rand(n, device=device, generator=generator) * (width - w + 1)).floor(),
                             width - w)
        top = torch.where(found, top, float((height - fallback_h) // 2))
        left = torch.where(found, left, float((width - fallback_w) // 2))
        return {"box": torch.stack([left, top, left + w, top + h], dim=1)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        box = params["box"].to(device=images.device, dtype=images.dtype)
        if images.device.type != "cpu" or len(box) < 16:
            batch_index = torch.arange(len(box), device=images.device, dtype=images.dtype).unsqueeze(1)
            return roi_align(images, torch.cat([batch_index, box], dim=1), output_size=(self.size, self.size),
                             spatial_scale=1.0, sampling_ratio=0, aligned=True)
        # On a CPU, batches are resampled by two batched matrix products (rows,
        # then columns): the same result, 1.5x faster than roi_align's kernel
        # for CIFAR crops. Single images (DataLoader workers) keep roi_align.
        x0, y0, x1, y1 = box.unbind(1)
        rows = roi_align_weights(y0, y1, images.shape[-2], self.size)
        columns = roi_align_weights(x0, x1, images.shape[-1], self.size)
        return torch.matmul(torch.matmul(rows.unsqueeze(1), images), columns.transpose(1, 2).unsqueeze(1))


def roi_align_weights(start: Tensor, end: Tensor, length: int, size: int) -> Tensor:
    """N x size x length matrices M with M @ line = roi_align's resampling of a
    line's [start, end) to `size` samples (aligned=True, adaptive sampling).

    roi_align is separable: output cell i averages s = ceil((end - start) /
    size) bilinear samples spread evenly over the cell (one sample when
    enlarging), each clamped to the line's ends as roi_align does.
    """
    n = len(start)
    cell = (end - start) / size
    samples = torch.ceil(cell).clamp_min(1)  # per image
    most = int(samples.max())
    j = torch.arange(most, device=start.device, dtype=start.dtype)
    i = torch.arange(size, device=start.device, dtype=start.dtype)
    pos = (start - 0.5)[:, None, None] + i[None, :, None] * cell[:, None, None] \
        + (j[None, None, :] + 0.5) * (cell / samples)[:, None, None]
    weight = (j[None, None, :] < samples[:, None, None]).to(start.dtype) / samples[:, None, None]
    pos = pos.clamp(0, length - 1)
    low = pos.floor().clamp(max=max(length - 2, 0))
    frac = pos - low
    out = torch.zeros(n, size, length, device=start.device, dtype=start.dtype)
    low = low.long().view(n, size, most)
    out.scatter_add_(2, low, weight * (1 - frac))
    out.scatter_add_(2, (low + 1).clamp(max=length - 1), weight * frac)
    return out


__all__ = ["RandomResizedCrop", "roi_align_weights"]
