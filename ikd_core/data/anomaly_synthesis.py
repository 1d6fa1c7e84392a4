"""Synthetic anomalies for the denoising student (DeSTSeg stage 1; generation after DRAEM).

DeSTSeg (Zhang et al., CVPR 2023) trains a *denoising* student: it sees an image with a synthetic anomaly and must
reproduce the teacher's features of the clean image. The anomalies follow DRAEM (Zavrtanik et al., ICCV 2021):

1. a 2-D Perlin noise map with a random lattice resolution ``2**randint(0, 6)`` per axis, randomly rotated
   (+-90 degrees) and thresholded at 0.5 gives the anomaly mask;
2. an *anomaly source* image is cut into the mask and blended with the original,
   ``x_aug = (1 - m) * x + m * ((1 - beta) * source + beta * x)``, ``beta ~ U(beta_range)`` per sample.

DRAEM takes its sources from the DTD texture set; none is available offline here, so the source is another image of
the batch (rolled by one along the batch), the image itself, or (``texture_probability``) a procedural marble-like
Perlin colour texture, made foreign by random 90-degree rotations, flips, a random rescaled crop and a colour jitter
(brightness, contrast, gamma, channel shuffle, inversion).

Everything is vectorised over the batch; the only random draws are per sample or per lattice point (never per
pixel) and are taken from ``generator`` on its own device, then moved to the images' device, so a CPU
``torch.Generator`` makes CPU and CUDA runs draw the same anomalies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["AnomalySynthesizer", "perlin_masks", "perlin_noise"]

#: DRAEM's lattice resolutions: ``2**k`` cells per axis, ``k`` uniform in ``[0, 6)`` (1 ... 32 cells).
DRAEM_SCALE_EXPONENTS = (0, 6)


def _device_of(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    low: float = 0.0,
    high: float = 1.0,
) -> Tensor:
    """``U(low, high)`` of ``shape`` drawn on the generator's device, returned on ``device`` (float32)."""
    u = torch.rand(shape, generator=generator, device=_device_of(generator))
    return (u * (high - low) + low).to(device)


def _fade(t: Tensor) -> Tensor:
    """Perlin's quintic fade curve ``6t^5 - 15t^4 + 10t^3``."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _lattice_scales(batch: int, scale: tuple[int, int] | Tensor | None, generator: torch.Generator | None) -> Tensor:
    """Per-sample lattice resolutions (B, 2) as (cells along height, cells along width), int64 on CPU."""
    if scale is None:
        lo, hi = DRAEM_SCALE_EXPONENTS
        exps = torch.randint(lo, hi, (batch, 2), generator=generator, device=_device_of(generator))
        return (2**exps).cpu()
    res = torch.as_tensor(scale, dtype=torch.int64).cpu()
    if res.shape == (2,):
        res = res.expand(batch, 2)
    if res.shape != (batch, 2):
        raise ValueError(f"scale must be (res_h, res_w) or a ({batch}, 2) tensor, got shape {tuple(res.shape)}")
    if bool((res < 1).any()):
        raise ValueError("Perlin lattice resolutions must be >= 1")
    return res


def perlin_noise(
    batch: int,
    height: int,
    width: int,
    scale: tuple[int, int] | Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    max_rotation: float = 0.0,
) -> Tensor:
    """2-D Perlin gradient noise, one independent map per sample.

    The lattice is evaluated at continuous coordinates, so any resolution works for any image size (no
    divisibility requirement). Each sample gets a random sub-cell offset and, if ``max_rotation > 0``, a lattice
    rotated by ``U(-max_rotation, max_rotation)`` degrees about the image centre (exact, no resampling).

    Args:
        batch: Number of maps B.
        height: Map height H.
        width: Map width W.
        scale: Lattice cells ``(res_h, res_w)`` for all samples, a (B, 2) int tensor of per-sample resolutions,
            or None for DRAEM's random ``2**randint(0, 6)`` per axis and sample.
        generator: Source of randomness (deterministic for a given seed); None uses the global CPU generator.
        device: Device of the output (default CPU).
        max_rotation: Largest lattice rotation in degrees (0: axis-aligned, as DRAEM before its affine step).

    Returns:
        Float32 tensor (B, H, W) with values in about [-1, 1].
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    res = _lattice_scales(batch, scale, generator)
    # Lattice large enough for the rotated image's bounding circle; indices wrap modulo its size beyond that.
    size = 2 * int(res.max()) + 4
    angles = _uniform((batch, size, size), generator, device, 0.0, 2.0 * math.pi)
    grads = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1).reshape(batch * size * size, 2)
    offset = _uniform((batch, 2), generator, device)
    theta = _uniform((batch,), generator, device, -1.0, 1.0) * math.radians(max_rotation)
    res_f = res.to(device=device, dtype=torch.float32)

    ys = torch.arange(height, device=device, dtype=torch.float32) + (0.5 - height / 2.0)
    xs = torch.arange(width, device=device, dtype=torch.float32) + (0.5 - width / 2.0)
    cos, sin = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    px, py = xs.view(1, 1, -1), ys.view(1, -1, 1)
    u = (cos * px - sin * py) * (res_f[:, 1] / width).view(-1, 1, 1) + (size / 2.0) + offset[:, 1].view(-1, 1, 1)
    v = (sin * px + cos * py) * (res_f[:, 0] / height).view(-1, 1, 1) + (size / 2.0) + offset[:, 0].view(-1, 1, 1)

    u0, v0 = torch.floor(u), torch.floor(v)
    tu, tv = u - u0, v - v0
    i0 = torch.remainder(u0.long(), size)
    j0 = torch.remainder(v0.long(), size)
    i1, j1 = torch.remainder(i0 + 1, size), torch.remainder(j0 + 1, size)
    base = (torch.arange(batch, device=device) * (size * size)).view(-1, 1, 1)

    def corner(i: Tensor, j: Tensor, du: Tensor, dv: Tensor) -> Tensor:
        g = grads[base + j * size + i]
        return g[..., 0] * du + g[..., 1] * dv

    n00 = corner(i0, j0, tu, tv)
    n10 = corner(i1, j0, tu - 1.0, tv)
    n01 = corner(i0, j1, tu, tv - 1.0)
    n11 = corner(i1, j1, tu - 1.0, tv - 1.0)
    fu, fv = _fade(tu), _fade(tv)
    noise = torch.lerp(torch.lerp(n00, n10, fu), torch.lerp(n01, n11, fu), fv)
    return noise * math.sqrt(2.0)


def _ellipse_masks(
    batch: int, height: int, width: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Random filled ellipses (B, H, W) bool, each covering at least its centre pixel."""
    params = _uniform((batch, 5), generator, device)
    cy = (0.2 + 0.6 * params[:, 0]) * height
    cx = (0.2 + 0.6 * params[:, 1]) * width
    side = float(min(height, width))
    ay = torch.clamp((0.05 + 0.15 * params[:, 2]) * side, min=1.0)
    ax = torch.clamp((0.05 + 0.15 * params[:, 3]) * side, min=1.0)
    phi = params[:, 4] * math.pi
    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, -1, 1) + 0.5 - cy.view(-1, 1, 1)
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, -1) + 0.5 - cx.view(-1, 1, 1)
    c, s = torch.cos(phi).view(-1, 1, 1), torch.sin(phi).view(-1, 1, 1)
    ry, rx = (c * ys - s * xs) / ay.view(-1, 1, 1), (s * ys + c * xs) / ax.view(-1, 1, 1)
    return ry * ry + rx * rx <= 1.0


def perlin_masks(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    threshold: float = 0.5,
    device: torch.device | str | None = None,
    *,
    scale: tuple[int, int] | Tensor | None = None,
    rotate: bool = True,
    min_area: float = 0.005,
    max_area: float = 0.5,
) -> Tensor:
    """DRAEM anomaly masks: Perlin noise (randomly rotated by up to +-90 degrees) thresholded at ``threshold``.

    The threshold is adjusted per sample so that every mask covers between ``min_area`` and ``max_area`` of the
    image: where fewer pixels pass, the ``min_area`` fraction of highest noise values is taken (a Perlin-shaped
    blob); where more pass, only the ``max_area`` highest. Should a mask still be empty (degenerate noise), a random
    ellipse replaces it, so no mask is ever empty.

    Args:
        batch: Number of masks B.
        height: Mask height H.
        width: Mask width W.
        generator: Source of randomness (deterministic for a given seed); None uses the global CPU generator.
        threshold: Noise level above which a pixel is anomalous (DRAEM: 0.5).
        device: Device of the output (default CPU).
        scale: Lattice resolution as in :func:`perlin_noise` (None: DRAEM's random ``2**randint(0, 6)``).
        rotate: Rotate the noise by ``U(-90, 90)`` degrees, as DRAEM's affine augmentation.
        min_area: Smallest fraction of the image a mask covers (at least one pixel).
        max_area: Largest fraction of the image a mask covers.

    Returns:
        Float32 tensor (B, 1, H, W) with values in {0, 1}.
    """
    if not 0.0 <= min_area <= max_area <= 1.0:
        raise ValueError(f"need 0 <= min_area <= max_area <= 1, got {min_area}, {max_area}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    noise = perlin_noise(batch, height, width, scale, generator, device, max_rotation=90.0 if rotate else 0.0)
    n = height * width
    flat = noise.reshape(batch, n)
    lo_count = min(max(1, math.ceil(min_area * n)), n)
    hi_count = min(max(lo_count, math.floor(max_area * n)), n)

    def level(count: int) -> Tensor:
        # The value exceeded by exactly ``count`` pixels (ties aside); -inf where every pixel must pass.
        if count >= n:
            return torch.full((batch,), -math.inf, device=device)
        return torch.kthvalue(flat, n - count, dim=1).values

    thr = torch.full((batch,), float(threshold), device=device)
    thr = torch.maximum(torch.minimum(thr, level(lo_count)), level(hi_count))
    mask = noise > thr.view(-1, 1, 1)
    empty = ~mask.flatten(1).any(dim=1)
    mask = torch.where(empty.view(-1, 1, 1), _ellipse_masks(batch, height, width, generator, device), mask)
    return mask.unsqueeze(1).to(torch.float32)


class AnomalySynthesizer:
    """DRAEM-style synthetic anomalies for a batch, for training a denoising student (DeSTSeg).

    Each image receives an anomaly with probability ``probability``: a Perlin mask (:func:`perlin_masks`) inside
    which an anomaly source is blended in, ``x_aug = (1 - m) * x + m * ((1 - beta) * source + beta * x)`` with
    ``beta ~ U(beta_range)`` per sample. The source is, per sample, a procedural Perlin colour texture (with
    probability ``texture_probability``) or else, with even odds, the next image of the batch (the batch rolled by
    one) or the image itself; it is randomly rotated by a multiple of 90 degrees, flipped, zoomed into (random
    rescaled crop) and colour-jittered (brightness x/ 1.25-2, contrast, gamma, channel shuffle, inversion).

    Input is either ImageNet-normalised float (B, 3, H, W) -- the colour jitter then works in [0, 1] pixel space by
    de-normalising with ``IMAGENET_MEAN``/``IMAGENET_STD`` and re-normalising -- or uint8 (B, 3, H, W) pixels, as the
    training loop holds them before :func:`ikd_core.data.batching.normalize_uint8`. The output has the input's
    dtype; pixels outside the mask (and whole images without an anomaly) are returned bit-for-bit unchanged.

    Args:
        probability: Chance that an image gets an anomaly (DRAEM: 0.5).
        beta_range: Range of the per-sample opacity ``beta`` of the original inside the mask (DRAEM: [0, 0.8)).
        threshold: Perlin noise threshold of the masks (DRAEM: 0.5).
        min_area: Smallest mask area fraction of an anomalous image.
        max_area: Largest mask area fraction.
        zoom_range: Range of the zoom factor of the source's random rescaled crop (>= 1 zooms in).
        texture_probability: Chance that the source is a procedural texture rather than a batch image.
    """

    def __init__(
        self,
        probability: float = 0.5,
        beta_range: tuple[float, float] = (0.0, 0.8),
        *,
        threshold: float = 0.5,
        min_area: float = 0.005,
        max_area: float = 0.5,
        zoom_range: tuple[float, float] = (1.0, 3.0),
        texture_probability: float = 0.5,
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must lie in [0, 1], got {probability}")
        if not 0.0 <= beta_range[0] <= beta_range[1] <= 1.0:
            raise ValueError(f"beta_range must satisfy 0 <= low <= high <= 1, got {beta_range}")
        if not 0.0 < zoom_range[0] <= zoom_range[1]:
            raise ValueError(f"zoom_range must satisfy 0 < low <= high, got {zoom_range}")
        if not 0.0 <= min_area <= max_area <= 1.0:
            raise ValueError(f"need 0 <= min_area <= max_area <= 1, got {min_area}, {max_area}")
        if not 0.0 <= texture_probability <= 1.0:
            raise ValueError(f"texture_probability must lie in [0, 1], got {texture_probability}")
        self.probability = float(probability)
        self.beta_range = (float(beta_range[0]), float(beta_range[1]))
        self.threshold = float(threshold)
        self.min_area = float(min_area)
        self.max_area = float(max_area)
        self.zoom_range = (float(zoom_range[0]), float(zoom_range[1]))
        self.texture_probability = float(texture_probability)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(probability={self.probability}, beta_range={self.beta_range}, "
            f"threshold={self.threshold}, min_area={self.min_area}, max_area={self.max_area}, "
            f"zoom_range={self.zoom_range}, texture_probability={self.texture_probability})"
        )

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Add synthetic anomalies to a batch.

        Args:
            images: (B, 3, H, W) ImageNet-normalised float, or uint8 pixels.
            generator: Source of randomness (deterministic for a given seed); None uses the global CPU generator.

        Returns:
            ``(augmented, masks)``: augmented images of the input's shape and dtype, and float32 masks
            (B, 1, H, W) in {0, 1}, all zero for images left without an anomaly.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        if not (images.dtype == torch.uint8 or images.is_floating_point()):
            raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
        batch, _, height, width = images.shape
        device = images.device
        has_anomaly = _uniform((batch,), generator, device) < self.probability
        masks = perlin_masks(
            batch,
            height,
            width,
            generator,
            self.threshold,
            device,
            min_area=self.min_area,
            max_area=self.max_area,
        )
        masks = masks * has_anomaly.view(-1, 1, 1, 1)
        beta = _uniform((batch, 1, 1, 1), generator, device, *self.beta_range)

        mean = torch.tensor(IMAGENET_MEAN, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        if images.dtype == torch.uint8:
            pixels = images.to(torch.float32) / 255.0
        else:
            pixels = (images.to(torch.float32) * std + mean).clamp_(0.0, 1.0)
        source = self._anomaly_source(pixels, generator)
        if images.dtype == torch.uint8:
            blended = torch.lerp(source, pixels, beta).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        else:
            blended = torch.lerp((source - mean) / std, images.to(torch.float32), beta).to(images.dtype)
        augmented = torch.where(masks.bool(), blended, images)
        return augmented, masks

    @staticmethod
    def _procedural_texture(
        batch: int, height: int, width: int, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        """A foreign colour texture (B, 3, H, W) in [0, 1] standing in for DRAEM's DTD images: marble-like veins
        ``0.5 + 0.5 * sin(pi * f * noise)`` of a Perlin map (computed at half size, upsampled) between two random
        colours."""
        exps = torch.randint(2, 6, (batch, 2), generator=generator, device=_device_of(generator))
        noise = perlin_noise(batch, (height + 1) // 2, (width + 1) // 2, 2**exps, generator, device, 90.0)
        noise = F.interpolate(noise.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
        r = _uniform((batch, 7), generator, device)
        freq = (1.0 + 3.0 * r[:, 0]).view(-1, 1, 1, 1)
        t = 0.5 + 0.5 * torch.sin(math.pi * freq * noise)
        c1, c2 = r[:, 1:4].view(-1, 3, 1, 1), r[:, 4:7].view(-1, 3, 1, 1)
        return torch.lerp(c1, c2, t)

    def foreign_images(
        self, batch: int, height: int, width: int, generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Whole foreign images (B, 3, H, W) in [0, 1]: procedural textures, transformed and colour-jittered as the
        anomaly sources are (the out-of-distribution images of EfficientAD's penalty, without ImageNet)."""
        blank = torch.zeros(batch, 3, height, width, device=device)
        return self._anomaly_source(blank, generator, texture_probability=1.0)

    def _anomaly_source(
        self, pixels: Tensor, generator: torch.Generator | None, texture_probability: float | None = None
    ) -> Tensor:
        """The foreign content (B, 3, H, W) in [0, 1]: a partner image or a procedural texture (with probability
        ``texture_probability``, default the synthesizer's), geometrically and colour transformed."""
        batch, _, height, width = pixels.shape
        device = pixels.device
        r = _uniform((batch, 15), generator, device)
        other = r[:, 0] < 0.5
        source = torch.where(other.view(-1, 1, 1, 1), pixels.roll(1, dims=0), pixels)
        texture = self._procedural_texture(batch, height, width, generator, device)
        p_texture = self.texture_probability if texture_probability is None else texture_probability
        use_texture = _uniform((batch, 1, 1, 1), generator, device) < p_texture
        source = torch.where(use_texture, texture, source)

        # Geometry in one resampling: rotation by k * 90 degrees, horizontal flip, zoom, translation in range.
        k = torch.clamp((r[:, 1] * 4).long(), max=3)
        cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=device)[k]
        sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=device)[k]
        flip = torch.where(r[:, 2] < 0.5, -1.0, 1.0)
        lo, hi = self.zoom_range
        zoom = torch.exp(math.log(lo) + r[:, 3] * (math.log(hi) - math.log(lo)))
        span = torch.clamp(1.0 - 1.0 / zoom, min=0.0)
        tx, ty = (2.0 * r[:, 4] - 1.0) * span, (2.0 * r[:, 5] - 1.0) * span
        theta = torch.stack(
            (
                torch.stack((cos * flip, -sin, tx), dim=1),
                torch.stack((sin * flip, cos, ty), dim=1),
            ),
            dim=1,
        ) / torch.stack((zoom, zoom, torch.ones_like(zoom)), dim=1).view(-1, 1, 3)
        grid = F.affine_grid(theta, [batch, 3, height, width], align_corners=False)
        source = F.grid_sample(source, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

        # Colour jitter, per sample: brightness (multiply and add), contrast, gamma, channel shuffle, inversion.
        def per(col: int, low: float, high: float) -> Tensor:
            return (low + (high - low) * r[:, col]).view(-1, 1, 1, 1)

        # Brightness: darker or brighter by a factor of 1.25 to 2 (never about the identity) plus a small offset.
        gain = torch.exp(torch.where(r[:, 6] < 0.5, -1.0, 1.0) * (math.log(1.25) + r[:, 7] * math.log(1.6)))
        source = source * gain.view(-1, 1, 1, 1) + per(14, -0.1, 0.1)
        centre = source.mean(dim=(1, 2, 3), keepdim=True)
        source = ((source - centre) * per(8, 0.5, 2.0) + centre).clamp_(0.0, 1.0)
        source = source.pow(torch.exp(per(9, math.log(0.5), math.log(2.0))))
        perm = torch.argsort(r[:, 10:13], dim=1)
        source = torch.gather(source, 1, perm.view(-1, 3, 1, 1).expand(-1, -1, height, width))
        invert = (r[:, 13] < 0.2).view(-1, 1, 1, 1)
        return torch.where(invert, 1.0 - source, source)
