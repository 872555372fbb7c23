"""Package a trained checkpoint of any network as a model shipped with tumorseg.

    python experiments/shipped_model/ship_model.py RUN_DIR/checkpoints/best.ckpt --name phantom-arunet3d-v2 [--metrics real/metrics.json]
    python experiments/shipped_model/ship_model.py $TUMORSEG_CACHE/pretrained/phantom-pspnet3d-v2/run/checkpoints/best.ckpt \
        --name phantom-pspnet3d-v2 --keep-default

Keeps what prediction and init_from need (the weights and the hyper-parameters: network, label
scheme, preprocessing, test-time settings) and drops the optimizer and scheduler states, which are
two thirds of a training checkpoint (``tumorseg.checkpoints.slim_checkpoint``); writes
``src/tumorseg/weights/<name>.ckpt`` and puts its entry (size, SHA-256, network, training data,
notice) first in ``src/tumorseg/weights/pretrained.json``, which makes it the default of
``predict.py``, or with ``--keep-default`` where the entry of that name was (a recipe made on first
use becomes a shipped file) or last. The training data is described from the run's
``config.yaml`` (phantoms) or ``split.json`` (real cases: how many, of which BraTS edition, which
grades); ``--metrics`` (a ``experiments/real_exam.py`` output) adds what it scored on a real exam.

    python experiments/shipped_model/ship_model.py outputs/ship/brats18-arunet3d-all/runs/<run>/checkpoints/last.ckpt \
        --name brats18-arunet3d-v1 --metrics outputs/real_exam/brats18-arunet3d-all/metrics.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from tumorseg.checkpoints import sha256_file, slim_checkpoint
from tumorseg.cli import add_debug_option, run_command
from tumorseg.io import write_atomic
from tumorseg.phantoms import PHANTOM_VERSION
from tumorseg.training.module import SegmentationModule

ROOT = Path(__file__).resolve().parents[2]

WEIGHTS = ROOT / "src" / "tumorseg" / "weights"
NOTICE = (
    "it learned from synthetic phantoms only (no patient's scan) and is not for clinical use; "
    "its segmentations show what the pipeline does, not a diagnosis."
)
REAL_NOTICE = (
    "it learned from {data} with expert labels, shared by the BraTS challenge for research; for research use "
    "only and not for clinical use: its segmentations are not a diagnosis."
)
# the edition of a real training set, told by its case names
EDITIONS = {
    "Brats17_": "BraTS 2017 training cases",
    "Brats18_": "BraTS 2018 training cases",
    "BraTS19_": "BraTS 2019 training cases",
    "BraTS20_": "BraTS 2020 training cases",
    "BraTS2021_": "BraTS 2021 training cases",
    "BraTS-GLI-": "BraTS 2023 glioma training cases",
}


def real_data_name(case_ids: list[str], split_path: Path) -> str:
    editions = {next((e for p, e in EDITIONS.items() if c.startswith(p)), None) for c in case_ids}
    if len(editions) != 1 or None in editions:
        raise ValueError(
            f"{split_path}: the training cases are not all of one known BraTS edition "
            f"({sorted(map(str, editions))}); name the data with --data-name."
        )
    return editions.pop()


def describe_training(checkpoint: Path, data_name: str | None = None) -> tuple[str, str]:
    """The training data, read from the run's config.yaml beside ``checkpoints/``, and the notice."""
    config_path = checkpoint.resolve().parent.parent / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: give the checkpoint of a run directory made by train.py.")
    config = yaml.safe_load(config_path.read_text())
    info_path = config_path.parent / "run_info.json"
    command = json.loads(info_path.read_text())["command"][1:] if info_path.is_file() else []
    # where the run wrote, the user's data folder and the console are not what it learned from
    operational = ("paths.", "hydra.", "data.root=", "task_name=", "resume=", "~callbacks.progress_bar",
                   "trainer.enable_progress_bar=")  # fmt: skip
    command = [arg for arg in command if not arg.startswith(operational)]
    recipe = f"recipe: {' '.join(['python train.py', *command])}"
    data = config["data"]
    if "cases" in data and "shape" in data:
        shape = "x".join(map(str, data["shape"]))
        return (
            f"{data['cases']} synthetic phantoms (tumorseg phantom version {PHANTOM_VERSION}, MNI ICBM152 2009 "
            f"anatomy) of {shape} voxels over the BraTS field of view, data seed {data['data_seed']}; {recipe}"
        ), NOTICE
    split_path = config_path.parent / "split.json"
    if "root" not in data or not split_path.is_file():
        raise ValueError(
            f"{config_path}: data={data.get('_target_')} is neither the synthetic phantoms nor a dataset of "
            f"real cases with its split.json; ship a model trained by train.py on either."
        )
    split = json.loads(split_path.read_text())
    cases = split["train"]
    name = data_name or real_data_name(cases, split_path)
    grades = [split.get("grades", {}).get(c) for c in cases]
    counts = ", ".join(f"{grades.count(g)} {g}" for g in sorted({g for g in grades if g}))
    spacing = split.get("preprocess", {}).get("spacing")
    grid = f" on a {'x'.join(f'{s:g}' for s in spacing)} mm grid" if spacing else ""
    what = f"{len(cases)} {name}{f' ({counts})' if counts else ''}"
    return f"{what}, expert labels{grid}; {recipe}", REAL_NOTICE.format(data=what)


def ship(
    checkpoint: Path,
    name: str,
    metrics: Path | None,
    weights: Path = WEIGHTS,
    keep_default: bool = False,
    data_name: str | None = None,
) -> Path:
    # before anything is written: refuse a checkpoint of a run that cannot be described
    training, notice = describe_training(checkpoint, data_name)
    target = slim_checkpoint(checkpoint, weights / f"{name}.ckpt")
    model = SegmentationModule.load_from_checkpoint(target, map_location="cpu", weights_only=True)  # it loads

    network = model.hparams.network["name"]
    if metrics is not None:
        scores = json.loads(metrics.read_text())
        training += f"; on one real exam ({scores['case_id']}): " + ", ".join(
            f"{region.upper()} Dice {values['dice']:.2f}" for region, values in scores["regions"].items()
        )
    entry = {
        "name": name,
        "file": target.name,
        "sha256": sha256_file(target),
        "bytes": target.stat().st_size,
        "network": network,
        "training_data": training,
        "notice": notice,
    }
    registry_path = weights / "pretrained.json"
    registry = json.loads(registry_path.read_text())
    names = [m["name"] for m in registry["models"]]
    if not keep_default:
        registry["models"] = [entry] + [m for m in registry["models"] if m["name"] != name]
    elif name in names:
        registry["models"][names.index(name)] = entry  # e.g. a recipe made on first use, now shipped
    else:
        registry["models"].append(entry)
    write_atomic(registry_path, (json.dumps(registry, indent=2) + "\n").encode())
    print(json.dumps(entry, indent=2))
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a run's checkpoints/best.ckpt")
    parser.add_argument("--name", required=True, help="model name, also the file name")
    parser.add_argument("--metrics", type=Path, help="metrics.json of experiments/real_exam.py")
    parser.add_argument(
        "--weights", type=Path, default=WEIGHTS, help="the folder of pretrained.json (default: the package's)"
    )
    parser.add_argument(
        "--keep-default",
        action="store_true",
        help="keep predict.py's default: the entry replaces the one of that name where it is, or comes last",
    )
    parser.add_argument(
        "--data-name", help="what a real training set is, e.g. 'BraTS 2018 training cases' (default: from case names)"
    )
    add_debug_option(parser)
    args = parser.parse_args(argv)

    def run() -> None:
        ship(args.checkpoint, args.name, args.metrics, args.weights, args.keep_default, args.data_name)

    return run_command(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
