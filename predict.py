"""Segment scans with trained checkpoints: `python predict.py ckpt_path=CKPT input=PATH output_dir=DIR`,
or with the model shipped with the package when `ckpt_path` is not given (it prints a notice once).
Options are in conf/predict.yaml beside this file; `python predict.py --help` lists them; the installed
console script `tumorseg-predict` does the same. Exit status: 0 every case segmented, 1 some case failed
or was skipped, 2 nothing could start: a mistake, explained in one message (`HYDRA_FULL_ERROR=1` adds
the traceback)."""

import sys
from pathlib import Path

from tumorseg.predict.cli import main

if __name__ == "__main__":
    sys.exit(main(config_path=str(Path(__file__).resolve().parent / "conf")))
