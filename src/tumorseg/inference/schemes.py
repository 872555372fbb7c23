"""Label schemes: what the network's output channels mean and how they become a label map.

``regions``: three sigmoid channels for the nested regions WT, TC, ET (the BraTS 2020 winner's
setup; each voxel may belong to several). ``softmax4``: four softmax classes background, NCR, ED,
ET (the paper's setup). Label maps here are the internal classes of ``tumorseg.labels``
(0 background, 1 NCR, 2 ED, 3 ET), which also owns the region masks and the painting order.

Each function takes the label set (``tumorseg.labels.LabelSet``, default BraTS 2023) as well:
for BraTS 2024 ``regions`` has four channels (WT, TC, ET and the resection cavity RC) and
``softmax4``, whose name checkpoints keep, five classes.
"""

from __future__ import annotations

import torch

from tumorseg.labels import BRATS2023, LabelSet, label_set, paint_regions, to_channels

SCHEMES = ("regions", "softmax4")


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown label scheme {scheme!r}; choose one of {list(SCHEMES)}.")
    return scheme


def out_channels(scheme: str, labels: LabelSet | str = BRATS2023) -> int:
    """Number of network output channels for ``scheme`` and the label set ``labels``."""
    labels = label_set(labels)
    return len(labels.channels) if check_scheme(scheme) == "regions" else len(labels.classes)


def targets(label: torch.Tensor, scheme: str, labels: LabelSet | str = BRATS2023) -> torch.Tensor:
    """Training target for ``scheme``: float masks of the channels (B, 3, *S) or class indices (B, 1, *S)."""
    if check_scheme(scheme) == "regions":
        return to_channels(label, axis=1, label_set=labels).float()
    return label.long().unsqueeze(1)


def probabilities(logits: torch.Tensor, scheme: str) -> torch.Tensor:
    """Sigmoid (regions) or softmax over channels (softmax4), in float32."""
    logits = logits.float()
    return torch.sigmoid(logits) if check_scheme(scheme) == "regions" else torch.softmax(logits, dim=1)


def to_labels(
    probs: torch.Tensor, scheme: str, threshold: float = 0.5, labels: LabelSet | str = BRATS2023
) -> torch.Tensor:
    """Probabilities (B, C, *S) -> internal label map (B, *S), uint8.

    Regions are painted with ``tumorseg.labels.paint_regions``: a voxel gets the class of the
    innermost region it belongs to, as nnU-Net's region-based BraTS models convert them.
    """
    if check_scheme(scheme) == "softmax4":
        return probs.argmax(dim=1).to(torch.uint8)
    return paint_regions(probs > threshold, axis=1, label_set=labels)
