#!/usr/bin/env bash
# The three paper experiments in one multirun on synthetic phantoms (CPU, reduced: light widths,
# 6 epochs, 12 phantoms of 240x240x155 with a 5-fold split instead of the 250-case split), then the
# figures and the table in experiments/paper/results/synthetic/. On real BraTS 2020, the same
# experiments run with `python train.py -m experiment=paper_arunet3d,paper_linknet3d,paper_pspnet3d
# data.root=/data/MICCAI_BraTS2020_TrainingData` (see experiments/paper/README.md).
set -euo pipefail
sweep=${1:-outputs/paper_synthetic}
python train.py -m experiment=paper_arunet3d,paper_linknet3d,paper_pspnet3d \
  data=synthetic data.cases=12 'data.shape=[240,240,155]' data.split=kfold data.num_folds=5 \
  data.num_workers=1 data.val_workers=0 model.network.preset=light trainer=cpu trainer.max_epochs=6 \
  hydra.sweep.dir="$sweep"
python experiments/paper/plot.py "$sweep"/0 "$sweep"/1 "$sweep"/2 --out experiments/paper/results/synthetic \
  --title "Paper setup on synthetic phantoms (light widths, 6 epochs, CPU)"
