#!/usr/bin/env bash
# The paper recipe against the modern recipe, for each network, on the same synthetic phantoms, the
# same split (fold 0 of 5) and the same number of epochs, on a CPU. Both are then scored the same way:
# their validation cases segmented in the source geometry, each recipe with its own test-time settings,
# and evaluated with the BraTS metrics, with the three-network ensemble of the modern recipe.
# Reduced for a CPU: light widths, 20 phantoms of 160x160x155, 10 epochs (EPOCHS=...), and for the
# modern recipe 64^3 patches (128^3 on a GPU), a 1-epoch warm-up (5 of 300 on a GPU) and 32-bit.
#   bash experiments/brats/run_synthetic.sh [OUT]     (OUT: outputs/compare; about an hour on 2 cores)
set -euo pipefail
out=${1:-outputs/compare}
epochs=${EPOCHS:-10}
EPOCHS=$epochs bash experiments/paper/run_synthetic.sh "$out/paper"
python train.py -m experiment=brats_arunet3d,brats_linknet3d,brats_pspnet3d \
  data=synthetic data.cases=20 'data.shape=[160,160,155]' data.split=kfold data.num_folds=5 data.fold=0 \
  data.num_workers=1 data.val_workers=0 model.network.preset=light trainer=cpu trainer.max_epochs="$epochs" \
  data.patch_size=64 model.scheduler.warmup_epochs=1 trainer.precision=32-true \
  hydra.sweep.dir="$out/modern"
python experiments/evaluate_runs.py "$out/paper" "$out/modern" --ensemble "modern ensemble=brats_*" \
  --out experiments/brats/results/synthetic --workers 1 \
  --title "Paper vs modern recipe on synthetic phantoms (light widths, $epochs epochs, CPU)"
