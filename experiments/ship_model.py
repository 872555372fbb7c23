"""Package a trained checkpoint of any network as a model shipped with tumorseg.

    python experiments/ship_model.py RUN_DIR/checkpoints/best.ckpt --name phantom-arunet3d-v2 [--metrics real/metrics.json]
    python experiments/ship_model.py $TUMORSEG_CACHE/pretrained/phantom-pspnet3d-v2/run/checkpoints/best.ckpt \
        --name phantom-pspnet3d-v2 --keep-default

Keeps what prediction and init_from need (the weights and the hyper-parameters: network, label
scheme, preprocessing, test-time settings) and drops the optimizer and scheduler states, which are
two thirds of a training checkpoint (``tumorseg.predict.pretrained.slim_checkpoint``); writes
``src/tumorseg/weights/<name>.ckpt`` and puts its entry (size, SHA-256, network, training data,
notice) first in ``src/tumorseg/weights/pretrained.json``, which makes it the default of
``predict.py``, or with ``--keep-default`` where the entry of that name was (a recipe made on first
use becomes a shipped file) or last. The training data is described from the run's
``config.yaml``; ``--metrics`` (a ``experiments/real_exam.py`` output) adds what it scored on a real exam.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tumorseg.cli import add_debug_option, run_command  # noqa: E402
from tumorseg.data.synthetic import PHANTOM_VERSION  # noqa: E402
from tumorseg.io import write_atomic  # noqa: E402
from tumorseg.predict.checkpoints import sha256_file  # noqa: E402
from tumorseg.predict.pretrained import slim_checkpoint  # noqa: E402
from tumorseg.training.module import SegmentationModule  # noqa: E402

WEIGHTS = ROOT / "src" / "tumorseg" / "weights"
NOTICE = (
    "it learned from synthetic phantoms only (no patient's scan) and is not for clinical use; "
    "its segmentations show what the pipeline does, not a diagnosis."
)


def describe_training(checkpoint: Path) -> str:
    """The training data, read from the run's config.yaml beside ``checkpoints/``."""
    config_path = checkpoint.resolve().parent.parent / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: give the checkpoint of a run directory made by train.py.")
    config = yaml.safe_load(config_path.read_text())
    info_path = config_path.parent / "run_info.json"
    command = json.loads(info_path.read_text())["command"][1:] if info_path.is_file() else []
    # where the run wrote is not what it learned from
    command = [arg for arg in command if not arg.startswith(("paths.", "hydra."))]
    data = config["data"]
    if "cases" not in data or "shape" not in data:
        raise ValueError(
            f"{config_path}: data={data.get('_target_')} is not the synthetic phantoms; ship only phantom-trained models."
        )
    shape = "x".join(map(str, data["shape"]))
    return (
        f"{data['cases']} synthetic phantoms (tumorseg phantom version {PHANTOM_VERSION}, MNI ICBM152 2009 anatomy) "
        f"of {shape} voxels over the BraTS field of view, data seed {data['data_seed']}; "
        f"recipe: {' '.join(['python train.py', *command])}"
    )


def ship(
    checkpoint: Path, name: str, metrics: Path | None, weights: Path = WEIGHTS, keep_default: bool = False
) -> Path:
    training = describe_training(checkpoint)  # before anything is written: refuse a checkpoint of no phantom run
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
        "notice": NOTICE,
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
    add_debug_option(parser)
    args = parser.parse_args(argv)

    def run() -> None:
        ship(args.checkpoint, args.name, args.metrics, args.weights, args.keep_default)

    return run_command(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
