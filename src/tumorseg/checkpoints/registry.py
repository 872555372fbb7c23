"""The registered models: those shipped with tumorseg, and those made on first use from a recipe.

``tumorseg/weights/pretrained.json``, installed with the package, lists them. An entry is either a
**shipped file**::

    {"name": ..., "file": "<name>.ckpt", "sha256": ..., "bytes": ..., "network": ..., "training_data": ...,
     "notice": ...}

whose ``file`` lies beside the registry, or a **recipe** that makes the model the first time it is
asked for (``tumorseg.checkpoints.making``)::

    {"name": ..., "recipe": ["experiment=phantom_model", "model=linknet3d"], "time_to_make": ...,
     "network": ..., "training_data": ..., "notice": ...}

Every name can be given where a checkpoint is expected (``ckpt_path=`` of ``predict.py``,
``init_from=`` of ``train.py``; ``tumorseg.checkpoints.resolve_checkpoint``). The first *shipped
file* is the default model of ``predict.py``. Before a shipped file is loaded, its size and SHA-256
are checked against its entry, so that a truncated or replaced file is refused instead of predicting
with other weights; a made file is checked against its ``made.json``.
``$TUMORSEG_PRETRAINED_REGISTRY`` names another registry file, whose ``file`` entries lie beside it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.resources
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from tumorseg.checkpoints.files import normalise_digest, sha256_file
from tumorseg.io import cache_root

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


class ModelError(ValueError):
    """A registered model cannot be listed, found, verified or made (the message says what to do)."""


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
        normalise_digest(entry["sha256"])
    except ValueError as err:
        return str(err)
    return None


def registered_models(registry: Traversable | Path | None = None) -> list[PretrainedModel]:
    """The models a registry lists, in its order.

    Args:
        registry: a registry file. Defaults to ``registry_file()``.

    Raises:
        ModelError: the registry cannot be read, is not valid JSON, or an entry lacks a field
            or has a malformed one (the message names the registry and the entry).
    """
    registry = registry_file() if registry is None else registry
    where = str(registry)
    try:
        content = json.loads(registry.read_text(encoding="utf-8"))
    except OSError as err:
        raise ModelError(f"The registry of shipped models {where} cannot be read ({err}); {_REINSTALL}.") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"The registry of shipped models {where} is not valid JSON ({err}); {_REINSTALL}.") from err
    entries = content.get("models") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        raise ModelError(f"{where}: expected an object with a list `models`; {_REINSTALL}.")
    folder = registry.parent if isinstance(registry, Path) else importlib.resources.files(_PACKAGE)
    models, names = [], set()
    for number, entry in enumerate(entries, start=1):
        problem = _entry_problem(entry)
        if problem is None and entry["name"] in names:
            problem = f"the name {entry['name']!r} is listed twice"
        if problem:
            name = entry.get("name") if isinstance(entry, dict) else None
            raise ModelError(f"{where}: model {number}{f' ({name})' if name else ''}: {problem}; fix the entry.")
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
            PretrainedModel(**common, path=path, sha256=normalise_digest(entry["sha256"]), bytes=entry["bytes"])
        )
    return models


def default_model(registry: Traversable | Path | None = None) -> PretrainedModel:
    """The first shipped file of the registry (not yet verified: see ``verify``); the recipes made on
    first use are never a default, since making one takes a training.

    Raises:
        ModelError: the registry lists no shipped file, or is malformed.
    """
    models = registered_models(registry)
    shipped = [m for m in models if m.shipped]
    if not shipped:
        where = registry if registry is not None else registry_file()
        made = f" (only models made on first use: {', '.join(m.name for m in models)})" if models else ""
        raise ModelError(f"{NO_MODEL_HINT} This installation ships no model: {where} lists none{made}.")
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
        ModelError: the file is missing (a recipe's: not made yet), or its size or SHA-256
            differ (the message names the file and what to do).
    """
    if not model.shipped:
        path = made_file(model)
        if path is None:
            raise ModelError(
                f"The pretrained model {model.name} is not made yet ({model.path} is missing); `make_model` or "
                f"init_from={model.name} makes it ({model.command})."
            )
        return path
    path = model.path
    if not path.is_file():
        raise ModelError(
            f"The shipped model {model.name} is listed in {model.registry}, but its file {path} is missing; "
            f"{_REINSTALL}."
        )
    size = path.stat().st_size
    if size != model.bytes:
        raise ModelError(
            f"The shipped model {model.name} ({path}) has {size} bytes, but {model.registry} lists {model.bytes}: "
            f"the file is truncated or was replaced; {_REINSTALL}."
        )
    actual = sha256_file(path)
    if actual != model.sha256:
        raise ModelError(
            f"The shipped model {model.name} ({path}) does not have the SHA-256 that {model.registry} lists "
            f"(expected {model.sha256}, actual {actual}): the file is damaged or was replaced; {_REINSTALL}."
        )
    return path


def shipped_model(registry: Traversable | Path | None = None) -> PretrainedModel:
    """The default shipped model, its file verified (``default_model``, then ``verify``)."""
    model = default_model(registry)
    verify(model)
    return model


def record_file(folder: Path) -> Path:
    """The record of a made model (its recipe, SHA-256, source and time) in its folder."""
    return folder / "made.json"


def made_file(model: PretrainedModel) -> Path | None:
    """The made file of a recipe, verified against its ``made.json``; None if not made yet.

    Raises:
        ModelError: the file was made by another recipe, or differs from its record.
    """
    folder = model.path.parent
    record_path = record_file(folder)
    if not model.path.is_file() or not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{record_path} cannot be read ({err}); delete {folder} to make {model.name} again.") from err
    if record.get("recipe") != list(model.recipe):
        raise ModelError(
            f"{model.path} was made by the recipe {record.get('recipe')}, but {model.registry} gives {model.name} the "
            f"recipe {list(model.recipe)}; delete {folder} to make it again with the registry's recipe."
        )
    actual = sha256_file(model.path)
    if actual != record.get("sha256"):
        raise ModelError(
            f"The made model {model.name} ({model.path}) does not have the SHA-256 its record {record_path} holds "
            f"(expected {record.get('sha256')}, actual {actual}): the file is damaged or was replaced; delete "
            f"{folder} to make it again."
        )
    return model.path
