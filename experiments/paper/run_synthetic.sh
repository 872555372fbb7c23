#!/usr/bin/env bash
# The three paper experiments in one multirun on synthetic phantoms on a CPU, then the figures and the
# table in experiments/paper/results/synthetic/. Reduced so that it runs in about 15 minutes on 2 cores:
# light widths, 10 epochs (EPOCHS=...), 20 phantoms of 160x160x155 with fold 0 of a 5-fold split instead
# of the 250-case split. experiments/brats/run_synthetic.sh trains the modern recipe on the same data.
# On real BraTS 2020 the experiments run unreduced with
#   python train.py -m experiment=paper_arunet3d,paper_linknet3d,paper_pspnet3d data.root=/data/MICCAI_BraTS2020_TrainingData
# (see experiments/paper/README.md).
#   bash experiments/paper/run_synthetic.sh [SWEEP_DIR]     (SWEEP_DIR: outputs/compare/paper)
set -euo pipefail
sweep=${1:-outputs/compare/paper}
epochs=${EPOCHS:-10}
python train.py -m experiment=paper_arunet3d,paper_linknet3d,paper_pspnet3d \
  data=synthetic data.cases=20 'data.shape=[160,160,155]' data.split=kfold data.num_folds=5 data.fold=0 \
  data.num_workers=1 data.val_workers=0 model.network.preset=light trainer=cpu trainer.max_epochs="$epochs" \
  hydra.sweep.dir="$sweep"
python experiments/paper/plot.py "$sweep"/0 "$sweep"/1 "$sweep"/2 --out experiments/paper/results/synthetic \
  --title "Paper setup on synthetic phantoms (light widths, $epochs epochs, CPU)"
