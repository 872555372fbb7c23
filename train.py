"""Train a segmentation network: `python train.py` (quick start on synthetic phantoms) or with
Hydra overrides, e.g. `python train.py data=brats data.root=/data/BraTS2021 model=pspnet3d trainer=gpu`.
Configs live in conf/ beside this file; `python train.py --help` lists the groups and options. The
installed console script `tumorseg-train` does the same on the configs installed with the package.
Exit status: 0 done, 1 stopped early (non-finite losses), 2 nothing could start: a mistake, explained
in one message (`HYDRA_FULL_ERROR=1` adds the traceback)."""

import sys
from pathlib import Path

from tumorseg.training.cli import main

if __name__ == "__main__":
    sys.exit(main(config_path=str(Path(__file__).resolve().parent / "conf")))
