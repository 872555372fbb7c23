"""The three networks of the paper and a registry to build them by name and preset."""

from __future__ import annotations

from torch import nn

from tumorseg.models.arunet import ARUNet3D
from tumorseg.models.layers import ACTS, NORMS, SegmentationNetwork
from tumorseg.models.linknet import LinkNet3D
from tumorseg.models.pspnet import PSPNet3D

MODELS: dict[str, type[SegmentationNetwork]] = {
    "arunet3d": ARUNet3D,
    "linknet3d": LinkNet3D,
    "pspnet3d": PSPNet3D,
}
PRESETS = ("light", "paper")


def build_model(name: str, preset: str | None = "light", **kwargs) -> SegmentationNetwork:
    """Build a registered network.

    Args:
        name: one of ``MODELS`` (``"arunet3d"``, ``"linknet3d"``, ``"pspnet3d"``).
        preset: ``"light"`` or ``"paper"`` widths, or None for the class defaults.
            Defaults to ``"light"``.
        **kwargs: constructor arguments; they override the preset.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model name {name!r}; choose one of {sorted(MODELS)}.")
    cls = MODELS[name]
    args: dict = {}
    if preset is not None:
        if preset not in cls.presets:
            raise ValueError(f"Unknown preset {preset!r} for {name}; choose one of {sorted(cls.presets)}.")
        args.update(cls.presets[preset])
    args.update(kwargs)
    return cls(**args)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "ACTS",
    "MODELS",
    "NORMS",
    "PRESETS",
    "ARUNet3D",
    "LinkNet3D",
    "PSPNet3D",
    "SegmentationNetwork",
    "build_model",
    "count_parameters",
]
