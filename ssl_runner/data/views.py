"""Random views whose parameters are sampled explicitly, then applied.

Each atomic augmentation has `sample(n, ...)`, which draws one row of
parameters per image as tensors, and `apply(images, params)`, a pure function
of the images and those parameters. A `ViewRecipe` chains them and returns
`ViewParams` (augmentation name -> its parameters), so a caller can copy one
augmentation's parameters from one view into another (LooC's leave-one-out
views) and the same vectorised code runs per image (N = 1, in DataLoader
workers) or batched on the accelerator after transfer. No PIL, no Python loop
over images: everything works on the device of the tensors it is given.

The family and its defaults follow SimCLR (Chen et al. 2020, Appendix A);
each operation follows torchvision's tensor semantics where noted.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

ViewParams = dict[str, dict[str, Tensor]]
Device = torch.device | str | None

# ITU-R 601-2 luma weights, as PIL's grayscale conversion.
LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, device: Device, generator: torch.Generator | None) -> Tensor:
    """n floats ~ U(low, high)."""
    return torch.rand(n, device=device, generator=generator) * (high - low) + low


def _coin(n: int, p: float, device: Device, generator: torch.Generator | None) -> Tensor:
    """n booleans, each True with probability p (never for p = 0, always for p = 1)."""
    return torch.rand(n, device=device, generator=generator) < p


def _per_image(values: Tensor, images: Tensor) -> Tensor:
    """A length-N parameter on the images' device, shaped to broadcast over N x C x H x W."""
    return values.to(images.device).view(-1, 1, 1, 1)


def grayscale(images: Tensor) -> Tensor:
    """N x 3 x H x W RGB -> N x 1 x H x W luma."""
    r, g, b = images.unbind(dim=-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(-3)


def _hue_sixths(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """RGB -> (hue in sixths of a turn, not reduced mod 6; chroma; value).

    The hue follows torchvision's `_rgb2hsv` (after PIL): measured from the
    channel holding the maximum; 0 for grays, whose chroma is 0.
    """
    r, g, b = images.unbind(dim=-3)
    value = images.amax(dim=-3)
    chroma = value - images.amin(dim=-3)
    # Masked sums rather than torch.where, which is twice as slow on a CPU; the
    # precedence (red, then green, then blue) is torchvision's.
    is_r = value == r
    is_g = (value == g) & ~is_r
    is_b = ~(is_r | is_g)
    numerator = (g - b) * is_r
    numerator += (b - r + 2.0 * chroma) * is_g
    numerator += (r - g + 4.0 * chroma) * is_b
    # Grays have a zero numerator, so any positive divisor gives them hue 0.
    return numerator / chroma.clamp_min(torch.finfo(chroma.dtype).tiny), chroma, value


def _rgb_from_sixths(sixths: Tensor, chroma: Tensor, value: Tensor) -> Tensor:
    """Channel c = V - C clamp(min(k, 4 - k), 0, 1) with k = (n + hue in sixths)
    mod 6 and n = 5, 3, 1 for R, G, B: HSV -> RGB in closed form."""
    offsets = torch.tensor([5.0, 3.0, 1.0], device=sixths.device, dtype=sixths.dtype).view(3, 1, 1)
    k = (sixths.unsqueeze(-3) + offsets).remainder_(6.0)
    # One stacked tensor, updated in place: the hue shift is the costliest
    # step of the view recipe on a CPU (see docs/performance.md).
    k = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0).mul_(chroma.unsqueeze(-3))
    return torch.sub(value.unsqueeze(-3), k, out=k)


def rgb_to_hsv(images: Tensor) -> Tensor:
    """RGB in [0, 1] -> HSV with every channel in [0, 1] (hue 0 for grays),
    as torchvision's `_rgb2hsv`."""
    sixths, chroma, value = _hue_sixths(images)
    saturation = chroma / value.clamp_min(torch.finfo(value.dtype).tiny)  # black: chroma 0, saturation 0
    return torch.stack([(sixths % 6.0) / 6.0, saturation, value], dim=-3)


def hsv_to_rgb(images: Tensor) -> Tensor:
    """HSV in [0, 1] -> RGB, the inverse of `rgb_to_hsv`."""
    hue, saturation, value = images.unbind(dim=-3)
    return _rgb_from_sixths(6.0 * hue, value * saturation, value)


class Augmentation:
    """One atomic augmentation: parameters sampled per image, then applied.

    `sample` returns tensors with a leading dimension of n on `device`, drawn
    from `generator` (which must live on that device); `apply` takes float
    images N x C x H x W in [0, 1] and depends on nothing but its arguments.
    """

    name: str = ""

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        raise NotImplementedError

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError


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


class HorizontalFlip(Augmentation):
    """Mirror left-right with probability p. Params: "flip", bool N."""

    name = "flip"

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"flip": _coin(n, self.p, device, generator)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        idx = params["flip"].to(images.device).nonzero().squeeze(1)
        return images.clone().index_copy_(0, idx, images.index_select(0, idx).flip(-1))


class Rotation90(Augmentation):
    """With probability p, rotate by 90, 180 or 270 degrees (counter-clockwise,
    one of the three uniformly); square images only. Params: "quarter_turns",
    long N in {0, 1, 2, 3} (0: not rotated). LooC's rotation augmentation
    (Xiao et al. 2021, Sec. 4: rotation by multiples of 90 degrees)."""

    name = "rotation"

    def __init__(self, p: float = 0.75) -> None:
        self.p = p

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        turns = torch.randint(1, 4, (n,), device=device, generator=generator)
        return {"quarter_turns": torch.where(_coin(n, self.p, device, generator), turns, 0)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError("Rotation90 needs square images (put it after the crop)")
        turns = params["quarter_turns"].to(images.device)
        out = images.clone()
        for k in range(1, 4):
            idx = (turns == k).nonzero().squeeze(1)
            if len(idx):
                out.index_copy_(0, idx, images.index_select(0, idx).rot90(k, dims=(-2, -1)).contiguous())
        return out


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """torchvision: blend with black, x f."""
    return (images * _per_image(factor, images)).clamp(0.0, 1.0)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """torchvision: blend with the mean luma of each image."""
    mean = grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    factor = _per_image(factor, images)
    return (factor * images + (1.0 - factor) * mean).clamp(0.0, 1.0)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """torchvision: blend with the image's own grayscale."""
    factor = _per_image(factor, images)
    return (factor * images + (1.0 - factor) * grayscale(images)).clamp(0.0, 1.0)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """torchvision: rotate the hue in HSV by `shift` turns, mod 1. Value and
    chroma are kept, so RGB comes back without forming the saturation."""
    sixths, chroma, value = _hue_sixths(images)
    sixths += 6.0 * shift.to(images.device).view(-1, 1, 1)
    return _rgb_from_sixths(sixths, chroma, value).clamp_(0.0, 1.0)


class ColorJitter(Augmentation):
    """With probability p, brightness, contrast, saturation and hue changes in
    a random order per image, each clamped to [0, 1] (torchvision's
    `ColorJitter` on tensors; SimCLR Appendix A, strength s giving 0.8 s and
    0.2 s).

    Params: "apply" bool N; "brightness", "contrast", "saturation" factors
    ~ U(max(0, 1 - x), 1 + x); "hue" ~ U(-h, h); "order" long N x 4, row i
    the ops of image i in the order applied (0 brightness, 1 contrast,
    2 saturation, 3 hue).
    """

    name = "color"
    ops = ("brightness", "contrast", "saturation", "hue")
    _op_functions = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)

    def __init__(self, p: float = 0.8, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1) -> None:
        self.p = p
        self.factor_strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
        self.hue = hue

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        params = {"apply": _coin(n, self.p, device, generator)}
        for op, strength in self.factor_strengths.items():
            params[op] = _uniform(n, max(0.0, 1.0 - strength), 1.0 + strength, device, generator)
        params["hue"] = _uniform(n, -self.hue, self.hue, device, generator)
        # argsort of i.i.d. uniforms: a uniformly random permutation per row.
        params["order"] = torch.rand(n, len(self.ops), device=device, generator=generator).argsort(dim=1)
        return params

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        # Group the images by (position, op): slot = 4 position + op, images
        # left alone in slot 16. One sort and one host sync, then each op runs
        # only on the images doing it at that position: ~4 ops per image.
        device, n_ops = images.device, len(self.ops)
        order = params["order"].to(device)
        positions = torch.arange(n_ops, device=device)
        slots = torch.where(params["apply"].to(device).unsqueeze(1), positions * n_ops + order, n_ops * n_ops)
        slots = slots.flatten()
        image_of_slot = torch.arange(len(images), device=device).repeat_interleave(n_ops)
        images_by_slot = image_of_slot[slots.argsort(stable=True)]
        counts = torch.bincount(slots, minlength=n_ops * n_ops + 1).tolist()
        out = images.clone()
        for slot, idx in enumerate(images_by_slot.split(counts)[:n_ops * n_ops]):
            if len(idx):
                op = slot % n_ops
                # index_select / index_copy_: much faster than tensor indexing on a CPU.
                changed = self._op_functions[op](out.index_select(0, idx), params[self.ops[op]].to(device)[idx])
                out.index_copy_(0, idx, changed)
        return out


class RandomGrayscale(Augmentation):
    """With probability p, replace RGB by its luma, kept as 3 channels
    (torchvision's `RandomGrayscale`). Params: "gray", bool N."""

    name = "grayscale"

    def __init__(self, p: float = 0.2) -> None:
        self.p = p

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"gray": _coin(n, self.p, device, generator)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        idx = params["gray"].to(images.device).nonzero().squeeze(1)
        gray = grayscale(images.index_select(0, idx)).expand(-1, images.shape[-3], -1, -1)
        return images.clone().index_copy_(0, idx, gray.contiguous())


class GaussianBlur(Augmentation):
    """With probability p, a Gaussian blur with sigma ~ U(sigma) per image
    (SimCLR Appendix A: p 0.5, sigma in [0.1, 2.0], a kernel of 10% of the
    image side). Same kernel and reflect padding as torchvision's
    `gaussian_blur`, done as two depthwise 1-D convolutions so that each
    image has its own sigma. Params: "apply" bool N, "sigma" float N.
    """

    name = "blur"

    def __init__(self, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0), kernel_fraction: float = 0.1) -> None:
        self.p = p
        self.sigma = tuple(sigma)
        self.kernel_fraction = kernel_fraction

    def kernel_size(self, side: int) -> int:
        """As SimCLR's code: radius int(fraction side) // 2, size 2 radius + 1, here at least 3."""
        radius = max(1, int(self.kernel_fraction * side) // 2)
        return 2 * radius + 1

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"apply": _coin(n, self.p, device, generator),
                "sigma": _uniform(n, self.sigma[0], self.sigma[1], device, generator)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        idx = params["apply"].to(images.device).nonzero().flatten()
        if not idx.numel():
            return images
        blurred, channels, height, width = images[idx].shape
        size = self.kernel_size(height)
        radius = size // 2
        offsets = torch.arange(size, device=images.device, dtype=images.dtype) - radius
        sigma = params["sigma"].to(device=images.device, dtype=images.dtype)[idx].unsqueeze(1)
        kernels = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernels = (kernels / kernels.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
        # Every (image, channel) plane is its own group of a depthwise convolution.
        planes = images[idx].reshape(1, blurred * channels, height, width)
        groups = blurred * channels
        planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="reflect"),
                          kernels.view(groups, 1, 1, size), groups=groups)
        planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="reflect"),
                          kernels.view(groups, 1, size, 1), groups=groups)
        out = images.clone()
        out[idx] = planes.view(blurred, channels, height, width)
        return out


class Solarize(Augmentation):
    """With probability p, x -> 1 - x wherever x >= threshold (torchvision's
    `solarize`; BYOL's views). Params: "apply", bool N."""

    name = "solarize"

    def __init__(self, p: float = 0.0, threshold: float = 0.5) -> None:
        self.p = p
        self.threshold = threshold

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"apply": _coin(n, self.p, device, generator)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        solarized = torch.where(images >= self.threshold, 1.0 - images, images)
        return torch.where(_per_image(params["apply"], images), solarized, images)


def _log_uniform(n: int, low: float, high: float, device: Device, generator: torch.Generator | None) -> Tensor:
    """n floats whose logarithm is ~ U(log low, log high): a factor range like
    [1/2, 2] treats shrinking and growing alike."""
    return torch.exp(_uniform(n, math.log(low), math.log(high), device, generator))


class RandomRotation(Augmentation):
    """Rotation about the image centre by an angle ~ U(-degrees, degrees),
    bilinear, the corners filled by reflection (Exemplar-CNN's rotation of up
    to 20 degrees, Dosovitskiy et al. 2014, Sec. 2). Square images (put it
    after the crop). Params: "angle", float N, in degrees."""

    name = "small_rotation"  # "rotation" is Rotation90's

    def __init__(self, degrees: float = 20.0) -> None:
        self.degrees = degrees

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"angle": _uniform(n, -self.degrees, self.degrees, device, generator)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError("RandomRotation needs square images (put it after the crop)")
        theta = params["angle"].to(device=images.device, dtype=images.dtype) * (math.pi / 180)
        cos, sin, zero = theta.cos(), theta.sin(), torch.zeros_like(theta)
        matrix = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# The principal components of natural images' RGB pixels, one per column, by
# decreasing variance (AlexNet's ImageNet PCA, as fb.resnet.torch's Lighting):
# luminance, then two opponent colour axes; nearly the same for CIFAR.
PIXEL_PCA = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


class PrincipalComponentScaling(Augmentation):
    """Exemplar-CNN's "contrast 1" (Dosovitskiy et al. 2014, Sec. 2): each
    pixel's projection on the principal components of the pixels, taken
    about `mean`, multiplied by a factor per component (one per image, for
    all its pixels), log-uniform in `factor`; clamped to [0, 1].
    Params: "factors", float N x 3."""

    name = "pca_contrast"

    def __init__(self, mean: Sequence[float], factor: tuple[float, float] = (0.5, 2.0),
                 components: Sequence[Sequence[float]] = PIXEL_PCA) -> None:
        self.mean = list(mean)
        self.factor = tuple(factor)
        self.components = [list(row) for row in components]

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"factors": _log_uniform(3 * n, *self.factor, device, generator).view(n, 3)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        v = torch.tensor(self.components, device=images.device, dtype=images.dtype)
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        factors = params["factors"].to(device=images.device, dtype=images.dtype)
        # V diag(f) V^T per image: scale the coordinates along each component
        # (as a broadcast sum: a batched 3 x 3 matmul is 1000x slower on a CPU).
        mix = (v[:, None, :] * v[None, :, :] * factors[:, None, None, :]).sum(-1)
        centred = (images - mean).flatten(2)
        return torch.baddbmm(mean.view(1, 3, 1), mix, centred).view_as(images).clamp_(0.0, 1.0)


class HSVPower(Augmentation):
    """Exemplar-CNN's "contrast 2" and "color" (Dosovitskiy et al. 2014,
    Sec. 2): saturation and value each raised to a power (log-uniform in
    `power`), multiplied by a factor ~ U(`factor`) and shifted by an offset
    ~ U(-offset, offset), clamped to [0, 1]; the hue rotated by ~ U(-hue,
    hue) turns. One draw per image and channel (S and V independently).
    Params: "s_power", "s_factor", "s_offset", "v_power", "v_factor",
    "v_offset", "hue", float N each."""

    name = "hsv"

    def __init__(self, power: tuple[float, float] = (0.25, 4.0), factor: tuple[float, float] = (0.7, 1.4),
                 offset: float = 0.1, hue: float = 0.1) -> None:
        self.power, self.factor, self.offset, self.hue = tuple(power), tuple(factor), offset, hue

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        params = {}
        for channel in ("s", "v"):
            params[f"{channel}_power"] = _log_uniform(n, *self.power, device, generator)
            params[f"{channel}_factor"] = _uniform(n, *self.factor, device, generator)
            params[f"{channel}_offset"] = _uniform(n, -self.offset, self.offset, device, generator)
        params["hue"] = _uniform(n, -self.hue, self.hue, device, generator)
        return params

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        def per_image(name: str) -> Tensor:
            return params[name].to(device=images.device, dtype=images.dtype).view(-1, 1, 1)

        def transform(x: Tensor, channel: str) -> Tensor:  # x ** power * factor + offset, in place
            return x.pow_(per_image(f"{channel}_power")).mul_(per_image(f"{channel}_factor")).add_(
                per_image(f"{channel}_offset")).clamp_(0.0, 1.0)

        # In HSV's parts as adjust_hue keeps them (hue in sixths, chroma = S V,
        # value): no stacked HSV image, the hue reduced mod 6 on the way back.
        sixths, chroma, value = _hue_sixths(images)
        saturation = transform(chroma / value.clamp_min(torch.finfo(value.dtype).tiny), "s")
        value = transform(value, "v")
        sixths += 6.0 * per_image("hue")
        return _rgb_from_sixths(sixths, saturation.mul_(value), value).clamp_(0.0, 1.0)


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 in [0, 255] -> float32 in [0, 1]; float images are taken as [0, 1]."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel (x - mean) / std."""
    mean_t = torch.as_tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    # x / std - mean / std in one pass.
    return torch.addcmul(-mean_t / std_t, images, 1.0 / std_t)


def eval_view(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The unaugmented view: uint8 (or [0, 1] float) images -> float32, normalised."""
    return normalize(to_unit_float(images), mean, std)


class ViewRecipe:
    """A chain of augmentations, the first a `RandomResizedCrop` (so every
    later one works on size x size images), then normalisation:
    uint8 (or [0, 1] float) N x 3 x H x W in, float32 N x 3 x size x size out.
    """

    def __init__(self, augmentations: list[Augmentation], mean: Sequence[float], std: Sequence[float]) -> None:
        if not augmentations or not isinstance(augmentations[0], RandomResizedCrop):
            raise ValueError("a view recipe starts with a RandomResizedCrop (it sets the output size)")
        names = [augmentation.name for augmentation in augmentations]
        if len(set(names)) != len(names):
            raise ValueError(f"augmentation names must be unique (they key ViewParams), got {names}")
        self.augmentations = list(augmentations)
        self.names = names
        self.mean, self.std = list(mean), list(std)
        self.size: int = augmentations[0].size

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> ViewParams:
        """Parameters of every augmentation for n images of height x width."""
        return {aug.name: aug.sample(n, height, width, device, generator) for aug in self.augmentations}

    def apply(self, images: Tensor, params: ViewParams) -> Tensor:
        """The views that `params` describe; a pure function of its arguments."""
        views = to_unit_float(images)
        for aug in self.augmentations:
            views = aug.apply(views, params[aug.name])
        return normalize(views, self.mean, self.std)

    def views(self, images: Tensor, count: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """`count` independent views of each image (the uint8 batch converted once)."""
        images = to_unit_float(images)
        return [self(images, generator) for _ in range(count)]

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        n, _, height, width = images.shape
        return self.apply(images, self.sample(n, height, width, images.device, generator))

    @classmethod
    def simclr(cls, size: int, mean: Sequence[float], std: Sequence[float],
               crop_scale: tuple[float, float] = (0.08, 1.0), crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
               hflip_p: float = 0.5, jitter_p: float = 0.8, jitter_strength: float = 0.5,
               grayscale_p: float = 0.2, blur_p: float = 0.0, blur_sigma: tuple[float, float] = (0.1, 2.0),
               blur_kernel_fraction: float = 0.1, solarize_p: float = 0.0, rotation_p: float = 0.0) -> ViewRecipe:
        """SimCLR's family (Appendix A), in its order: crop, flip, colour
        jitter (strength s: brightness, contrast, saturation 0.8 s, hue
        0.2 s), grayscale, blur, solarisation; plus LooC's rotation by
        multiples of 90 degrees after the flip. Augmentations with
        probability 0 are left out, so they cost nothing and have no params."""
        augmentations: list[Augmentation] = [RandomResizedCrop(size, crop_scale, crop_ratio)]
        if hflip_p > 0:
            augmentations.append(HorizontalFlip(hflip_p))
        if rotation_p > 0:
            augmentations.append(Rotation90(rotation_p))
        if jitter_p > 0:
            s = jitter_strength
            augmentations.append(ColorJitter(jitter_p, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s))
        if grayscale_p > 0:
            augmentations.append(RandomGrayscale(grayscale_p))
        if blur_p > 0:
            augmentations.append(GaussianBlur(blur_p, blur_sigma, blur_kernel_fraction))
        if solarize_p > 0:
            augmentations.append(Solarize(solarize_p))
        return cls(augmentations, mean, std)
