"""The registered models: those shipped with tumorseg, and those made on first use from a recipe.

``tumorseg/weights/pretrained.json``, installed with the package, lists them. An entry is either a
**shipped file**::

    {"name": ..., "file": "<name>.ckpt", "sha256": ..., "bytes": ..., "network": ..., "training_data": ...,
     "notice": ...}

whose ``file`` lies beside the registry, or a **recipe** that makes the model the first time it is
asked for::

    {"name": ..., "recipe": ["experiment=phantom_model", "model=linknet3d"], "time_to_make": ...,
     "network": ..., "training_data": ..., "notice": ...}

A recipe is ``train.py``'s overrides: ``make_model`` runs ``python train.py <recipe>`` once, in a
subprocess, into ``<cache>/pretrained/<name>/`` (``<cache>`` is ``tumorseg.io.cache_root()``), under
a lock file so that the processes of one distributed launch (or several jobs) train it once, and
keeps its best checkpoint, slimmed, as ``<name>.ckpt`` with its SHA-256 in ``made.json``; later
calls find it there. Every name can be given where a checkpoint is expected (``ckpt_path=`` of
``predict.py``, ``init_from=`` of ``train.py``; ``tumorseg.predict.checkpoints.resolve_checkpoint``).

The first *shipped file* is the default model of ``predict.py``. Before a shipped file is loaded,
its size and SHA-256 are checked against its entry, so that a truncated or replaced file is refused
instead of predicting with other weights; a made file is checked against its ``made.json``.
``$TUMORSEG_PRETRAINED_REGISTRY`` names another registry file, whose ``file`` entries lie beside it.

Example:
    >>> model = shipped_model()  # the default model, verified
    >>> print(model.banner())
    >>> predictor = Predictor.from_checkpoints([model.path])
    >>> model_file(find_model("phantom-pspnet3d-v2"))  # made on first use (about 30 minutes on a CPU)
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.resources
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from tumorseg.io import cache_root, write_atomic
from tumorseg.predict.cases import PredictionError
from tumorseg.predict.checkpoints import _normalise_digest, sha256_file

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

log = logging.getLogger(__name__)

__all__ = [
    "REGISTRY_ENV",
    "PretrainedModel",
    "default_model",
    "find_model",
    "could_be_name",
    "made_file",
    "made_folder",
    "make_model",
    "model_file",
    "packaged_registry",
    "registered_models",
    "registry_file",
    "shipped_model",
    "slim_checkpoint",
    "train_script",
    "verify",
]

REGISTRY_ENV = "TUMORSEG_PRETRAINED_REGISTRY"
_PACKAGE, _REGISTRY_NAME = "tumorseg.weights", "pretrained.json"
_COMMON = {"name": str, "network": str, "training_data": str, "notice": str}
_FILE_FIELDS = {"file": str, "sha256": str, "bytes": int}
# overrides that making a model sets itself: where the run writes, and that it starts afresh
_RESERVED = ("hydra.", "paths.", "ckpt_path", "resume")
_REINSTALL = (
    "reinstall tumorseg (`pip install --force-reinstall .` in its source folder), or give your own checkpoint "
    "with ckpt_path=PATH"
)
NO_MODEL_HINT = "Give `ckpt_path=PATH` (or a URL, or a list [A,B,C] for an ensemble)."
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

# files of a zipped installation, extracted for the life of the process
_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


@dataclass(frozen=True)
class PretrainedModel:
    """One entry of the registry; ``path`` is where its checkpoint file is (a shipped file) or will be
    once made (a recipe)."""

    name: str
    path: Path
    sha256: str | None  # a shipped file's; None for a recipe (its made.json has it)
    bytes: int | None
    network: str
    training_data: str
    notice: str
    registry: str  # the registry that lists it, for messages
    recipe: tuple[str, ...] = ()  # train.py's overrides that make it; empty for a shipped file
    time_to_make: str | None = None

    @property
    def shipped(self) -> bool:
        """Whether its file comes with the package (else a recipe makes it on first use)."""
        return not self.recipe

    @property
    def command(self) -> str:
        """The command that makes it (a recipe), as a user would type it."""
        return " ".join(["python train.py", *self.recipe])

    def banner(self) -> str:
        """What a run that uses it prints once: its name, its SHA-256 (a shipped file) or its recipe,
        and its notice."""
        if self.shipped:
            return f"Shipped model {self.name} ({self.network}, SHA-256 {self.sha256}): {self.notice}"
        return f"Pretrained model {self.name} ({self.network}, made on first use by `{self.command}`): {self.notice}"


def packaged_registry() -> Traversable:
    """The registry installed with the package."""
    return importlib.resources.files(_PACKAGE) / _REGISTRY_NAME


def registry_file() -> Traversable:
    """``$TUMORSEG_PRETRAINED_REGISTRY`` if set, else the registry installed with the package."""
    override = os.environ.get(REGISTRY_ENV)
    return Path(override).expanduser() if override else packaged_registry()


def made_folder(name: str) -> Path:
    """Where a recipe's model is made and kept: ``<cache>/pretrained/<name>``."""
    return cache_root() / "pretrained" / name


def _local(resource: Traversable) -> Path:
    """A file of the registry's folder as a path torch can open."""
    if isinstance(resource, Path) or not resource.is_file():
        return Path(str(resource))
    return _extracted.enter_context(importlib.resources.as_file(resource))


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _field_problem(entry: dict, fields: dict) -> str | None:
    missing = [key for key in fields if key not in entry]
    if missing:
        return f"missing {', '.join(missing)}"
    for key, kind in fields.items():
        value = entry[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value.strip()):
            return f"`{key}` must be a{' non-empty string' if kind is str else 'n integer'}, got {value!r}"
    return None


def _entry_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return f"an entry is a {type(entry).__name__}, not an object"
    if "file" in entry and "recipe" in entry:
        return "give either `file` (a shipped file) or `recipe` (made on first use), not both"
    if "recipe" in entry:
        problem = _field_problem(entry, _COMMON)
        if problem:
            return problem
        recipe = entry["recipe"]
        if not isinstance(recipe, list) or not recipe or not all(isinstance(o, str) and o.strip() for o in recipe):
            return f"`recipe` must be a non-empty list of train.py overrides, got {recipe!r}"
        reserved = [o for o in recipe if _override_key(o).startswith(_RESERVED)]
        if reserved:
            return (
                f"`recipe` must not set {', '.join(reserved)}: making the model sets where it writes and how it begins"
            )
        making = entry.get("time_to_make")
        if making is not None and (not isinstance(making, str) or not making.strip()):
            return f"`time_to_make` must be a non-empty string, got {making!r}"
        return None
    problem = _field_problem(entry, {**_COMMON, **_FILE_FIELDS})
    if problem:
        return problem
    if entry["bytes"] < 1:
        return f"`bytes` must be the file's size, got {entry['bytes']}"
    if PurePosixPath(entry["file"]).name != entry["file"] or entry["file"] == ".." or "\\" in entry["file"]:
        return f"`file` must be the name of a file beside the registry, got {entry['file']!r}"
    try:
        _normalise_digest(entry["sha256"])
    except ValueError as err:
        return str(err)
    return None


def registered_models(registry: Traversable | Path | None = None) -> list[PretrainedModel]:
    """The models a registry lists, in its order.

    Args:
        registry: a registry file. Defaults to ``registry_file()``.

    Raises:
        PredictionError: the registry cannot be read, is not valid JSON, or an entry lacks a field
            or has a malformed one (the message names the registry and the entry).
    """
    registry = registry_file() if registry is None else registry
    where = str(registry)
    try:
        content = json.loads(registry.read_text(encoding="utf-8"))
    except OSError as err:
        raise PredictionError(f"The registry of shipped models {where} cannot be read ({err}); {_REINSTALL}.") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PredictionError(
            f"The registry of shipped models {where} is not valid JSON ({err}); {_REINSTALL}."
        ) from err
    entries = content.get("models") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        raise PredictionError(f"{where}: expected an object with a list `models`; {_REINSTALL}.")
    folder = registry.parent if isinstance(registry, Path) else importlib.resources.files(_PACKAGE)
    models, names = [], set()
    for number, entry in enumerate(entries, start=1):
        problem = _entry_problem(entry)
        if problem is None and entry["name"] in names:
            problem = f"the name {entry['name']!r} is listed twice"
        if problem:
            name = entry.get("name") if isinstance(entry, dict) else None
            raise PredictionError(f"{where}: model {number}{f' ({name})' if name else ''}: {problem}; fix the entry.")
        names.add(entry["name"])
        common = dict(
            name=entry["name"], network=entry["network"], training_data=entry["training_data"],
            notice=entry["notice"].strip(), registry=where,
        )  # fmt: skip
        if "recipe" in entry:
            path = made_folder(entry["name"]) / f"{entry['name']}.ckpt"
            recipe = dict(recipe=tuple(entry["recipe"]), time_to_make=entry.get("time_to_make"))
            models.append(PretrainedModel(**common, path=path, sha256=None, bytes=None, **recipe))
            continue
        path = _local(folder / entry["file"])
        models.append(
            PretrainedModel(**common, path=path, sha256=_normalise_digest(entry["sha256"]), bytes=entry["bytes"])
        )
    return models


def default_model(registry: Traversable | Path | None = None) -> PretrainedModel:
    """The first shipped file of the registry (not yet verified: see ``verify``); the recipes made on
    first use are never a default, since making one takes a training.

    Raises:
        PredictionError: the registry lists no shipped file, or is malformed.
    """
    models = registered_models(registry)
    shipped = [m for m in models if m.shipped]
    if not shipped:
        where = registry if registry is not None else registry_file()
        made = f" (only models made on first use: {', '.join(m.name for m in models)})" if models else ""
        raise PredictionError(f"{NO_MODEL_HINT} This installation ships no model: {where} lists none{made}.")
    return shipped[0]


def find_model(name: str, registry: Traversable | Path | None = None) -> PretrainedModel | None:
    """The registered model called ``name``, or None."""
    return next((m for m in registered_models(registry) if m.name == name), None)


def could_be_name(spec) -> bool:
    """Whether ``spec`` (a ``ckpt_path`` or ``init_from``) may name a registered model: a string
    without a folder, a URL scheme or a checkpoint's suffix, that is no existing file."""
    if not isinstance(spec, str) or not spec or "/" in spec or os.sep in spec or "://" in spec:
        return False
    return Path(spec).suffix not in (".ckpt", ".onnx", ".pt", ".pth", ".ts") and not Path(spec).exists()


def verify(model: PretrainedModel) -> Path:
    """The checkpoint file of ``model``, once its size and SHA-256 match its registry entry (a
    shipped file) or its ``made.json`` (a recipe's, once made).

    Raises:
        PredictionError: the file is missing (a recipe's: not made yet), or its size or SHA-256
            differ (the message names the file and what to do).
    """
    if not model.shipped:
        path = made_file(model)
        if path is None:
            raise PredictionError(
                f"The pretrained model {model.name} is not made yet ({model.path} is missing); `make_model` or "
                f"init_from={model.name} makes it ({model.command})."
            )
        return path
    path = model.path
    if not path.is_file():
        raise PredictionError(
            f"The shipped model {model.name} is listed in {model.registry}, but its file {path} is missing; "
            f"{_REINSTALL}."
        )
    size = path.stat().st_size
    if size != model.bytes:
        raise PredictionError(
            f"The shipped model {model.name} ({path}) has {size} bytes, but {model.registry} lists {model.bytes}: "
            f"the file is truncated or was replaced; {_REINSTALL}."
        )
    actual = sha256_file(path)
    if actual != model.sha256:
        raise PredictionError(
            f"The shipped model {model.name} ({path}) does not have the SHA-256 that {model.registry} lists "
            f"(expected {model.sha256}, actual {actual}): the file is damaged or was replaced; {_REINSTALL}."
        )
    return path


def shipped_model(registry: Traversable | Path | None = None) -> PretrainedModel:
    """The default shipped model, its file verified (``default_model``, then ``verify``)."""
    model = default_model(registry)
    verify(model)
    return model


def model_file(model: PretrainedModel) -> Path:
    """The verified checkpoint file of ``model``: a shipped file, or a recipe's, made first if it was
    not (``make_model``)."""
    return verify(model) if model.shipped else make_model(model)


# ------------------------------------------------------------------------------------ slim checkpoints


def slim_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Write ``source``'s weights and hyper-parameters (``KEEP``) to ``target``, atomically, without the
    optimizer and scheduler states; returns ``target``."""
    import torch

    full = torch.load(source, map_location="cpu", weights_only=True)
    buffer = io.BytesIO()
    torch.save({key: full[key] for key in KEEP if key in full}, buffer)
    return write_atomic(target, buffer.getvalue())


# ------------------------------------------------------------------------------------ made on first use


def train_script() -> Path:
    """``train.py`` of the source checkout this package runs from (with its ``conf/``).

    Raises:
        PredictionError: the package is not run from a source checkout, which a recipe needs.
    """
    root = Path(__file__).resolve().parents[3]
    script = root / "train.py"
    if not script.is_file() or not (root / "conf" / "train.yaml").is_file():
        raise PredictionError(
            f"Making a pretrained model needs train.py and conf/ of tumorseg's source checkout, which are not at "
            f"{root}; install tumorseg from its source folder (`pip install -e .`), or give a checkpoint file."
        )
    return script


def _record_file(folder: Path) -> Path:
    return folder / "made.json"


def made_file(model: PretrainedModel) -> Path | None:
    """The made file of a recipe, verified against its ``made.json``; None if not made yet.

    Raises:
        PredictionError: the file was made by another recipe, or differs from its record.
    """
    folder = model.path.parent
    record_file = _record_file(folder)
    if not model.path.is_file() or not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError) as err:
        raise PredictionError(
            f"{record_file} cannot be read ({err}); delete {folder} to make {model.name} again."
        ) from err
    if record.get("recipe") != list(model.recipe):
        raise PredictionError(
            f"{model.path} was made by the recipe {record.get('recipe')}, but {model.registry} gives {model.name} the "
            f"recipe {list(model.recipe)}; delete {folder} to make it again with the registry's recipe."
        )
    actual = sha256_file(model.path)
    if actual != record.get("sha256"):
        raise PredictionError(
            f"The made model {model.name} ({model.path}) does not have the SHA-256 its record {record_file} holds "
            f"(expected {record.get('sha256')}, actual {actual}): the file is damaged or was replaced; delete "
            f"{folder} to make it again."
        )
    return model.path


def _launch_free_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARIABLES and not k.startswith(_LAUNCH_PREFIXES)}


def _override(key: str, value: str | Path) -> str:
    """``key=value`` with the value quoted for Hydra's override grammar when it needs it."""
    text = str(value)
    if re.fullmatch(r"[\w./:-]+", text):
        return f"{key}={text}"
    return f"{key}='{text.replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))}'"


def make_model(model: PretrainedModel, *, script: Path | None = None) -> Path:
    """The checkpoint of a recipe ``model``, trained first if nobody made it yet.

    Runs ``python train.py <recipe>`` in a subprocess, once, with its run directory at
    ``<cache>/pretrained/<name>/run`` (data under ``<cache>/pretrained/data``), and keeps its best
    checkpoint (else its last), slimmed (``slim_checkpoint``), as ``<name>.ckpt`` beside ``made.json``
    (its SHA-256, recipe, source and time). A lock file in that folder makes concurrent callers (the
    ranks and nodes of one launch, several jobs sharing the cache) wait for the one making it; a
    making that was killed continues from its run's ``last.ckpt``. The subprocess runs on one device,
    outside any distributed launch of its caller, its output on the caller's terminal.

    Args:
        model: a registry entry with a recipe (a shipped file is returned verified).
        script: the ``train.py`` to run. Defaults to ``train_script()``.

    Raises:
        PredictionError: the training failed (the message names its log), or no source checkout.
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
        return _make(model, folder, script or train_script())
    finally:
        lock.release()


def _make(model: PretrainedModel, folder: Path, script: Path) -> Path:
    run_dir = folder / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    command = [
        sys.executable, str(script), *model.recipe, _override("hydra.run.dir", run_dir),
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
    done = subprocess.run(command, env=_launch_free_environment(), cwd=script.parent)
    if done.returncode != 0:
        raise PredictionError(
            f"Making the pretrained model {model.name} failed: `{model.command}` exited with status {done.returncode} "
            f"(its log: {run_dir / 'train.log'}). Run again to continue it, or give a checkpoint file."
        )
    best = run_dir / "checkpoints" / "best.ckpt"
    source = best if best.is_file() else last
    if not source.is_file():
        raise PredictionError(
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
    write_atomic(_record_file(folder), json.dumps(record, indent=1) + "\n")
    log.info("Made the pretrained model %s: %s (SHA-256 %s) from %s.", model.name, model.path, record["sha256"], source)
    return model.path
