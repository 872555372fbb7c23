"""Building blocks shared by the three networks: argument checks, norm/activation factories,
and the base class that pads inputs to the network's stride and crops the logits back."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "instance", "group")
ACTS = ("relu", "leakyrelu", "prelu", "elu", "gelu", "silu")


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def check_int_sequence(name: str, value: object, length: int | None = None, min_length: int = 1) -> tuple[int, ...]:
    """Validate a tuple of positive integers such as ``features=(16, 32, 64, 128)``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"`{name}` must be a sequence of positive integers, got {value!r}.")
    values = tuple(value)
    if length is not None and len(values) != length:
        raise ValueError(f"`{name}` must have exactly {length} entries, got {len(values)}: {values!r}.")
    if len(values) < min_length:
        raise ValueError(f"`{name}` must have at least {min_length} entries, got {len(values)}: {values!r}.")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"`{name}` entries must be positive integers, got {values!r}.")
    return values


def check_common(in_channels, out_channels, norm, act, dropout, norm_groups) -> None:
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_positive_int("norm_groups", norm_groups)
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {NORMS}, got {norm!r}.")
    if act not in ACTS:
        raise ValueError(f"`act` must be one of {ACTS}, got {act!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be a probability in [0, 1), got {dropout!r}.")


def make_norm(norm: str, channels: int, norm_groups: int = 8) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    groups = min(norm_groups, channels)
    if channels % groups:
        raise ValueError(
            f"`norm_groups`={norm_groups} does not divide a layer of {channels} channels; "
            "choose a `norm_groups` that divides every width in `features`."
        )
    return nn.GroupNorm(groups, channels)


def make_act(act: str) -> nn.Module:
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "leakyrelu":
        return nn.LeakyReLU(0.01, inplace=True)
    if act == "prelu":
        return nn.PReLU()
    if act == "elu":
        return nn.ELU(inplace=True)
    if act == "gelu":
        return nn.GELU()
    return nn.SiLU(inplace=True)


# -- deterministic variants of the three ops these networks use whose CUDA backward accumulates with
# atomics (torch.use_deterministic_algorithms refuses them): trilinear upsampling, adaptive average
# pooling and max pooling. Used only when deterministic algorithms are on and a gradient is needed
# on a GPU; elsewhere the native kernels run.


def deterministic_path(x: torch.Tensor) -> bool:
    return torch.are_deterministic_algorithms_enabled() and x.is_cuda and torch.is_grad_enabled()


def _linear_weights(n_in: int, n_out: int, device, dtype) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D linear interpolation, as F.interpolate with align_corners=False."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    weights.index_put_((rows, lo), 1 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights.to(device=device, dtype=dtype)


def _average_weights(n_in: int, n_out: int, device, dtype) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D adaptive average pooling (bins as F.adaptive_avg_pool1d)."""
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    for j in range(n_out):
        start, stop = (j * n_in) // n_out, -(-((j + 1) * n_in) // n_out)
        weights[j, start:stop] = 1.0 / (stop - start)
    return weights.to(device=device, dtype=dtype)


def _separable(x: torch.Tensor, matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """Apply one matrix along each spatial axis: matrix products, deterministic on every device."""
    a, b, c = matrices
    return torch.einsum("ncxyz,ix,jy,kz->ncijk", x, a, b, c)


def resize_trilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="trilinear", align_corners=False)``."""
    if not deterministic_path(x):
        return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)
    return _separable(x, [_linear_weights(n, m, x.device, x.dtype) for n, m in zip(x.shape[2:], size)])


class AdaptiveAvgPool3d(nn.AdaptiveAvgPool3d):
    """``nn.AdaptiveAvgPool3d`` (int output size) with a deterministic path: box averages are separable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not deterministic_path(x):
            return super().forward(x)
        return self.separable(x)

    def separable(self, x: torch.Tensor) -> torch.Tensor:
        """The pooling as one matrix product per axis: deterministic, and exportable to ONNX (which
        has no adaptive pooling) for inputs of a fixed size."""
        size = (self.output_size,) * 3 if isinstance(self.output_size, int) else self.output_size
        return _separable(x, [_average_weights(n, m, x.device, x.dtype) for n, m in zip(x.shape[2:], size)])


class MaxPool3d(nn.MaxPool3d):
    """``nn.MaxPool3d`` with a deterministic path: the maximum over the kernel's strided views, whose
    gradient is written without atomics (split evenly between exact ties instead of to the first)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not deterministic_path(x) or self.dilation not in (1, (1, 1, 1)) or self.ceil_mode:
            return super().forward(x)
        k, s, p = (v if isinstance(v, tuple) else (v,) * 3 for v in (self.kernel_size, self.stride, self.padding))
        padded = F.pad(x, [p[2], p[2], p[1], p[1], p[0], p[0]], value=float("-inf"))
        out = [(n + 2 * pad - kern) // st + 1 for n, kern, st, pad in zip(x.shape[2:], k, s, p)]
        views = [
            padded[..., i : i + s[0] * (out[0] - 1) + 1 : s[0], j : j + s[1] * (out[1] - 1) + 1 : s[1],
                   m : m + s[2] * (out[2] - 1) + 1 : s[2]]
            for i, j, m in itertools.product(range(k[0]), range(k[1]), range(k[2]))
        ]  # fmt: skip
        return torch.stack(views).amax(0)


def conv_norm_act(in_ch, out_ch, kernel, *, norm, act, norm_groups, stride=1, padding=None, dilation=1):
    if padding is None:
        padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv3d(in_ch, out_ch, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
        make_norm(norm, out_ch, norm_groups),
        make_act(act),
    )


def projection_shortcut(in_ch: int, out_ch: int, *, stride: int, norm: str, norm_groups: int) -> nn.Module:
    """A ResNet block's shortcut: the identity, or a strided 1x1x1 convolution and norm where the
    width or the resolution changes (He et al.'s projection shortcut)."""
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv3d(in_ch, out_ch, 1, stride=stride, bias=False), make_norm(norm, out_ch, norm_groups))


def dropout3d(p: float) -> nn.Module:
    """Channel dropout, or nothing when ``p`` is 0 (keeps state-dict keys and graphs lean)."""
    return nn.Dropout3d(p) if p > 0 else nn.Identity()


def check_flags(**flags: object) -> None:
    """Boolean options must be True or False (a YAML typo such as ``"no"`` would be truthy)."""
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise ValueError(f"`{name}` must be True or False, got {flag!r}.")


def resnet_stem(in_ch, out_ch, *, norm, act, norm_groups):
    """ResNet's stem: 7x7x7 stride-2 convolution and 3x3x3 stride-2 max-pool (output stride 4)."""
    return nn.Sequential(
        conv_norm_act(in_ch, out_ch, 7, stride=2, norm=norm, act=act, norm_groups=norm_groups),
        MaxPool3d(3, stride=2, padding=1),
    )


class FullResolutionHead(nn.Module):
    """Decoder from coarse features back to the input's resolution, for networks whose own head
    predicts at a fraction of it (LinkNet's finest features are at 1/4, PSPNet's logits at 1/8).

    As DeepLabv3+'s decoder, carried on to full resolution: the coarse features are projected to
    ``width`` channels, upsampled trilinearly to half resolution, concatenated with the stem
    convolution's features there and fused by a 3x3x3 convolution; a 2x2x2 transposed
    convolution of stride 2 brings them to full resolution, where a 1x1x1 convolution fuses them
    with the input's own intensities before the 1x1x1 classifier. Structures thinner
    than the output stride, such as a 1-2 voxel enhancing rim, cannot be drawn by trilinear
    upsampling of coarse logits: along any axis the interpolant changes sign at most once per
    coarse cell. Full-resolution work is pointwise and on a few channels, since it dominates the
    cost (a 3x3x3 convolution of the input there made LinkNet's step 2.4 times slower on a CPU).

    Args:
        coarse_channels: channels of the coarse features.
        half_channels: channels of the half-resolution (stem) features.
        in_channels: channels of the network's input.
        width: channels at half resolution; half as many at full resolution.
        out_channels: logits.
    """

    def __init__(
        self, coarse_channels, half_channels, in_channels, width, out_channels, *, norm, act, norm_groups, dropout=0.0
    ):
        super().__init__()
        kw = dict(norm=norm, act=act, norm_groups=norm_groups)
        full = max(width // 2, 1)
        self.project = conv_norm_act(coarse_channels, width, 1, **kw)
        self.fuse_half = conv_norm_act(width + half_channels, width, 3, **kw)
        self.up = nn.Sequential(
            nn.ConvTranspose3d(width, full, 2, stride=2, bias=False), make_norm(norm, full, norm_groups), make_act(act)
        )
        self.fuse_full = conv_norm_act(full + in_channels, full, 1, **kw)
        self.drop = dropout3d(dropout)
        self.classifier = nn.Conv3d(full, out_channels, 1)

    def forward(self, coarse: torch.Tensor, half: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        y = resize_trilinear(self.project(coarse), half.shape[2:])
        y = self.up(self.fuse_half(torch.cat([y, half], dim=1)))
        y = y[(..., *(slice(0, s) for s in image.shape[2:]))]  # odd sizes: the stem rounded up
        y = self.fuse_full(torch.cat([y, image], dim=1))
        return self.classifier(self.drop(y))


def init_weights(module: nn.Module) -> None:
    """He initialisation for convolutions, unit scale for norms (as ResNet does), and zero scale for
    the last norm of each residual branch (a block that names it in ``residual_norm``), so that every
    block starts as the identity (Goyal et al., 2017; torchvision's ``zero_init_residual``): the deep
    ResNet encoders of LinkNet and PSPNet then train as fast as a shallow network at first."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm3d)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        norm = getattr(m, getattr(m, "residual_norm", ""), None)
        if norm is not None and norm.weight is not None:
            nn.init.zeros_(norm.weight)


class SegmentationNetwork(nn.Module):
    """Base class: input checks, padding to the stride multiple and cropping back.

    Subclasses set ``stride`` (the factor every spatial size must be divisible by inside the
    network) and implement ``forward_padded``. ``min_input_size`` is twice the stride, so that
    the coarsest feature map keeps at least 2 voxels per axis and every norm has statistics.
    """

    stride: int = 1
    in_channels: int
    out_channels: int

    @property
    def min_input_size(self) -> int:
        return 2 * self.stride

    def forward_padded(self, x: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor):
        if x.ndim != 5:
            raise ValueError(
                f"{type(self).__name__} expects a 5D tensor (batch, channels, x, y, z), got shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} was built with in_channels={self.in_channels} "
                f"but the input has {x.shape[1]} channels (shape {tuple(x.shape)})."
            )
        spatial = tuple(x.shape[2:])
        if min(spatial) < self.min_input_size:
            raise ValueError(
                f"{type(self).__name__} needs at least {self.min_input_size} voxels per spatial axis, "
                f"got {spatial}; use a larger patch."
            )
        padded = tuple(math.ceil(s / self.stride) * self.stride for s in spatial)
        if padded != spatial:
            channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
            pad = []
            for s, p in zip(reversed(spatial), reversed(padded)):  # F.pad wants the last axis first
                before = (p - s) // 2
                pad += [before, p - s - before]
            x = F.pad(x, pad)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
        out = self.forward_padded(x)
        if padded == spatial:
            return out
        crop = (Ellipsis,) + tuple(slice((p - s) // 2, (p - s) // 2 + s) for s, p in zip(spatial, padded))
        if isinstance(out, tuple):
            return tuple(o[crop] for o in out)
        return out[crop]
