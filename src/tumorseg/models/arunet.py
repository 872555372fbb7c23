"""AR-UNet 3D: a residual U-Net with additive soft attention gates on the skip connections."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tumorseg.models.layers import (
    SegmentationNetwork,
    check_common,
    check_int_sequence,
    dropout3d,
    init_weights,
    make_act,
    make_norm,
)


class PreActResBlock(nn.Module):
    """Pre-activation residual block: (norm-act-conv) x 2 plus a projected shortcut.

    The shortcut is a 1x1x1 convolution whenever the width or the resolution changes, and the
    identity otherwise (He et al., "Identity Mappings in Deep Residual Networks", 2016).
    """

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, norm: str, act: str, dropout: float, norm_groups: int):
        super().__init__()
        self.norm1 = make_norm(norm, in_ch, norm_groups)
        self.act1 = make_act(act)
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_ch, norm_groups)
        self.act2 = make_act(act)
        self.drop = dropout3d(dropout)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Identity() if in_ch == out_ch and stride == 1 else nn.Conv3d(in_ch, out_ch, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.act1(self.norm1(x)))
        y = self.conv2(self.drop(self.act2(self.norm2(y))))
        return y + self.shortcut(x)


class AttentionGate(nn.Module):
    """Additive soft attention (Oktay et al., "Attention U-Net", 2018).

    ``alpha = sigmoid(psi(act(W_x x + W_g g)))`` with 1x1x1 projections; the skip features ``x``
    are multiplied by ``alpha``. The gating signal ``g`` is the coarser decoder level, already
    upsampled to the skip's resolution by the decoder's transposed convolution.
    """

    def __init__(self, skip_ch: int, gate_ch: int, inter_ch: int, *, norm: str, act: str, norm_groups: int):
        super().__init__()
        self.w_x = nn.Sequential(nn.Conv3d(skip_ch, inter_ch, 1, bias=False), make_norm(norm, inter_ch, norm_groups))
        self.w_g = nn.Sequential(nn.Conv3d(gate_ch, inter_ch, 1, bias=False), make_norm(norm, inter_ch, norm_groups))
        self.act = make_act(act)
        self.psi = nn.Conv3d(inter_ch, 1, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.psi(self.act(self.w_x(x) + self.w_g(g))))
        return x * alpha


class ARUNet3D(SegmentationNetwork):
    """AR-UNet 3D: attention residual U-Net.

    From "Attention Mechanism, Linked Networks, and Pyramid Pooling Enabled 3D Biomedical Image
    Segmentation" (SNPD 2022). Each level holds one pre-activation residual block; the encoder
    downsamples with stride-2 residual blocks; each decoder level upsamples by a 2x2x2 transposed
    convolution, gates the matching skip with an additive attention gate driven by the upsampled
    coarser decoder features, concatenates both and applies a residual block. A final
    norm-act and 1x1x1 convolution give the logits.

    Deliberate differences from the published code:

    * Widths come from ``features`` instead of being hard-coded into 1x1 "resize" convolutions,
      so any depth (``len(features)`` levels) and width works.
    * ``in_channels`` is free (4 modalities by default); the published code took FLAIR only.
    * The forward returns logits; the published code applied softmax inside the network, which
      is numerically worse for the loss and blocks sigmoid region outputs.
    * Inputs of any size >= ``min_input_size`` work: they are zero-padded to a multiple of
      ``2 ** (len(features) - 1)`` and the logits are cropped back.

    Args:
        in_channels: number of input channels (MRI modalities). Defaults to 4.
        out_channels: number of output channels (classes or regions). Defaults to 3.
        features: width of each level, finest first. Defaults to the light preset
            ``(16, 32, 64, 128)``; the paper used ``(64, 128, 256, 512)``.
        norm: ``"batch"``, ``"instance"`` or ``"group"``. Defaults to ``"batch"``.
        act: activation name, one of ``tumorseg.models.layers.ACTS``. Defaults to ``"relu"``.
        dropout: channel dropout probability inside every residual block. Defaults to 0.0.
        norm_groups: groups for ``norm="group"``. Defaults to 8.
    """

    presets = {"light": {"features": (16, 32, 64, 128)}, "paper": {"features": (64, 128, 256, 512)}}

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        *,
        features: Sequence[int] = (16, 32, 64, 128),
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
        norm_groups: int = 8,
    ):
        super().__init__()
        check_common(in_channels, out_channels, norm, act, dropout, norm_groups)
        feats = check_int_sequence("features", features, min_length=2)
        self.in_channels, self.out_channels, self.features = in_channels, out_channels, feats
        self.stride = 2 ** (len(feats) - 1)
        kw = dict(norm=norm, act=act, dropout=dropout, norm_groups=norm_groups)

        self.stem = nn.Conv3d(in_channels, feats[0], 3, padding=1, bias=False)
        self.encoder = nn.ModuleList([PreActResBlock(feats[0], feats[0], stride=1, **kw)])
        for prev, cur in zip(feats[:-1], feats[1:]):
            self.encoder.append(PreActResBlock(prev, cur, stride=2, **kw))

        self.up = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for fine, coarse in zip(reversed(feats[:-1]), reversed(feats[1:])):
            self.up.append(nn.ConvTranspose3d(coarse, fine, 2, stride=2, bias=False))
            self.gates.append(AttentionGate(fine, fine, max(fine // 2, 1), norm=norm, act=act, norm_groups=norm_groups))
            self.decoder.append(PreActResBlock(2 * fine, fine, stride=1, **kw))

        self.head = nn.Sequential(
            make_norm(norm, feats[0], norm_groups), make_act(act), nn.Conv3d(feats[0], out_channels, 1)
        )
        init_weights(self)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for up, gate, block in zip(self.up, self.gates, self.decoder):
            x = up(x)
            skip = gate(skips.pop(), x)
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)
