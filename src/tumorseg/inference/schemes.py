"""Label schemes: what the network's output channels mean and how they become a label map.

``regions``: three sigmoid channels for the nested regions WT, TC, ET (the BraTS 2020 winner's
setup; each voxel may belong to several). ``softmax4``: four softmax classes background, NCR, ED,
ET (the paper's setup). Label maps here are the internal classes of ``tumorseg.labels``
(0 background, 1 NCR, 2 ED, 3 ET).
"""

from __future__ import annotations

import torch

from tumorseg.labels import REGION_CLASSES, REGIONS

SCHEMES = ("regions", "softmax4")


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown label scheme {scheme!r}; choose one of {list(SCHEMES)}.")
    return scheme


def out_channels(scheme: str) -> int:
    """Number of network output channels for ``scheme``."""
    return len(REGIONS) if check_scheme(scheme) == "regions" else 4


def label_regions(label: torch.Tensor) -> torch.Tensor:
    """Internal label map (B, *S) -> boolean region masks (B, 3, *S) in ``REGIONS`` order."""
    label = label.long()
    masks = [torch.zeros_like(label, dtype=torch.bool) for _ in REGIONS]
    for mask, region in zip(masks, REGIONS):
        for cls in REGION_CLASSES[region]:
            mask |= label == cls
    return torch.stack(masks, dim=1)


def targets(label: torch.Tensor, scheme: str) -> torch.Tensor:
    """Training target for ``scheme``: float region masks (B, 3, *S) or class indices (B, 1, *S)."""
    if check_scheme(scheme) == "regions":
        return label_regions(label).float()
    return label.long().unsqueeze(1)


def probabilities(logits: torch.Tensor, scheme: str) -> torch.Tensor:
    """Sigmoid (regions) or softmax over channels (softmax4), in float32."""
    logits = logits.float()
    return torch.sigmoid(logits) if check_scheme(scheme) == "regions" else torch.softmax(logits, dim=1)


def to_labels(probs: torch.Tensor, scheme: str, threshold: float = 0.5) -> torch.Tensor:
    """Probabilities (B, C, *S) -> internal label map (B, *S), uint8.

    Regions are painted from the outside in (WT as ED, then TC as NCR, then ET), so a voxel gets
    the innermost region it belongs to, as nnU-Net's region-based BraTS models convert them.
    """
    if check_scheme(scheme) == "softmax4":
        return probs.argmax(dim=1).to(torch.uint8)
    on = probs > threshold
    label = torch.zeros(probs.shape[:1] + probs.shape[2:], dtype=torch.uint8, device=probs.device)
    label[on[:, 0]] = 2
    label[on[:, 1]] = 1
    label[on[:, 2]] = 3
    return label
