#!/usr/bin/env bash
# GPU check of trainer.deterministic=true: each network trains twice with the same command (quick-start
# phantoms, one short epoch and one validation, bf16) and the two runs must log the same metrics and
# save bit-identical weights. Prints one table row per network; exits 1 if any pair differs.
# Usage, from the repository root on a machine with one CUDA GPU:
#   bash experiments/gpu_determinism_check.sh [OUT_DIR]
# CPU dry run: TRAINER=cpu bash experiments/gpu_determinism_check.sh /tmp/det
set -euo pipefail
out=${1:-outputs/gpu_determinism}
TRAINER=${TRAINER:-gpu} BATCHES=${BATCHES:-6}
mkdir -p "$out"
source experiments/gpu_env.sh
for model in arunet3d linknet3d pspnet3d; do
  for run in a b; do
    python train.py model="$model" trainer="$TRAINER" trainer.deterministic=true trainer.max_epochs=1 \
      trainer.check_val_every_n_epoch=1 trainer.limit_train_batches="$BATCHES" trainer.limit_val_batches=2 \
      trainer.enable_progress_bar=false "~callbacks.progress_bar" logger=csv data.cases=8 data.num_folds=4 paths.data_dir="$out/data" \
      hydra.run.dir="$out/${model}_$run" > "$out/${model}_$run.log" 2>&1 || { tail -20 "$out/${model}_$run.log"; exit 2; }
  done
done
python - "$out" <<'PY'
import csv, sys
from pathlib import Path
import torch
out, failed = Path(sys.argv[1]), False
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
print(f"\ndevice: {name}, torch {torch.__version__}, trainer.deterministic=true")
print("| network | metrics equal | weights equal | val/dice_mean | tensors |")
print("|---|---|---|---:|---:|")
for model in ("arunet3d", "linknet3d", "pspnet3d"):
    runs = [out / f"{model}_{r}" for r in "ab"]
    rows = [[{k: v for k, v in row.items() if k not in ("train/patches_per_s", "time/elapsed_s")}
             for row in csv.DictReader(open(r / "csv" / "metrics.csv"))] for r in runs]
    sd = [torch.load(r / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"] for r in runs]
    same_w = sd[0].keys() == sd[1].keys() and all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])
    dice = [r["val/dice_mean"] for r in rows[0] if r.get("val/dice_mean")][-1]
    failed |= not (rows[0] == rows[1] and same_w)
    print(f"| {model} | {rows[0] == rows[1]} | {same_w} | {float(dice):.4f} | {len(sd[0])} |")
sys.exit(1 if failed else 0)
PY
