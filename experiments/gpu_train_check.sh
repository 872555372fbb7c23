#!/usr/bin/env bash
# GPU check of training: for each network, one epoch of its brats_<net> recipe (4 modalities,
# regions, 128^3 patches, batch 2, bf16, paper widths) on full-size synthetic phantoms with the CSV
# logger, next to the model-only step benchmark of the same network and settings on this card.
# Then predict.py with each one-epoch checkpoint on one full-size case, next to the infer benchmark
# (MONAI vs TorchIO sliding window, overlap 0.5, no mirroring) of the same network on this card.
# Prints last: training patches/s end to end vs model only, and predict.py's time per case vs the
# pure sliding-window time, then the expected time per epoch of the modern recipe on this card.
# Usage, from the repository root on a machine with one CUDA GPU:
#   bash experiments/gpu_train_check.sh [OUT_DIR]
# Where torchio, nibabel, hydra or monai are missing, wheels in .whl/ are used
# (../shared/tools/device-wheels.sh, plus `pip download --no-deps monai -d .whl`).
# A CPU dry run of the whole script (minutes, tiny sizes): DEVICE=cpu TRAINER=cpu PRESET=light
#   SHAPE="80 72 64" PATCH=64 CASES=6 SPV=2 WARMUP=1 REPEATS=1 MODE=fp32 PRECISION=32-true \
#   bash experiments/gpu_train_check.sh /tmp/dry      (fp32: bf16 is emulated, so very slow, on CPUs without it)
set -euo pipefail
out=${1:-outputs/gpu_train}
DEVICE=${DEVICE:-cuda} TRAINER=${TRAINER:-gpu} PRESET=${PRESET:-paper} SHAPE=${SHAPE:-240 240 155}
PATCH=${PATCH:-128} CASES=${CASES:-12} SPV=${SPV:-8} WARMUP=${WARMUP:-10} REPEATS=${REPEATS:-3}
MODE=${MODE:-bf16} PRECISION=${PRECISION:-bf16-mixed}
export MODE
infer_bf16=(); [[ $MODE == fp32 ]] || infer_bf16=(--bf16)
mkdir -p "$out"
source experiments/gpu_env.sh
workers=$(( $(nproc) > 12 ? 12 : $(nproc) ))
read -r -a shape <<< "$SHAPE"

python -m tumorseg.phantoms "$out/phantoms" --cases "$CASES" --shape "${shape[@]}" --workers "$workers"
for model in arunet3d linknet3d pspnet3d; do
  python experiments/benchmark.py step --model "$model" --preset "$PRESET" --patch "$PATCH" --batch 2 --out-channels 3 \
    --modes "$MODE" --device "$DEVICE" --jsonl "$out/step.jsonl"
  python train.py experiment=brats_$model trainer="$TRAINER" model.network.preset="$PRESET" data.patch_size="$PATCH" \
    data.root="$out/phantoms" data.cache_dir="$out/cache" data.num_workers="$workers" data.samples_per_volume="$SPV" \
    data.queue_length=32 trainer.max_epochs=1 trainer.limit_val_batches=1 trainer.precision="$PRECISION" logger=csv \
    callbacks.throughput.warmup_steps="$WARMUP" hydra.run.dir="$out/train_$model"
  python experiments/benchmark.py infer --model "$model" --preset "$PRESET" --shape "${shape[@]}" --roi "$PATCH" \
    --overlap 0.5 --sw-batch 2 "${infer_bf16[@]}" --device "$DEVICE" --repeats "$REPEATS" --jsonl "$out/infer.jsonl"
  python predict.py ckpt_path="$out/train_$model/checkpoints/last.ckpt" input="$out/phantoms/BraTS20_Training_001" \
    output_dir="$out/seg_$model" overwrite=true evaluate=false hydra.run.dir="$out/predict_$model" | tee "$out/predict_$model.txt"
done

python - "$out" <<'PY'
import csv, json, os, sys
from pathlib import Path
out = Path(sys.argv[1])
steps = {r["model"]: r for r in map(json.loads, (out / "step.jsonl").read_text().splitlines()) if r["mode"] == os.environ["MODE"]}
print(f"\ndevice: {next(iter(steps.values())).get('device_name') or next(iter(steps.values())).get('device', '?')}")
print("| network | training patches/s (end to end) | model-only patches/s | ratio |")
print("|---|---:|---:|---:|")
for model in ("arunet3d", "linknet3d", "pspnet3d"):
    rows = list(csv.DictReader(open(out / f"train_{model}" / "csv" / "metrics.csv")))
    train = [float(r["train/patches_per_s"]) for r in rows if r.get("train/patches_per_s")][-1]
    only = steps[model]["patches_per_s"]
    print(f"| {model} | {train:.2f} | {only:.2f} | {train / only:.2f} |")
infer = {r["model"]: r for r in map(json.loads, (out / "infer.jsonl").read_text().splitlines()) if r.get("backend") == "monai"}
print("\n| network | predict.py s/case (read + infer + write) | sliding window s/case | ratio |")
print("|---|---:|---:|---:|")
for model in ("arunet3d", "linknet3d", "pspnet3d"):
    line = next(l for l in (out / f"predict_{model}.txt").read_text().splitlines() if l.startswith("Median per case"))
    parts = [float(w) for w in line.replace(",", " ").split() if w.replace(".", "", 1).isdigit()]
    total = sum(parts)
    print(f"| {model} | {total:.2f} | {infer[model]['s']:.2f} | {total / infer[model]['s']:.2f} |")
PY
# the modern recipe's expected time per epoch on this card (one BraTS 2021 fold), from the numbers above
python experiments/brats/epoch_time.py "$out"
