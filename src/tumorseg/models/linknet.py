"""LinkNet 3D: a ResNet18-3D encoder whose blocks are linked to a light decoder by addition."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tumorseg.models.layers import (
    FullResolutionHead,
    SegmentationNetwork,
    check_common,
    check_flags,
    check_int_sequence,
    conv_norm_act,
    dropout3d,
    init_weights,
    make_act,
    make_norm,
    projection_shortcut,
    resnet_stem,
)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., 2016): two 3x3x3 convolutions with the residual add."""

    residual_norm = "norm2"  # zero-initialised by init_weights

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, norm: str, act: str, norm_groups: int):
        super().__init__()
        self.conv1 = conv_norm_act(in_ch, out_ch, 3, stride=stride, norm=norm, act=act, norm_groups=norm_groups)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_ch, norm_groups)
        self.shortcut = projection_shortcut(in_ch, out_ch, stride=stride, norm=norm, norm_groups=norm_groups)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm2(self.conv2(self.conv1(x))) + self.shortcut(x))


class LinkDecoderBlock(nn.Module):
    """LinkNet decoder block: 1x1x1 reduce to a quarter, x2 upsampling, 1x1x1 expand.

    The upsampling is a 3x3x3 transposed convolution of stride 2 (LinkNet's "full-conv");
    the block that mirrors the stride-1 first encoder stage uses a 3x3x3 convolution instead.
    """

    def __init__(self, in_ch: int, out_ch: int, *, upsample: bool, norm: str, act: str, norm_groups: int):
        super().__init__()
        mid = max(in_ch // 4, 1)
        kw = dict(norm=norm, act=act, norm_groups=norm_groups)
        self.reduce = conv_norm_act(in_ch, mid, 1, **kw)
        if upsample:
            resample = nn.ConvTranspose3d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=False)
        else:
            resample = nn.Conv3d(mid, mid, 3, padding=1, bias=False)
        self.resample = nn.Sequential(resample, make_norm(norm, mid, norm_groups), make_act(act))
        self.expand = conv_norm_act(mid, out_ch, 1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.resample(self.reduce(x)))


class LinkNet3D(SegmentationNetwork):
    """LinkNet 3D: ResNet18-3D encoder linked to a LinkNet decoder.

    From "Attention Mechanism, Linked Networks, and Pyramid Pooling Enabled 3D Biomedical Image
    Segmentation" (SNPD 2022), after Chaurasia & Culurciello, "LinkNet" (2017). Encoder: 7x7x7
    stride-2 stem, 3x3x3 stride-2 max-pool, four stages of ``blocks`` basic blocks (ResNet18:
    ``(2, 2, 2, 2)``), the first at stride 1 and the others at stride 2. Decoder: one block per
    encoder stage; the output of each is added to the encoder output of the next finer stage.
    The full-resolution classifier is LinkNet's: 3x3x3 transposed conv (x2), 3x3x3 conv, then a
    2x2x2 transposed conv (x2) to ``out_channels`` logits.

    Deliberate differences from the published code:

    * The residual add in every basic block is active (it was commented out, which turned the
      "ResNet18" encoder into a plain 18-layer CNN).
    * ``in_channels`` and the widths are arguments; the forward returns logits (no softmax).
    * Inputs of any size >= ``min_input_size`` (64) work: they are zero-padded to a multiple of
      the network's stride (32) and the logits are cropped back.

    Args:
        in_channels: number of input channels (MRI modalities). Defaults to 4.
        out_channels: number of output channels (classes or regions). Defaults to 3.
        features: width of the four encoder stages (the stem uses the first). Defaults to the
            light preset ``(16, 32, 64, 128)``; the paper used ResNet18's ``(64, 128, 256, 512)``.
        blocks: basic blocks per encoder stage. Defaults to ``(2, 2, 2, 2)`` (ResNet18).
        norm: ``"batch"``, ``"instance"`` or ``"group"``. Defaults to ``"batch"``.
        act: activation name, one of ``tumorseg.models.layers.ACTS``. Defaults to ``"relu"``.
        dropout: channel dropout probability before the final classifier convolution.
            Defaults to 0.0.
        norm_groups: groups for ``norm="group"``. Defaults to 8.
        full_resolution: replace LinkNet's classifier, which rebuilds full resolution from the
            1/4-resolution decoder by transposed convolutions alone, with a
            ``FullResolutionHead`` that also links the stem convolution's 1/2-resolution features
            and the input's intensities. Defaults to False (as published).
    """

    presets = {"light": {"features": (16, 32, 64, 128)}, "paper": {"features": (64, 128, 256, 512)}}
    stride = 32

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        *,
        features: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (2, 2, 2, 2),
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
        norm_groups: int = 8,
        full_resolution: bool = False,
    ):
        super().__init__()
        check_common(in_channels, out_channels, norm, act, dropout, norm_groups)
        feats = check_int_sequence("features", features, length=4)
        blocks = check_int_sequence("blocks", blocks, length=4)
        check_flags(full_resolution=full_resolution)
        self.in_channels, self.out_channels, self.features = in_channels, out_channels, feats
        self.full_resolution = full_resolution
        kw = dict(norm=norm, act=act, norm_groups=norm_groups)

        self.stem = resnet_stem(in_channels, feats[0], **kw)
        self.encoder = nn.ModuleList()
        prev = feats[0]
        for i, (width, n) in enumerate(zip(feats, blocks)):
            stage = [BasicBlock(prev, width, stride=1 if i == 0 else 2, **kw)]
            stage += [BasicBlock(width, width, stride=1, **kw) for _ in range(n - 1)]
            self.encoder.append(nn.Sequential(*stage))
            prev = width
        # decoder[i] mirrors encoder[i]: widths run from the stage's width back to the finer one
        self.decoder = nn.ModuleList(
            LinkDecoderBlock(feats[i], feats[max(i - 1, 0)], upsample=i > 0, **kw) for i in range(4)
        )
        head = max(feats[0] // 2, 1)
        self.classifier = (
            FullResolutionHead(feats[0], feats[0], in_channels, feats[0], out_channels, dropout=dropout, **kw)
            if full_resolution
            else nn.Sequential(
                nn.ConvTranspose3d(feats[0], head, 3, stride=2, padding=1, output_padding=1, bias=False),
                make_norm(norm, head, norm_groups),
                make_act(act),
                conv_norm_act(head, head, 3, **kw),
                dropout3d(dropout),
                nn.ConvTranspose3d(head, out_channels, 2, stride=2),
            )
        )
        init_weights(self)

    def forward_padded(self, image: torch.Tensor) -> torch.Tensor:
        half = self.stem[0](image)
        x = self.stem[1](half)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        d = self.decoder[3](skips[3])
        for i in (2, 1, 0):
            d = self.decoder[i](d + skips[i])
        if self.full_resolution:
            return self.classifier(d, half, image)
        return self.classifier(d)
