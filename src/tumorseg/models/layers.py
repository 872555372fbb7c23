"""Building blocks shared by the three networks: argument checks, norm/activation factories,
and the base class that pads inputs to the network's stride and crops the logits back."""

from __future__ import annotations

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


def init_weights(module: nn.Module) -> None:
    """He initialisation for convolutions, unit scale for norms (as ResNet does)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm3d)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


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
