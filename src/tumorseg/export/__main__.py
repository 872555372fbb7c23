"""Export a trained network for deployment: ``python -m tumorseg.export ckpt_path=CKPT out=model.onnx``
(``format=torchscript out=model.pt`` for TorchScript). Options are in conf/export.yaml; ``--help``
lists them. Exit status: 0 written, 2 nothing written: a mistake or a failed check, explained in one
message (``HYDRA_FULL_ERROR=1`` adds the traceback)."""

import sys
from pathlib import Path

from omegaconf import DictConfig

from tumorseg.cli import EXIT_UNUSABLE, hydra_command
from tumorseg.export.cli import run
from tumorseg.training.train import register_resolvers

# the repository's config folder, as for predict.py and train.py (an editable install)
CONF = Path(__file__).resolve().parents[3] / "conf"


def main(cfg: DictConfig) -> None:
    """The task Hydra runs with the config composed from conf/export.yaml and the overrides."""
    status = run(cfg)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    if not (CONF / "export.yaml").is_file():
        print(
            f"error: {CONF / 'export.yaml'} not found: python -m tumorseg.export reads the repository's conf/ "
            "folder; install tumorseg from its source folder with pip install -e .",
            file=sys.stderr,
        )
        sys.exit(EXIT_UNUSABLE)
    register_resolvers()
    sys.exit(hydra_command(main, config_name="export", config_path=str(CONF)))
