"""The training command: ``tumorseg-train`` (``python -m tumorseg.training``, and ``train.py`` of a
checkout on the ``conf/`` beside it), a Hydra application composed from ``train.yaml`` and the overrides.
Exit status: 0 done, 1 stopped early (non-finite losses), 2 nothing could start: a mistake, explained
in one message (``HYDRA_FULL_ERROR=1`` adds the traceback)."""

from __future__ import annotations

from omegaconf import DictConfig

from tumorseg.cli import hydra_command
from tumorseg.launch import register_resolvers
from tumorseg.training.train import run


def _task(cfg: DictConfig) -> float | None:
    """The task Hydra runs with the config composed from ``train.yaml`` and the overrides."""
    return run(cfg)


def main(config_path: str | None = None) -> int:
    """``tumorseg-train [OVERRIDES]``: train a segmentation network on the installed configs, or on the
    config folder ``config_path``; returns the exit status."""
    register_resolvers()
    return hydra_command(_task, config_name="train", config_path=config_path)
