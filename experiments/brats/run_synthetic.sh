#!/usr/bin/env bash
# The paper recipe against the modern recipe, for each network, on the same synthetic phantoms (24 of
# 96x96x155), the same split (fold 0 of 4) and light widths, each scaled to converge on a 2-core CPU:
# the paper's as experiment=paper_cpu_<net> (experiments/paper/run_synthetic.sh: FLAIR, slices 40-103
# resized, 40 epochs, learning rate 1e-3), the modern one as experiment=brats_<net> at the quick
# start's CPU scale (32-bit, the network's smallest patch, 14 epochs, AdamW at 1e-2 with a 1-epoch
# warm-up; 128^3, bf16, 300 epochs at 3e-4 on a GPU). Both are then scored alike: their validation
# cases segmented in the source geometry with the same test-time settings (no mirroring, no ET
# relabelling, for the CPU's sake and because 500 voxels is a BraTS-resolution threshold) and
# evaluated with the BraTS metrics, with the three-network ensemble of the modern recipe.
#   bash experiments/brats/run_synthetic.sh [OUT]     (OUT: outputs/compare; about 80 minutes on 2 cores)
set -euo pipefail
out=${1:-outputs/compare}
bash experiments/paper/run_synthetic.sh "$out/paper"
python train.py -m experiment=brats_arunet3d,brats_linknet3d,brats_pspnet3d \
  data=synthetic data.cases=24 'data.shape=[96,96,155]' data.split=kfold data.num_folds=4 data.fold=0 \
  data.patch_size=auto data.batch_size=auto data.samples_per_volume=auto data.num_workers=1 data.val_workers=0 \
  model.network.preset=light trainer=cpu trainer.precision=32-true trainer.max_epochs=14 \
  trainer.check_val_every_n_epoch=2 model.optimizer.lr=1e-2 model.scheduler.warmup_epochs=1 \
  hydra.sweep.dir="$out/modern"
python experiments/evaluate_runs.py "$out/paper" "$out/modern" --ensemble "modern ensemble=brats_*" \
  --mirror off --et-min-voxels 0 --out experiments/brats/results/synthetic --workers 1 \
  --title "Paper vs modern recipe on synthetic phantoms, each scaled to converge on a CPU"
