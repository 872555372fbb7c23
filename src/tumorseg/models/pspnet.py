"""PSPNet 3D: a dilated ResNet50-3D backbone with a 3D pyramid pooling module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tumorseg.models.layers import (
    AdaptiveAvgPool3d,
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
    resize_trilinear,
    resnet_stem,
)


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1x1 reduce, 3x3x3, 1x1x1 expand x4) with the residual add."""

    expansion = 4
    residual_norm = "norm3"  # zero-initialised by init_weights

    def __init__(self, in_ch, planes, *, stride, dilation, norm, act, norm_groups):
        super().__init__()
        out_ch = planes * self.expansion
        kw = dict(norm=norm, act=act, norm_groups=norm_groups)
        self.conv1 = conv_norm_act(in_ch, planes, 1, **kw)
        self.conv2 = conv_norm_act(planes, planes, 3, stride=stride, dilation=dilation, **kw)
        self.conv3 = nn.Conv3d(planes, out_ch, 1, bias=False)
        self.norm3 = make_norm(norm, out_ch, norm_groups)
        self.shortcut = projection_shortcut(in_ch, out_ch, stride=stride, norm=norm, norm_groups=norm_groups)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm3(self.conv3(self.conv2(self.conv1(x)))) + self.shortcut(x))


class PyramidPooling3D(nn.Module):
    """3D pyramid pooling (Zhao et al., "Pyramid Scene Parsing Network", 2017).

    Each branch average-pools the features to ``bin^3`` cells, projects them with a 1x1x1
    convolution and upsamples trilinearly; the branches are concatenated with the input.
    The branches have no normalisation: the bin-1 branch holds one voxel per channel, where batch
    norm fails at batch size 1 and instance norm would erase the signal.
    """

    def __init__(self, in_ch: int, bins: Sequence[int], branch_ch: int, act: str):
        super().__init__()
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool3d(b), nn.Conv3d(in_ch, branch_ch, 1), make_act(act)) for b in self.bins
        )
        self.out_channels = in_ch + branch_ch * len(self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pooled = [resize_trilinear(b(x), size) for b in self.branches]
        return torch.cat([x, *pooled], dim=1)


class PSPNet3D(SegmentationNetwork):
    """PSPNet 3D: dilated ResNet50-3D with 3D pyramid pooling.

    From "Attention Mechanism, Linked Networks, and Pyramid Pooling Enabled 3D Biomedical Image
    Segmentation" (SNPD 2022), after Zhao et al., "Pyramid Scene Parsing Network" (CVPR 2017).
    Backbone: 7x7x7 stride-2 stem, max-pool, four bottleneck stages of ``blocks`` blocks
    (ResNet50: ``(3, 4, 6, 3)``); stages 3 and 4 replace their stride by dilation 2 and 4, so
    the output stride is 8. Head: pyramid pooling with ``bins`` (1, 2, 3, 6), a 3x3x3 fusion
    convolution, dropout, a 1x1x1 classifier and trilinear upsampling to the input size.
    With ``aux_head=True`` the network also returns, in training mode only, the logits of an
    auxiliary classifier on stage 3 for deep supervision: ``(logits, aux_logits)``.

    Deliberate differences from the published code:

    * All modules it uses are imported (the published file missed an import and did not run).
    * ``in_channels`` and the widths are arguments; the forward returns logits (no softmax).
    * The pyramid branches have no normalisation (see ``PyramidPooling3D``).
    * Inputs of any size >= ``min_input_size`` (16) work: they are zero-padded to a multiple of 8
      and the logits are cropped back.

    Args:
        in_channels: number of input channels (MRI modalities). Defaults to 4.
        out_channels: number of output channels (classes or regions). Defaults to 3.
        features: bottleneck widths of the four stages (outputs are 4x wider; the stem uses the
            first). Defaults to the light preset ``(16, 32, 64, 128)``; the paper used
            ResNet50's ``(64, 128, 256, 512)``.
        blocks: bottlenecks per stage. Defaults to ``(3, 4, 6, 3)`` (ResNet50).
        bins: pyramid pooling bin counts per axis. Defaults to ``(1, 2, 3, 6)``.
        aux_head: add the stage-3 auxiliary classifier. Defaults to False.
        norm: ``"batch"``, ``"instance"`` or ``"group"``. Defaults to ``"batch"``.
        act: activation name, one of ``tumorseg.models.layers.ACTS``. Defaults to ``"relu"``.
        dropout: dropout probability after the fusion convolution (and in the auxiliary head).
            Defaults to 0.0; PSPNet used 0.1.
        norm_groups: groups for ``norm="group"``. Defaults to 8.
        full_resolution: replace the 1x1x1 classifier and the x8 trilinear upsampling with a
            ``FullResolutionHead`` that decodes the fused pyramid features with the stem
            convolution's 1/2-resolution features and the input's intensities (DeepLabv3+'s
            remedy for the coarse output of a dilated backbone). Defaults to False
            (as published).
    """

    presets = {"light": {"features": (16, 32, 64, 128)}, "paper": {"features": (64, 128, 256, 512)}}
    stride = 8

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        *,
        features: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (3, 4, 6, 3),
        bins: Sequence[int] = (1, 2, 3, 6),
        aux_head: bool = False,
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
        bins = check_int_sequence("bins", bins)
        check_flags(aux_head=aux_head, full_resolution=full_resolution)
        self.in_channels, self.out_channels, self.features = in_channels, out_channels, feats
        self.aux_head, self.full_resolution = aux_head, full_resolution
        kw = dict(norm=norm, act=act, norm_groups=norm_groups)

        self.stem = resnet_stem(in_channels, feats[0], **kw)
        # (stride, dilation) per stage; as torchvision's replace_stride_with_dilation, the first
        # block of a dilated stage keeps the previous stage's dilation
        schedule = ((1, 1), (2, 1), (1, 2), (1, 4))
        self.stages = nn.ModuleList()
        in_ch, prev_dilation = feats[0], 1
        for planes, n, (stride, dilation) in zip(feats, blocks, schedule):
            layers = [Bottleneck(in_ch, planes, stride=stride, dilation=prev_dilation, **kw)]
            in_ch = planes * Bottleneck.expansion
            layers += [Bottleneck(in_ch, planes, stride=1, dilation=dilation, **kw) for _ in range(n - 1)]
            self.stages.append(nn.Sequential(*layers))
            prev_dilation = dilation

        top = feats[3] * Bottleneck.expansion
        self.ppm = PyramidPooling3D(top, bins, max(top // len(bins), 1), act)
        fused = max(top // 4, 1)
        self.head = nn.Sequential(
            conv_norm_act(self.ppm.out_channels, fused, 3, **kw),
            dropout3d(dropout),
            nn.Identity() if full_resolution else nn.Conv3d(fused, out_channels, 1),
        )
        if full_resolution:
            self.decoder = FullResolutionHead(fused, feats[0], in_channels, feats[0], out_channels, **kw)
        if aux_head:
            mid_in = feats[2] * Bottleneck.expansion
            mid = max(mid_in // 4, 1)
            self.aux = nn.Sequential(
                conv_norm_act(mid_in, mid, 3, **kw),
                dropout3d(dropout),
                nn.Conv3d(mid, out_channels, 1),
            )
        init_weights(self)

    def forward_padded(self, x: torch.Tensor):
        size = x.shape[2:]
        half = self.stem[0](x)
        y = self.stages[0](self.stem[1](half))
        y = self.stages[1](y)
        stage3 = self.stages[2](y)
        y = self.stages[3](stage3)
        if self.full_resolution:
            logits = self.decoder(self.head(self.ppm(y)), half, x)
        else:
            logits = resize_trilinear(self.head(self.ppm(y)), size)
        if self.aux_head and self.training:
            aux = resize_trilinear(self.aux(stage3), size)
            return logits, aux
        return logits
