"""The Dice a network can reach at most when it predicts at 1/s of the input's resolution.

    python experiments/output_stride/resolution_ceiling.py data/synthetic/32x96x96x64-seed0-v2
    python experiments/output_stride/resolution_ceiling.py /data/BraTS2021_Training_Data --strides 1 2 4 8 --max-cases 50

For each case and region (WT, TC, ET) the reference mask is averaged over s x s x s blocks (the
best a prediction at output stride s can know), upsampled back trilinearly and thresholded at
0.5, as a network whose logits are upsampled trilinearly by s draws its output (PSPNet 3D as
published: s = 8). The Dice of that mask against the reference is the ceiling: a thin structure
(an enhancing rim of 1-2 voxels) vanishes when s is larger than its thickness, whatever the
training. Prints the mean per region and stride, and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tumorseg.cli import positive_int
from tumorseg.data.layouts import discover
from tumorseg.data.reading import load_case
from tumorseg.labels import to_regions
from tumorseg.training.metrics import dice_per_case


def ceiling(label: np.ndarray, stride: int) -> torch.Tensor:
    """Internal label map -> the label map a stride-``stride`` prediction of the regions can draw at
    best, painted WT, then TC, then ET, as region outputs are turned into labels."""
    t = torch.from_numpy(to_regions(label).astype(np.float32))[None]
    size = t.shape[2:]
    pad = [(-n) % stride for n in size]
    low = F.avg_pool3d(F.pad(t, (0, pad[2], 0, pad[1], 0, pad[0])), stride)
    up = F.interpolate(low, scale_factor=stride, mode="trilinear", align_corners=False)
    wt, tc, et = up[0, :, : size[0], : size[1], : size[2]] > 0.5
    drawn = torch.zeros(size, dtype=torch.long)
    drawn[wt], drawn[tc], drawn[et] = 2, 1, 3  # ED, NCR, ET
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a dataset root in any layout tumorseg reads")
    parser.add_argument("--strides", nargs="+", type=positive_int, default=[1, 2, 4, 8])
    parser.add_argument("--max-cases", type=positive_int, default=None, help="only the first N cases")
    args = parser.parse_args(argv)
    dataset = discover(args.root)
    cases = [c for c in dataset.cases if c.label is not None][: args.max_cases]
    if not cases:
        print(f"{args.root}: no case with a label; the ceiling needs reference labels.", file=sys.stderr)
        return 2
    scores = {s: [] for s in args.strides}
    for case in cases:
        label = load_case(case).label
        for s in args.strides:
            drawn = ceiling(label, s)
            scores[s].append(dice_per_case(drawn[None], torch.from_numpy(label.astype(np.int64))[None])[0].tolist())
    print(f"Dice ceiling at output stride s, mean over {len(cases)} case(s) of {args.root}")
    print("| stride | WT | TC | ET | mean |\n|---:|---:|---:|---:|---:|")
    for s, rows in scores.items():
        m = np.mean(rows, axis=0)
        print(f"| {s} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | {m.mean():.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
