#!/usr/bin/env bash
# 5-fold cross-validation of the modern recipe for the three networks on real data: 15 runs in one
# multirun (3 networks x 5 folds), then every run scored on its fold's validation cases with its
# test-time settings (8 mirrorings, small ET relabelled NCR), and the three-network ensemble per fold.
#   bash experiments/brats/run_cv.sh DATA_ROOT [OUT] [HYDRA_OVERRIDE ...]
#   bash experiments/brats/run_cv.sh /data/BraTS2021_Training_Data outputs/brats_cv trainer.devices=4
#   bash experiments/brats/run_cv.sh /data/BraTS2021_Training_Data outputs/brats_cv hydra/launcher=submitit_slurm
# A killed cross-validation continues in a new folder, each fold from its own newest last.ckpt:
#   RESUME=outputs/brats_cv bash experiments/brats/run_cv.sh /data/BraTS2021_Training_Data outputs/brats_cv2
# and is scored over both folders (per network and fold, the run with the newest checkpoint counts).
set -euo pipefail
root=${1:?usage: bash experiments/brats/run_cv.sh DATA_ROOT [OUT] [HYDRA_OVERRIDE ...]}
out=${2:-outputs/brats_cv}
shift $(( $# < 2 ? $# : 2 ))
python train.py -m experiment=brats_arunet3d,brats_linknet3d,brats_pspnet3d data.fold=0,1,2,3,4 data.num_folds=5 \
  data.root="$root" hydra.sweep.dir="$out" ${RESUME:+resume="$RESUME"} "$@"
python experiments/evaluate_runs.py "$out" ${RESUME:+"$RESUME"} --ensemble "ensemble=brats_*" --out "$out/results" \
  --title "Modern recipe, 5-fold cross-validation"
