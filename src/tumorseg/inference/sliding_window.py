"""Sliding-window inference over whole cases: the one path used by validation, test and prediction.

Windows are blended with a Gaussian importance map (MONAI's ``sliding_window_inference``, which
stitches on the device), optionally averaged over the 8 mirrorings of the three axes
(test-time augmentation as nnU-Net and the BraTS winners use it). Logits are blended and
averaged, as nnU-Net does; ``tumorseg.inference.schemes`` turns them into probabilities and labels.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from tumorseg.sizes import DEFAULT_PATCH_SIZE, size3

MIRROR_AXES = (2, 3, 4)


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window settings.

    Args:
        roi_size: window edge (int) or three edges, in voxels. Defaults to 128.
        overlap: fraction of a window shared with its neighbour along each axis, in [0, 1).
            Defaults to 0.5.
        sw_batch_size: windows run through the network at once. Defaults to 2.
        mode: window blending, ``"gaussian"`` or ``"constant"``. Defaults to ``"gaussian"``.
        mirror: average over the 8 flips of the three spatial axes. Defaults to False.
        bf16: run the network under bfloat16 autocast (on CUDA, or on CPUs that support it).
            Defaults to False.
    """

    roi_size: int | tuple[int, int, int] = DEFAULT_PATCH_SIZE
    overlap: float = 0.5
    sw_batch_size: int = 2
    mode: str = "gaussian"
    mirror: bool = False
    bf16: bool = False

    def __post_init__(self):
        object.__setattr__(self, "roi_size", size3(self.roi_size, "roi_size"))
        if not 0 <= self.overlap < 1:
            raise ValueError(f"`overlap` must lie in [0, 1), got {self.overlap!r}.")
        if isinstance(self.sw_batch_size, bool) or not isinstance(self.sw_batch_size, int) or self.sw_batch_size < 1:
            raise ValueError(f"`sw_batch_size` must be a positive integer, got {self.sw_batch_size!r}.")
        if self.mode not in ("gaussian", "constant"):
            raise ValueError(f"`mode` must be 'gaussian' or 'constant', got {self.mode!r}.")


def mirror_sets(mirror: bool) -> list[tuple[int, ...]]:
    """The flips to average: none, or all 8 subsets of the spatial axes."""
    if not mirror:
        return [()]
    return [axes for n in range(len(MIRROR_AXES) + 1) for axes in itertools.combinations(MIRROR_AXES, n)]


@torch.no_grad()
def sliding_window_logits(
    network: nn.Module,
    image: torch.Tensor,
    config: InferenceConfig | None = None,
    *,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Blended logits of ``network`` over a whole image.

    Args:
        network: a segmentation network returning logits (B, C, *S) in eval mode.
        image: (B, M, X, Y, Z) float image of any size; windows larger than the image are padded.
        config: ``InferenceConfig``. Defaults to ``InferenceConfig()``.
        sw_device: where windows run. Defaults to the image's device.
        device: where the output is stitched. Defaults to the image's device.
        progress: show a progress bar over windows. Defaults to False.

    Returns:
        float32 logits (B, C, X, Y, Z) on ``device``.
    """
    config = config or InferenceConfig()
    if image.ndim != 5:
        raise ValueError(f"`image` must be (batch, modalities, x, y, z), got shape {tuple(image.shape)}.")
    run_on = torch.device(sw_device) if sw_device is not None else image.device
    autocast = torch.autocast(run_on.type, dtype=torch.bfloat16) if config.bf16 else contextlib.nullcontext()

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        with autocast:
            out = network(windows)
        return out.float()

    total = None
    flips = mirror_sets(config.mirror)
    for axes in flips:
        flipped = image.flip(axes) if axes else image
        logits = sliding_window_inference(
            flipped,
            roi_size=config.roi_size,
            sw_batch_size=config.sw_batch_size,
            predictor=predictor,
            overlap=config.overlap,
            mode=config.mode,
            sw_device=sw_device,
            device=device,
            progress=progress,
        )
        logits = torch.as_tensor(logits)  # a plain tensor, not a MONAI MetaTensor
        if axes:
            logits = logits.flip(axes)
        total = logits if total is None else total.add_(logits)
    return total / len(flips) if len(flips) > 1 else total
