"""What every command needs to start: the configs' location and the resolvers they use, and the name
of a run's directory, agreed on by every process of a distributed launch.

The configs are the package ``tumorseg.conf`` (the repository's ``conf/``, installed with the wheel),
which commands find through Hydra's ``pkg://`` search path in any install; ``train.py`` and
``predict.py`` of a checkout read the ``conf/`` beside them, which an editable install shares.
"""

from __future__ import annotations

import importlib.resources
import os
from datetime import datetime, timedelta
from pathlib import Path

from omegaconf import OmegaConf

CONF_PACKAGE = "tumorseg.conf"
CONF = f"pkg://{CONF_PACKAGE}"  # Hydra's config_path of the installed configs


def conf_dir() -> Path:
    """The folder of the installed configs (``conf/`` of the checkout, in an editable install).

    Raises:
        ModuleNotFoundError: tumorseg runs from a source folder on ``PYTHONPATH``, not installed.
    """
    try:
        return Path(str(importlib.resources.files(CONF_PACKAGE)))
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"tumorseg's configs ({CONF_PACKAGE}) are not installed: install tumorseg (`pip install -e .` in its "
            "source folder), or run train.py and predict.py of the checkout, which read the conf/ beside them."
        ) from err


def run_id() -> str:
    """Name of a run's directory, the same in every process of one distributed launch.

    ``srun`` and ``torchrun`` start every rank themselves, each composing the config, so a
    timestamp could differ between ranks: their job step or rendezvous id is shared instead. A
    ``torchrun`` launch without ``--rdzv-id`` (its id is then ``none``) shares the timestamp of
    its first rank to ask (``torchrun_timestamp``).
    """
    job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")
    if job and step:
        return f"slurm-{job}.{step}"
    rdzv = os.environ.get("TORCHELASTIC_RUN_ID")
    if rdzv and rdzv != "none":
        return f"torchrun-{rdzv}"
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return torchrun_timestamp(stamp) if rdzv == "none" else stamp


def torchrun_timestamp(stamp: str) -> str:
    """The first of the ranks' timestamps, agreed on through the key-value store of ``torchrun``'s
    agents (``MASTER_ADDR:MASTER_PORT``, shared with its workers), which the nodes reach before
    any process group exists; ``stamp`` itself for a single process.

    Raises:
        ValueError: If several processes have no such store to agree through (an old torchrun).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        from torch.distributed import TCPStore

        store = TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(minutes=5)
        )
        # set only if unset; a worker group restarted by torchrun (--max-restarts) finds it and continues there
        return store.compare_set("tumorseg/run_id", "", stamp).decode()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "torchrun started without --rdzv-id and without an agent store shared with its workers: the ranks "
            "cannot agree on one run directory. Pass --rdzv-id=<name of this run> to torchrun on every node."
        )
    return stamp


def global_rank_env() -> int:
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def register_resolvers() -> None:
    """Resolvers the configs use: ``${run_id:}``, ``${rank_zero_subdir:.hydra}`` (the folder on rank
    zero, nothing elsewhere, so only one process writes the config) and
    ``${optuna_direction:max}`` -> ``maximize`` (the sweep direction follows ``monitor.mode``)."""
    resolvers = {
        "run_id": (run_id, True),
        "rank_zero_subdir": (lambda name: name if global_rank_env() == 0 else None, False),
        "optuna_direction": (lambda mode: {"max": "maximize", "min": "minimize"}[str(mode)], False),
    }
    for name, (fn, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)
