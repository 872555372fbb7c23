"""Segment scans with trained checkpoints: `python predict.py ckpt_path=CKPT input=PATH output_dir=DIR`.
Options are in conf/predict.yaml; `python predict.py --help` lists them."""

import logging
import sys

import hydra
from omegaconf import DictConfig

from tumorseg.predict import PredictionError, run
from tumorseg.training.train import register_resolvers

register_resolvers()
log = logging.getLogger("predict")


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        status = run(cfg)
    except (PredictionError, FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        sys.exit(2)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
