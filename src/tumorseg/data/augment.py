"""Batched data augmentation that runs on the training device.

``BatchAugment`` takes a batch that is already on the device, ``image`` (B, C, X, Y, Z) float and
``label`` (B, X, Y, Z) integer classes or (B, K, X, Y, Z) float/bool region masks, and returns
both augmented, with the same shapes and dtypes. Every sample draws its own parameters; each
transform has its own per-sample probability. In nnU-Net's order:

1. spatial: flips along each axis, rotation about each axis and isotropic scaling, composed into
   one affine per sample; the samples that drew a rotation or a scaling are resampled with one
   ``grid_sample`` for the image (trilinear) and one for the labels (nearest, so classes stay
   exact), sharing one grid; samples that drew only flips are flipped exactly, and samples that
   drew nothing are returned bit for bit. Zero padding outside the patch.
2. additive Gaussian noise, 3. Gaussian blur, 4. multiplicative brightness, 5. contrast around
   the channel mean (clipped to the channel's range), 6. gamma on the channel rescaled to
   [0, 1], with the channel's mean and standard deviation restored afterwards.

The intensity transforms follow nnU-Net v2 (batchgeneratorsv2): per-channel factors, and they act
on every voxel of the patch, background included, as nnU-Net's do. Only the brightness multiplier
keeps zero voxels at zero; noise, blur, contrast and gamma change the background too. Factor
ranges that straddle 1 (scale, brightness, contrast, gamma) draw below and above 1 equally often,
as nnU-Net's ``BGContrast`` does, so (0.7, 1.5) is not mostly a darkening. Left out of nnU-Net's
set: simulated low resolution and the inverted-image gamma; the blur here is isotropic and covers
every channel of a chosen sample (nnU-Net: a sigma per axis, each channel with probability 0.5).

Where the randomness lives: the few numbers per sample (gates, angles, factors, blur kernels)
are drawn on the CPU from one ``torch.Generator`` (or torch's global CPU generator) and moved to
the device in one small pinned, non-blocking copy. The host therefore knows which transforms a
batch drew, skips the others entirely and never reads anything back from the device. The one
large random tensor, the noise, is drawn on the device from a generator seeded from the CPU one,
so a seeded call draws the same parameters on every device and repeats exactly on each.

Why not MONAI's batched layers (both were checked against MONAI 1.6.1):

- ``monai.networks.layers.AffineTransform`` in its voxel-coordinate mode (``normalized=False``)
  builds tensors on the host in every call and copies them to the device with blocking copies
  (``torch.tensor([0, 0, 0, 1]).to(theta)``, ``to_norm_affine``'s inverse through NumPy,
  ``torch.as_tensor(range(...), device=...)`` for ``reverse_indexing``); a blocking host-to-device
  copy ends in ``cudaStreamSynchronize``. In its normalized mode it is ``affine_grid`` +
  ``grid_sample`` and nothing more, but it rebuilds the grid on every call, so image and labels
  cannot share one. We call the two functions directly.
- ``monai.networks.layers.GaussianFilter`` holds one sigma per axis for the whole batch (module
  parameters), so per-sample sigmas would need one call per sample, and ``gaussian_1d`` runs
  ``float(sigma)`` on every call, a device sync when sigma lives on the GPU. A grouped separable
  convolution with per-sample, per-channel kernels does it in three batched calls.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PRESETS", "AugmentConfig", "BatchAugment", "augment_cost"]

# Blur kernels reach this many sigmas (the Gaussian holds 99.7% of its mass inside).
BLUR_TRUNCATE = 3.0


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (per sample) and ranges of every transform; the defaults are the "default" preset.

    Probabilities and defaults follow nnU-Net v2's training transforms, except the scaling range,
    which is narrower than nnU-Net's (0.7, 1.4) because the patch is augmented after cropping:
    zooming out pulls zeros in from outside the patch.

    Args:
        p_flip: probability of a flip along each spatial axis (X, Y, Z). Defaults to 0.5 each.
        p_rotate: probability that a sample is rotated. Defaults to 0.2.
        rotate_range: (low, high) angle in degrees for the rotation about each axis (X, Y, Z),
            drawn uniformly; a rotation about X turns Y towards Z, about Y turns Z towards X and
            about Z turns X towards Y; they are applied in the order X, Y, Z. Defaults to +-30.
        p_scale: probability that a sample is scaled. Defaults to 0.2.
        scale_range: (low, high) isotropic zoom factor; above 1 enlarges the content. Defaults
            to (0.85, 1.25).
        p_noise: probability of additive Gaussian noise. Defaults to 0.1.
        noise_std: (low, high) standard deviation of the noise, one per sample (nnU-Net draws
            its "noise_variance" (0, 0.1) and uses it as the standard deviation). Defaults to (0, 0.1).
        p_blur: probability of a Gaussian blur. Defaults to 0.2.
        blur_sigma: (low, high) isotropic sigma in voxels, one per channel. Defaults to (0.5, 1.0).
        p_brightness: probability of a brightness multiplier. Defaults to 0.15.
        brightness_range: (low, high) multiplier, one per channel. Defaults to (0.75, 1.25).
        p_contrast: probability of a contrast change. Defaults to 0.15.
        contrast_range: (low, high) contrast factor, one per channel. Defaults to (0.75, 1.25).
        p_gamma: probability of a gamma transform. Defaults to 0.3.
        gamma_range: (low, high) gamma, one per channel. Defaults to (0.7, 1.5).
    """

    p_flip: tuple[float, float, float] = (0.5, 0.5, 0.5)
    p_rotate: float = 0.2
    rotate_range: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] = (
        (-30.0, 30.0),
        (-30.0, 30.0),
        (-30.0, 30.0),
    )
    p_scale: float = 0.2
    scale_range: tuple[float, float] = (0.85, 1.25)
    p_noise: float = 0.1
    noise_std: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)

    def __post_init__(self) -> None:
        # Hydra hands over lists (or ListConfigs): store tuples of floats so the config stays hashable.
        set_ = object.__setattr__
        set_(self, "p_flip", _floats(self.p_flip, "p_flip", 3))
        set_(
            self,
            "rotate_range",
            tuple(_range(r, "rotate_range", -180.0, 180.0) for r in _seq(self.rotate_range, "rotate_range", 3)),
        )
        for name in ("p_rotate", "p_scale", "p_noise", "p_blur", "p_brightness", "p_contrast", "p_gamma"):
            set_(self, name, _probability(getattr(self, name), name))
        for p in self.p_flip:
            _probability(p, "p_flip")
        set_(self, "noise_std", _range(self.noise_std, "noise_std", 0.0))
        set_(self, "blur_sigma", _range(self.blur_sigma, "blur_sigma", 0.0))
        for name in ("scale_range", "brightness_range", "contrast_range", "gamma_range"):
            set_(self, name, _range(getattr(self, name), name, 0.0, positive=True))

    @classmethod
    def from_dict(cls, values: Mapping) -> AugmentConfig:
        """Build a config from a mapping of field names (a Hydra node); unspecified fields keep their defaults."""
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in values if key not in fields]
        if unknown:
            raise ValueError(f"Unknown augmentation option(s) {unknown}; valid options are {fields}.")
        return cls(**values)


def _seq(value, name: str, length: int) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != length:
        raise ValueError(f"{name} must be a sequence of {length} values, got {value!r}.")
    return tuple(value)


def _floats(value, name: str, length: int) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _seq(value, name, length))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold numbers, got {value!r}.") from None


def _probability(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.")
    return float(value)


def _range(value, name: str, low: float, high: float = math.inf, positive: bool = False) -> tuple[float, float]:
    lo, hi = _floats(value, name, 2)
    if not (lo <= hi and low <= lo and hi <= high) or (positive and lo <= low):
        bound = f"> {low}" if positive else f">= {low}" + (f" and <= {high}" if high < math.inf else "")
        raise ValueError(f"{name} must be an ordered (low, high) pair with values {bound}, got {value!r}.")
    return lo, hi


PRESETS: dict[str, AugmentConfig] = {
    "default": AugmentConfig(),
    "none": AugmentConfig(
        p_flip=(0.0, 0.0, 0.0),
        p_rotate=0.0,
        p_scale=0.0,
        p_noise=0.0,
        p_blur=0.0,
        p_brightness=0.0,
        p_contrast=0.0,
        p_gamma=0.0,
    ),
    # The published code's augmentation: random flips and a small random rotation and scaling.
    "paper": AugmentConfig(
        p_rotate=0.5,
        rotate_range=((-10.0, 10.0), (-10.0, 10.0), (-10.0, 10.0)),
        p_scale=0.5,
        scale_range=(0.9, 1.1),
        p_noise=0.0,
        p_blur=0.0,
        p_brightness=0.0,
        p_contrast=0.0,
        p_gamma=0.0,
    ),
}


@dataclass
class _Draw:
    """One batch's random parameters, on the host; samples that did not draw a transform hold
    its neutral values (angle 0, zoom 1, std 0, sigma 0, factor 1)."""

    flip: np.ndarray  # (B, 3) bool
    resample: np.ndarray  # (B,) bool: drew a rotation or a scaling
    pull: np.ndarray  # (B, 3, 3) output -> input voxel offsets from the centre, in (X, Y, Z) order
    noise: np.ndarray  # (B,) bool gate
    noise_std: np.ndarray  # (B,)
    blur: np.ndarray  # (B,) bool gate
    blur_sigma: np.ndarray  # (B, C)
    brightness: np.ndarray  # (B,) bool gate
    multiplier: np.ndarray  # (B, C)
    contrast: np.ndarray  # (B,) bool gate
    contrast_factor: np.ndarray  # (B, C)
    gamma: np.ndarray  # (B,) bool gate
    gamma_value: np.ndarray  # (B, C)
    seed: int  # for the noise, which is drawn on the device

    @property
    def any_intensity(self) -> bool:
        return bool((self.noise | self.blur | self.brightness | self.contrast | self.gamma).any())


def _factor(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map uniforms to [lo, hi]; a range around 1 puts half the draws below 1 (nnU-Net's BGContrast)."""
    if lo < 1.0 < hi:
        return np.where(u < 0.5, lo + (1.0 - lo) * 2.0 * u, 1.0 + (hi - 1.0) * (2.0 * u - 1.0))
    return lo + (hi - lo) * u


def _rotation(angles: np.ndarray) -> np.ndarray:
    """(B, 3) angles in radians about X, Y, Z -> (B, 3, 3) rotations Rz @ Ry @ Rx (right-handed)."""
    c, s = np.cos(angles), np.sin(angles)
    one, zero = np.ones(len(angles)), np.zeros(len(angles))
    rx = np.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], -1)
    ry = np.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], -1)
    rz = np.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], -1)
    return rz.reshape(-1, 3, 3) @ ry.reshape(-1, 3, 3) @ rx.reshape(-1, 3, 3)


def _draw(cfg: AugmentConfig, batch: int, channels: int, generator: torch.Generator | None) -> _Draw:
    # A fixed number of uniforms per sample, whatever the probabilities: the same seed gives the
    # same flips under any intensity settings.
    widths = {"flip": 3, "rotate": 4, "scale": 2, "noise": 2, "blur": 1 + channels}
    widths |= {"brightness": 1 + channels, "contrast": 1 + channels, "gamma": 1 + channels}
    u = torch.rand(batch, sum(widths.values()), generator=generator, dtype=torch.float64).numpy()
    # A CPU tensor, so int() reads host memory: no device sync.
    seed = int(torch.randint(2**62, (), generator=generator))
    cols = dict(zip(widths, np.split(u, np.cumsum(list(widths.values()))[:-1], axis=1)))

    flip = cols["flip"] < np.array(cfg.p_flip)
    rotate = cols["rotate"][:, 0] < cfg.p_rotate
    lows, highs = np.array(cfg.rotate_range).T
    angles = np.deg2rad(lows + (highs - lows) * cols["rotate"][:, 1:]) * rotate[:, None]
    scale = cols["scale"][:, 0] < cfg.p_scale
    zoom = np.where(scale, _factor(cols["scale"][:, 1], *cfg.scale_range), 1.0)
    # Content moves by zoom * R * F; grid_sample pulls, so it needs the inverse F @ R^T / zoom.
    signs = np.where(flip, -1.0, 1.0)
    pull = signs[:, :, None] * _rotation(angles).transpose(0, 2, 1) / zoom[:, None, None]

    def gate(name: str, p: float) -> tuple[np.ndarray, np.ndarray]:
        return cols[name][:, 0] < p, cols[name][:, 1:]

    noise, u_noise = gate("noise", cfg.p_noise)
    blur, u_blur = gate("blur", cfg.p_blur)
    brightness, u_brightness = gate("brightness", cfg.p_brightness)
    contrast, u_contrast = gate("contrast", cfg.p_contrast)
    gamma, u_gamma = gate("gamma", cfg.p_gamma)
    noise_lo, noise_hi = cfg.noise_std
    blur_lo, blur_hi = cfg.blur_sigma
    return _Draw(
        flip=flip,
        resample=rotate | scale,
        pull=pull,
        noise=noise,
        noise_std=np.where(noise, noise_lo + (noise_hi - noise_lo) * u_noise[:, 0], 0.0),
        blur=blur,
        blur_sigma=np.where(blur[:, None], blur_lo + (blur_hi - blur_lo) * u_blur, 0.0),
        brightness=brightness,
        multiplier=np.where(brightness[:, None], _factor(u_brightness, *cfg.brightness_range), 1.0),
        contrast=contrast,
        contrast_factor=np.where(contrast[:, None], _factor(u_contrast, *cfg.contrast_range), 1.0),
        gamma=gamma,
        gamma_value=np.where(gamma[:, None], _factor(u_gamma, *cfg.gamma_range), 1.0),
        seed=seed,
    )


def _theta(pull: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Voxel-space pull matrices (k, 3, 3) -> ``affine_grid`` thetas (k, 3, 4) for align_corners=True.

    With align_corners=True a normalized coordinate n is the voxel offset from the centre divided
    by (N - 1) / 2, so theta = D^-1 A D with D = diag((N - 1) / 2); rotating in normalized
    coordinates instead would shear non-cubic patches. ``affine_grid`` orders its coordinates
    (W, H, D), the reverse of the tensor's (X, Y, Z), hence the flipped rows and columns.
    """
    half = np.maximum((np.asarray(shape, dtype=np.float64) - 1.0) / 2.0, 1.0)  # size-1 axes: avoid 0
    normalized = pull * half[None, None, :] / half[None, :, None]
    theta = np.zeros((len(pull), 3, 4))
    theta[:, :, :3] = normalized[:, ::-1, ::-1]
    return theta


def _blur_kernels(sigma: np.ndarray, radius: int) -> np.ndarray:
    """(B, C) sigmas -> (B * C, 2 * radius + 1) normalized Gaussian kernels; sigma 0 gives a delta."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    safe = np.maximum(sigma.reshape(-1, 1), 1e-6)
    kernels = np.exp(-0.5 * (offsets / safe) ** 2)
    return kernels / kernels.sum(axis=1, keepdims=True)


def _to_device(arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    """Move small host arrays to ``device`` as float32 views of one tensor, in one copy.

    On CUDA the copy goes from pinned memory with non_blocking=True: a blocking host-to-device
    copy synchronizes the stream, i.e. waits for the training step queued before it.
    """
    flat = torch.from_numpy(np.concatenate([a.ravel() for a in arrays.values()]).astype(np.float32))
    if device.type == "cuda":
        flat = flat.pin_memory().to(device, non_blocking=True)
    else:
        flat = flat.to(device)
    out, start = {}, 0
    for name, a in arrays.items():
        out[name] = flat[start : start + a.size].view(a.shape)
        start += a.size
    return out


def _select(mask: Tensor, new: Tensor, old: Tensor, chosen: np.ndarray) -> Tensor:
    """Take ``new`` for the chosen samples and ``old`` (bit for bit) for the others."""
    if chosen.all():
        return new
    return torch.where(mask.view(-1, 1, 1, 1, 1) > 0.5, new, old)


class BatchAugment(torch.nn.Module):
    """Random spatial and intensity augmentation of a batch on its device; see the module docstring.

    Args:
        config: an ``AugmentConfig``, the name of a preset in ``PRESETS`` ("default", "none",
            "paper") or a mapping of ``AugmentConfig`` fields (from a Hydra config; unspecified
            fields keep the default preset's values). Defaults to "default".

    Raises:
        ValueError: for an unknown preset name, an unknown option or an invalid value.
    """

    def __init__(self, config: AugmentConfig | str | Mapping = "default") -> None:
        super().__init__()
        if isinstance(config, str):
            if config not in PRESETS:
                raise ValueError(f"Unknown augmentation preset {config!r}; choose one of {sorted(PRESETS)}.")
            config = PRESETS[config]
        elif isinstance(config, Mapping):
            config = AugmentConfig.from_dict(config)
        elif not isinstance(config, AugmentConfig):
            raise ValueError(
                f"config must be an AugmentConfig, a preset name or a mapping, got {type(config).__name__}."
            )
        self.config = config
        self.blur_radius = math.ceil(BLUR_TRUNCATE * config.blur_sigma[1])

    def extra_repr(self) -> str:
        return repr(self.config)

    @torch.no_grad()
    def forward(self, image: Tensor, label: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Augment one batch; every sample draws its own parameters.

        Args:
            image: (B, C, X, Y, Z) floating-point images.
            label: (B, X, Y, Z) integer class map, or (B, K, X, Y, Z) float or bool region masks,
                on the image's device.
            generator: a CPU ``torch.Generator`` for reproducible draws; None uses torch's global
                CPU generator (seeded by ``torch.manual_seed``). Defaults to None.

        Returns:
            The augmented image and label, with the input's shapes and dtypes. Label values are
            a subset of the input's, plus 0 where the transform pulls from outside the patch.
        """
        _check_batch(image, label)
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(
                "generator must be a CPU torch.Generator (parameters are drawn on the CPU), "
                f"got one on {generator.device}."
            )
        batch, channels = image.shape[:2]
        draw = _draw(self.config, batch, channels, generator)
        moved = np.flatnonzero(draw.resample)
        arrays = {}
        if len(moved):
            arrays["theta"] = _theta(draw.pull[moved], image.shape[2:])
        if draw.any_intensity:
            arrays |= {
                "noise_std": draw.noise_std.reshape(batch, 1, 1, 1, 1),
                "blur": draw.blur,
                "kernels": _blur_kernels(draw.blur_sigma, self.blur_radius),
                "multiplier": draw.multiplier.reshape(batch, channels, 1, 1, 1),
                "contrast_factor": draw.contrast_factor.reshape(batch, channels, 1, 1, 1),
                "gamma": draw.gamma,
                "gamma_value": draw.gamma_value.reshape(batch, channels, 1, 1, 1),
            }
        params = _to_device(arrays, image.device) if arrays else {}
        # Labels must never become bf16, and the statistics below want float32.
        with torch.autocast(device_type=image.device.type, enabled=False):
            image, label = self._spatial(image, label, draw, params.get("theta"))
            if draw.any_intensity:
                image = self._intensity(image, draw, params)
        return image, label

    def _spatial(self, image: Tensor, label: Tensor, draw: _Draw, theta: Tensor | None) -> tuple[Tensor, Tensor]:
        """Flip-only samples are flipped, rotated/scaled ones resampled (``theta`` holds their matrices)."""
        moved = np.flatnonzero(draw.resample)
        flipped = np.flatnonzero(~draw.resample & draw.flip.any(axis=1))
        if len(moved) == 0 and len(flipped) == 0:
            return image, label
        images, labels = list(image.unbind(0)), list(label.unbind(0))
        # A pure flip is a voxel permutation: torch.flip is exact, whereas grid_sample's identity
        # grid is not (at 128^3 its float32 coordinates land up to 8e-6 voxel off the centres,
        # enough to blend neighbours into trilinear output).
        for b in flipped:
            dims = [int(d) - 3 for d in np.flatnonzero(draw.flip[b])]  # a sample's last three dims are X, Y, Z
            images[b], labels[b] = images[b].flip(dims), labels[b].flip(dims)
        if len(moved):
            whole = len(moved) == len(image)
            src_image = image if whole else torch.stack([images[b] for b in moved])
            src_label = label if whole else torch.stack([labels[b] for b in moved])
            masks = src_label.ndim == 5
            src_label = (src_label if masks else src_label.unsqueeze(1)).float()
            grid = F.affine_grid(theta, [len(moved), 1, *image.shape[2:]], align_corners=True)
            new_image = F.grid_sample(src_image.float(), grid, mode="bilinear", align_corners=True).to(image.dtype)
            new_label = F.grid_sample(src_label, grid, mode="nearest", align_corners=True)
            new_label = (new_label if masks else new_label.squeeze(1)).to(label.dtype)
            if whole:
                return new_image, new_label
            for j, b in enumerate(moved):
                images[b], labels[b] = new_image[j], new_label[j]
        return torch.stack(images), torch.stack(labels)

    def _intensity(self, image: Tensor, draw: _Draw, p: dict[str, Tensor]) -> Tensor:
        """nnU-Net's order: noise, blur, brightness, contrast, gamma; each skipped when no sample drew it."""
        x = image.float()
        # Neutral values leave unselected samples bit for bit: x + 0 * n == x and x * 1 + mean * 0 == x.
        # Blur and gamma are not exact at their neutral values, so _select takes those samples back.
        if draw.noise.any():
            noise_generator = torch.Generator(device=x.device).manual_seed(draw.seed)
            noise = torch.randn(x.shape, generator=noise_generator, device=x.device, dtype=x.dtype)
            x = torch.addcmul(x, noise, p["noise_std"])
        if draw.blur.any():
            x = _select(p["blur"], _gaussian_blur(x, p["kernels"], self.blur_radius), x, draw.blur)
        if draw.brightness.any():
            x = x * p["multiplier"]
        if draw.contrast.any():
            x = _contrast(x, p["contrast_factor"])
        if draw.gamma.any():
            x = _select(p["gamma"], _gamma(x, p["gamma_value"]), x, draw.gamma)
        return x.to(image.dtype)


def _check_batch(image: Tensor, label: Tensor) -> None:
    if image.ndim != 5 or not image.is_floating_point():
        raise ValueError(
            f"image must be a floating-point (B, C, X, Y, Z) tensor, got {image.dtype} {tuple(image.shape)}."
        )
    if label.ndim == 4:
        if label.is_floating_point() or label.dtype == torch.bool:
            raise ValueError(f"a (B, X, Y, Z) label must hold integer classes, got {label.dtype}.")
    elif label.ndim != 5 or not (label.is_floating_point() or label.dtype == torch.bool):
        raise ValueError(
            f"label must be (B, X, Y, Z) integer classes or (B, K, X, Y, Z) float/bool region masks, "
            f"got {label.dtype} {tuple(label.shape)}."
        )
    if label.shape[0] != image.shape[0] or label.shape[-3:] != image.shape[-3:] or label.device != image.device:
        raise ValueError(
            f"label {tuple(label.shape)} on {label.device} does not match image {tuple(image.shape)} on {image.device}."
        )


def _gaussian_blur(x: Tensor, kernels: Tensor, radius: int) -> Tensor:
    """Separable blur with one kernel per sample and channel: the batch becomes the channels of a grouped conv."""
    batch, channels, *shape = x.shape
    groups = batch * channels
    # Replicate padding, so that the patch's border is not darkened by zeros from outside.
    y = F.pad(x.reshape(1, groups, *shape), (radius,) * 6, mode="replicate")
    k = 2 * radius + 1
    for kernel_shape in ((k, 1, 1), (1, k, 1), (1, 1, k)):
        y = F.conv3d(y, kernels.view(groups, 1, *kernel_shape), groups=groups)
    return y.view_as(x)


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    low, high = torch.aminmax(x.flatten(2), dim=-1)
    return low[..., None, None, None], high[..., None, None, None]


def _contrast(x: Tensor, factor: Tensor) -> Tensor:
    """nnU-Net's contrast: (x - mean) * factor + mean per channel, clipped to the channel's range."""
    mean = x.mean(dim=(2, 3, 4), keepdim=True)
    low, high = _channel_stats(x)
    return torch.clamp(x * factor + mean * (1.0 - factor), low, high)


def _gamma(x: Tensor, gamma: Tensor) -> Tensor:
    """nnU-Net's gamma: rescale each channel to [0, 1], raise to gamma, map back, restore mean and std."""
    std, mean = torch.std_mean(x, dim=(2, 3, 4), keepdim=True)
    low, high = _channel_stats(x)
    span = (high - low).clamp_min(1e-7)
    y = ((x - low) / span).pow(gamma) * span + low
    new_std, new_mean = torch.std_mean(y, dim=(2, 3, 4), keepdim=True)
    return (y - new_mean) * (std / new_std.clamp_min(1e-7)) + mean


def augment_cost(
    device: str | torch.device,
    batch: int = 2,
    channels: int = 4,
    patch: int = 128,
    preset: str = "default",
    repeats: int = 10,
) -> dict:
    """Time ``BatchAugment`` on random (batch, channels, patch^3) images and uint8 labels.

    Each repeat draws new parameters (one seeded generator for the whole run), so the median is
    over the mix of transforms that training sees. CUDA is synchronized around each repeat.

    Args:
        device: where the batch lives.
        batch: batch size. Defaults to 2.
        channels: image channels. Defaults to 4.
        patch: edge of the cubic patch. Defaults to 128.
        preset: a name in ``PRESETS``. Defaults to "default".
        repeats: timed calls, after one untimed warm-up call. Defaults to 10.

    Returns:
        ``{"device", "preset", "batch", "channels", "patch", "repeats", "median_ms"}``.
    """
    device = torch.device(device)
    augment = BatchAugment(preset)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch, channels, patch, patch, patch, generator=generator).to(device)
    label = torch.randint(0, 4, (batch, patch, patch, patch), generator=generator, dtype=torch.uint8).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    augment(image, label, generator)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        augment(image, label, generator)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "device": str(device),
        "preset": preset,
        "batch": batch,
        "channels": channels,
        "patch": patch,
        "repeats": repeats,
        "median_ms": statistics.median(times),
    }
