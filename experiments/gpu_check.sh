#!/usr/bin/env bash
# GPU check of the benchmarks, in one run:
# 1. the input pipeline on 4 synthetic 240x240x155 cases, with the augmentation of a 2x4x128^3 batch
#    next to a bf16 training step of LinkNet 3D (paper preset) on this card;
# 2. each network at the paper preset, 2x4x128^3, every mode including torch.compile, side by side,
#    then one table with each mode's share of this card's measured dense bf16 matmul rate (last).
# Usage, from the repository root on a machine with one CUDA GPU: bash experiments/gpu_check.sh [OUT_DIR]
# Where torchio, nibabel or hydra are missing, wheels in .whl/ (../shared/tools/device-wheels.sh) are used.
set -euo pipefail
out=${1:-outputs/benchmark}
mkdir -p "$out"
source experiments/gpu_env.sh

python experiments/benchmark.py data --device cuda --samples-per-volume 1 --work-dir "$out/data" --jsonl "$out/data.jsonl"

peak=$(python - <<'PY'
import time
import torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn_like(a)
for _ in range(3):
    a @ b
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(10):
    a @ b
torch.cuda.synchronize()
print(f"{10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12:.0f}")
PY
)
for model in arunet3d linknet3d pspnet3d; do
  python experiments/benchmark.py step --model "$model" --preset paper --patch 128 --batch 2 --compile \
    --device cuda --jsonl "$out/step.jsonl"
done
echo "dense bf16 matmul (8192^3) on this card: $peak TFLOP/s"
python experiments/benchmark.py report "$out/step.jsonl" --peak-tflops "$peak"
