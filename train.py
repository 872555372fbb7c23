"""Train a segmentation network: `python train.py` (quick start on synthetic phantoms) or with
Hydra overrides, e.g. `python train.py data=brats data.root=/data/BraTS2021 model=pspnet3d trainer=gpu`.
Configs live in conf/; `python train.py --help` lists the groups and options."""

import hydra
from omegaconf import DictConfig

from tumorseg.training.train import register_resolvers, run

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
