"""Models made on first use: a registry recipe trained once, in a subprocess, into the cache.

A recipe is ``train.py``'s overrides: ``make_model`` runs the training once into
``<cache>/pretrained/<name>/`` (``<cache>`` is ``tumorseg.io.cache_root()``), under a lock file so that
the processes of one distributed launch (or several jobs) train it once, and keeps its best
checkpoint, slimmed, as ``<name>.ckpt`` with its SHA-256 in ``made.json``; later calls find it there.

Example:
    >>> model_file(find_model("phantom-pspnet3d-v2"))  # made on first use (about 30 minutes on a CPU)
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tumorseg.checkpoints.files import sha256_file
from tumorseg.checkpoints.registry import ModelError, PretrainedModel, made_file, record_file, verify
from tumorseg.io import write_atomic

log = logging.getLogger(__name__)

# what a slim checkpoint keeps: what prediction and init_from need, not the optimizer's state
# (two thirds of a training checkpoint)
KEEP = ("state_dict", "hyper_parameters", "pytorch-lightning_version", "epoch", "global_step", "init_from")
# variables by which a launcher (torchrun, srun, MPI, Lightning) tells a process its place in a
# distributed job: the training that makes a model is a job of its own, on one device
_LAUNCH_VARIABLES = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "ROLE_NAME", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
)  # fmt: skip
_LAUNCH_PREFIXES = ("TORCHELASTIC_", "SLURM_", "PL_", "OMPI_", "PMI_", "PMIX_")


def model_file(model: PretrainedModel) -> Path:
    """The verified checkpoint file of ``model``: a shipped file, or a recipe's, made first if it was
    not (``make_model``)."""
    return verify(model) if model.shipped else make_model(model)


def slim_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Write ``source``'s weights and hyper-parameters (``KEEP``) to ``target``, atomically, without the
    optimizer and scheduler states; returns ``target``."""
    import torch

    full = torch.load(source, map_location="cpu", weights_only=True)
    buffer = io.BytesIO()
    torch.save({key: full[key] for key in KEEP if key in full}, buffer)
    return write_atomic(target, buffer.getvalue())


def _launch_free_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARIABLES and not k.startswith(_LAUNCH_PREFIXES)}


def _override(key: str, value: str | Path) -> str:
    """``key=value`` with the value quoted for Hydra's override grammar when it needs it."""
    text = str(value)
    if re.fullmatch(r"[\w./:-]+", text):
        return f"{key}={text}"
    return f"{key}='{text.replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))}'"


def make_model(model: PretrainedModel) -> Path:
    """The checkpoint of a recipe ``model``, trained first if nobody made it yet.

    Runs the training (``python -m tumorseg.training <recipe>``, which ``train.py`` runs) in a
    subprocess, once, with its run directory at ``<cache>/pretrained/<name>/run`` (data under
    ``<cache>/pretrained/data``), and keeps its best checkpoint (else its last), slimmed
    (``slim_checkpoint``), as ``<name>.ckpt`` beside ``made.json`` (its SHA-256, recipe, source and
    time). A lock file in that folder makes concurrent callers (the ranks and nodes of one launch,
    several jobs sharing the cache) wait for the one making it; a making that was killed continues from
    its run's ``last.ckpt``. The subprocess runs on one device, outside any distributed launch of its
    caller, its output on the caller's terminal.

    Args:
        model: a registry entry with a recipe (a shipped file is returned verified).

    Raises:
        ModelError: the training failed (the message names its run directory).
    """
    from filelock import FileLock, Timeout

    if model.shipped:
        return verify(model)
    made = made_file(model)
    if made is not None:
        return made
    folder = model.path.parent
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / "make.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("Waiting for another process making the pretrained model %s (lock %s).", model.name, lock.lock_file)
        lock.acquire()
    try:
        made = made_file(model)  # the process we waited for made it
        if made is not None:
            return made
        return _make(model, folder)
    finally:
        lock.release()


def _make(model: PretrainedModel, folder: Path) -> Path:
    run_dir = folder / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    command = [
        sys.executable, "-m", "tumorseg.training", *model.recipe, _override("hydra.run.dir", run_dir),
        _override("paths.data_dir", folder.parent / "data"),
    ]  # fmt: skip
    if last.is_file():
        command.append(_override("ckpt_path", last))
    took = f" ({model.time_to_make})" if model.time_to_make else ""
    again = f", continuing the run in {run_dir} that stopped" if last.is_file() else ""
    print(
        f"The pretrained model {model.name} is not made yet: training it once now{took} with `{model.command}`, "
        f"into {folder}{again}; later runs use it. {model.notice}",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    done = subprocess.run(command, env=_launch_free_environment(), cwd=folder)
    if done.returncode != 0:
        raise ModelError(
            f"Making the pretrained model {model.name} failed: `{model.command}` exited with status {done.returncode} "
            f"(its log is in {run_dir}). Run again to continue it, or give a checkpoint file."
        )
    best = run_dir / "checkpoints" / "best.ckpt"
    source = best if best.is_file() else last
    if not source.is_file():
        raise ModelError(
            f"Making the pretrained model {model.name}: `{model.command}` ended without a checkpoint in "
            f"{run_dir / 'checkpoints'}; check the recipe's callbacks."
        )
    slim_checkpoint(source, model.path)
    record = {
        "name": model.name,
        "recipe": list(model.recipe),
        "sha256": sha256_file(model.path),
        "bytes": model.path.stat().st_size,
        "source": str(source),
        "seconds": round(time.perf_counter() - started, 1),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # the record is written last: a file without it is not made
    write_atomic(record_file(folder), json.dumps(record, indent=1) + "\n")
    log.info("Made the pretrained model %s: %s (SHA-256 %s) from %s.", model.name, model.path, record["sha256"], source)
    return model.path
