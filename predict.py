"""Segment scans with trained checkpoints: `python predict.py ckpt_path=CKPT input=PATH output_dir=DIR`,
or with the model shipped with the package when `ckpt_path` is not given (it prints a notice once).
Options are in conf/predict.yaml; `python predict.py --help` lists them. Exit status: 0 every case
segmented, 1 some case failed or was skipped, 2 nothing could start: a mistake, explained in one
message (`HYDRA_FULL_ERROR=1` adds the traceback)."""

import sys

from omegaconf import DictConfig

from tumorseg.cli import hydra_command
from tumorseg.predict import run
from tumorseg.training.train import register_resolvers

register_resolvers()


def main(cfg: DictConfig) -> None:
    """The task Hydra runs with the config composed from conf/predict.yaml and the overrides."""
    status = run(cfg)
    if status:
        sys.exit(status)  # Hydra drops what the task returns


if __name__ == "__main__":
    sys.exit(hydra_command(main, config_name="predict"))
