"""Checkpoint files: their SHA-256, reading them safely, and what they hold.

Checkpoints are read with ``torch.load(weights_only=True)``: the module's hyper-parameters are plain
data, so no pickled code runs when loading a file from the internet.
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
import warnings
import zipfile
from pathlib import Path

import torch

from tumorseg.labels import MODALITIES

CHUNK = 1 << 20  # bytes read at a time when hashing or downloading


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file, as 64 lower-case hexadecimal digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def normalise_digest(sha256: str) -> str:
    """A SHA-256 as 64 lower-case hexadecimal digits (``sha256:`` prefix dropped).

    Raises:
        ValueError: it is not 64 hexadecimal digits.
    """
    digest = sha256.strip().lower()
    if digest.startswith("sha256:"):  # as printed by some registries
        digest = digest[len("sha256:") :]
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"`sha256` must be 64 hexadecimal digits, got {sha256!r}.")
    return digest


def _not_readable(path: Path, err: BaseException) -> ValueError:
    return ValueError(
        f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {type(err).__name__}: "
        f"{str(err).strip() or 'no details'}. Delete it and download or copy it again; if it was written "
        f"while training, use an earlier checkpoint (e.g. last.ckpt) instead."
    )


def load_checkpoint(path: str | Path) -> dict:
    """Read a tumorseg training checkpoint on the CPU, without unpickling any code.

    Args:
        path: a local checkpoint file (see ``resolve_checkpoint`` for URLs).

    Returns:
        The checkpoint dict (``state_dict``, ``hyper_parameters``, ``epoch``, ...).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable PyTorch checkpoint (truncated, corrupt), or not a
            tumorseg training checkpoint (no ``state_dict``, or no ``hyper_parameters`` with a
            ``network``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    try:
        with warnings.catch_warnings():
            # torch warns about odd pickle protocols of garbage files before failing; the error says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        message = str(err)
        # a complete zip archive that the safe unpickler refuses holds pickled objects: readable,
        # but not written by tumorseg's training, whose checkpoints are plain data
        if "Weights only load failed" in message and zipfile.is_zipfile(path):
            detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", message)
            raise ValueError(
                f"{path} is not a tumorseg training checkpoint: it holds pickled objects that "
                f"`torch.load(weights_only=True)` does not load for safety"
                f"{f' ({detail.group(1).strip()})' if detail else ''}. tumorseg checkpoints hold plain data only."
            ) from err
        raise _not_readable(path, err) from err

    problem = None
    if not isinstance(ckpt, dict):
        problem = f"it holds a {type(ckpt).__name__}, not a checkpoint dict"
    elif "state_dict" not in ckpt:
        bare = bool(ckpt) and all(isinstance(v, torch.Tensor) for v in ckpt.values())
        problem = "it is a bare state dict, without hyper-parameters" if bare else "it has no `state_dict`"
    elif not isinstance(ckpt.get("hyper_parameters"), dict) or not isinstance(
        ckpt["hyper_parameters"].get("network"), dict
    ):
        problem = "it has no `hyper_parameters` with a `network`, so the network cannot be rebuilt"
    if problem:
        raise ValueError(
            f"{path} is not a tumorseg training checkpoint: {problem}. Use a checkpoint written by "
            f"tumorseg's training (the .ckpt files of the run's checkpoints folder)."
        )
    return ckpt


def _best_score(callbacks: dict) -> dict | None:
    """The first ModelCheckpoint state with a best monitored score, as plain numbers."""
    for key, state in callbacks.items():
        if not str(key).startswith("ModelCheckpoint") or not isinstance(state, dict):
            continue
        score = state.get("best_model_score")
        if state.get("monitor") is None or score is None:
            continue
        score = float(score)
        if not math.isfinite(score):
            continue
        mode = None
        try:  # the key is "ModelCheckpoint{'monitor': ..., 'mode': 'max', ...}"
            mode = ast.literal_eval(str(key)[len("ModelCheckpoint") :]).get("mode")
        except (ValueError, SyntaxError, AttributeError):
            pass
        return {"monitor": state["monitor"], "score": score, "mode": mode, "path": state.get("best_model_path") or None}
    return None


def checkpoint_summary(ckpt: dict) -> dict:
    """What a checkpoint holds, as plain values for printing.

    Args:
        ckpt: a checkpoint dict from ``load_checkpoint``.

    Returns:
        ``network`` (name), ``preset``, ``overrides`` (the other network arguments), ``labels``
        (scheme), ``modalities``, ``epoch``, ``global_step``, ``best`` (``{"monitor", "score",
        "mode", "path"}`` from the ModelCheckpoint callback, or None when it holds no score) and
        ``lightning_version``.
    """
    hp = ckpt.get("hyper_parameters") or {}
    network = dict(hp.get("network") or {})
    name = network.pop("name", None)
    preset = network.pop("preset", "light")  # SegmentationModule's default
    return {
        "network": name,
        "preset": preset,
        "overrides": network,
        "labels": hp.get("labels", "regions"),
        "modalities": list(hp.get("modalities", MODALITIES)),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "best": _best_score(ckpt.get("callbacks") or {}),
        "lightning_version": ckpt.get("pytorch-lightning_version"),
    }
