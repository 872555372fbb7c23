#!/usr/bin/env bash
# The paper's three experiments at CPU scale on real scans: experiment=paper_cpu_<net> data=brats on the
# 18 BraTS 2018 exams with expert labels (../shared/data/brats18), fold 0 of the committed 3-fold split
# (experiments/brats_cpu/splits_brats18.json: 12 train, 6 validate), one network after another, then the
# paper's figures and the table in experiments/paper/results/real/. The protocol is the phantoms' (FLAIR,
# slices 40-103 resized to 32x32 or 64x64, light widths, RMSprop at 1e-3) with the epochs set for real
# scans (conf/experiment_data/paper_cpu_<net>_brats.yaml: 60, 150 and 100), each run about 30 minutes at
# most on 2 free cores.
#   bash experiments/paper/run_real.sh [DATA_ROOT] [OUT] [HYDRA_OVERRIDE ...]
#   FOLD=1 RESULTS=outputs/paper_real_fold1/results bash experiments/paper/run_real.sh ../shared/data/brats18 outputs/paper_real_fold1
# DATA_ROOT: ../shared/data/brats18; OUT: outputs/paper_real, the runs of one configuration (another fold
# or other overrides: another OUT); FOLD: the fold of the split (0); RESULTS: where the figures and the
# table go (experiments/paper/results/real). A killed run continues when the same command is run again:
# each network resumes from its newest checkpoints/last.ckpt under OUT (resume=true), and the networks
# that finished (OUT/paper_cpu_<net>.done names their run directory) are not trained again.
set -euo pipefail
root=${1:-../shared/data/brats18}
out=${2:-outputs/paper_real}
shift $(( $# < 2 ? $# : 2 ))
fold=${FOLD:-0}
results=${RESULTS:-experiments/paper/results/real}

# OUT/<experiment>.done: the newest run directory of a finished training (a resumed run's lists the
# metrics of the runs it continues, so the figures show every epoch)
finished() { [[ -s "$out/$1.done" ]]; }
record() { ls -dt "$out/$1"/runs/*/ | sed -n '1{s:/$::;p;}' > "$out/$1.done"; }

if ! finished paper_cpu_arunet3d; then
  python train.py experiment=paper_cpu_arunet3d data=brats data.root="$root" \
    data.split_file=experiments/brats_cpu/splits_brats18.json data.fold="$fold" paths.log_dir="$out" resume=true "$@"
  record paper_cpu_arunet3d
fi
if ! finished paper_cpu_linknet3d; then
  python train.py experiment=paper_cpu_linknet3d data=brats data.root="$root" \
    data.split_file=experiments/brats_cpu/splits_brats18.json data.fold="$fold" paths.log_dir="$out" resume=true "$@"
  record paper_cpu_linknet3d
fi
if ! finished paper_cpu_pspnet3d; then
  python train.py experiment=paper_cpu_pspnet3d data=brats data.root="$root" \
    data.split_file=experiments/brats_cpu/splits_brats18.json data.fold="$fold" paths.log_dir="$out" resume=true "$@"
  record paper_cpu_pspnet3d
fi
arunet=$(cat "$out/paper_cpu_arunet3d.done")
linknet=$(cat "$out/paper_cpu_linknet3d.done")
pspnet=$(cat "$out/paper_cpu_pspnet3d.done")
python experiments/paper/plot.py "$arunet" "$linknet" "$pspnet" --out "$results" \
  --title "Paper protocol, scaled for a CPU, on 18 real BraTS 2018 exams (FLAIR, fold $fold: 12 train, 6 validate)"
