#!/usr/bin/env bash
# The paper's three experiments at a scale a 2-core CPU converges on (experiment=paper_cpu_<net>: the
# published protocol on 24 synthetic phantoms of 96x96x155, slices resized to 32x32 or 64x64, light
# widths, 40 epochs, learning rate 1e-3; conf/scale/paper_cpu.yaml), one after another, then
# the figures and the table in experiments/paper/results/synthetic/. About 40 minutes on 2 cores.
# On real BraTS 2020 the experiments run unscaled with
#   python train.py -m experiment=paper_arunet3d,paper_linknet3d,paper_pspnet3d data.root=/data/MICCAI_BraTS2020_TrainingData
# (see experiments/paper/README.md).
#   bash experiments/paper/run_synthetic.sh [SWEEP_DIR] [OVERRIDES...]     (SWEEP_DIR: outputs/compare/paper)
set -euo pipefail
sweep=${1:-outputs/compare/paper}
shift || true
python train.py -m experiment=paper_cpu_arunet3d,paper_cpu_linknet3d,paper_cpu_pspnet3d \
  hydra.sweep.dir="$sweep" "$@"
python experiments/paper/plot.py "$sweep"/0 "$sweep"/1 "$sweep"/2 --out experiments/paper/results/synthetic \
  --title "Paper protocol, scaled for a CPU (synthetic phantoms, FLAIR 32x32/64x64 x 64 slices, 40 epochs)"
