"""Train a segmentation network: `python train.py` (quick start on synthetic phantoms) or with
Hydra overrides, e.g. `python train.py data=brats data.root=/data/BraTS2021 model=pspnet3d trainer=gpu`.
Configs live in conf/; `python train.py --help` lists the groups and options. Exit status: 0 done,
1 stopped early (non-finite losses), 2 nothing could start: a mistake, explained in one message
(`HYDRA_FULL_ERROR=1` adds the traceback)."""

import sys

from omegaconf import DictConfig

from tumorseg.cli import hydra_command
from tumorseg.training.train import register_resolvers, run

register_resolvers()


def main(cfg: DictConfig) -> float | None:
    """The task Hydra runs with the config composed from conf/train.yaml and the overrides."""
    return run(cfg)


if __name__ == "__main__":
    sys.exit(hydra_command(main, config_name="train"))
