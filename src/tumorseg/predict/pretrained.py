"""The models shipped with tumorseg, and the one ``predict.py`` uses when no ``ckpt_path`` is given.

``tumorseg/weights/pretrained.json``, installed with the package, lists them::

    {"models": [{"name": ..., "file": "<name>.ckpt", "sha256": ..., "bytes": ..., "network": ...,
                 "training_data": ..., "notice": ...}, ...]}

``file`` lies beside the registry; the first entry is the default model. Before a shipped file is
loaded, its size and SHA-256 are checked against its entry, so that a truncated or replaced file is
refused instead of predicting with other weights. ``$TUMORSEG_PRETRAINED_REGISTRY`` names another
registry file, whose ``file`` entries lie beside it.

Example:
    >>> model = shipped_model()  # the default model, verified
    >>> print(model.banner())
    >>> predictor = Predictor.from_checkpoints([model.path])
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

from tumorseg.predict.cases import PredictionError
from tumorseg.predict.checkpoints import _normalise_digest, sha256_file

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "REGISTRY_ENV",
    "PretrainedModel",
    "default_model",
    "packaged_registry",
    "registered_models",
    "registry_file",
    "shipped_model",
    "verify",
]

REGISTRY_ENV = "TUMORSEG_PRETRAINED_REGISTRY"
_PACKAGE, _REGISTRY_NAME = "tumorseg.weights", "pretrained.json"
_FIELDS = {"name": str, "file": str, "sha256": str, "bytes": int, "network": str, "training_data": str, "notice": str}
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
    """One entry of the registry; ``path`` is where its checkpoint file should be."""

    name: str
    path: Path
    sha256: str
    bytes: int
    network: str
    training_data: str
    notice: str
    registry: str  # the registry that lists it, for messages

    def banner(self) -> str:
        """What a run that uses it prints once: its name, its SHA-256 and its notice."""
        return f"Shipped model {self.name} ({self.network}, SHA-256 {self.sha256}): {self.notice}"


def packaged_registry() -> Traversable:
    """The registry installed with the package."""
    return importlib.resources.files(_PACKAGE) / _REGISTRY_NAME


def registry_file() -> Traversable:
    """``$TUMORSEG_PRETRAINED_REGISTRY`` if set, else the registry installed with the package."""
    override = os.environ.get(REGISTRY_ENV)
    return Path(override).expanduser() if override else packaged_registry()


def _local(resource: Traversable) -> Path:
    """A file of the registry's folder as a path torch can open."""
    if isinstance(resource, Path) or not resource.is_file():
        return Path(str(resource))
    return _extracted.enter_context(importlib.resources.as_file(resource))


def _entry_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return f"an entry is a {type(entry).__name__}, not an object"
    missing = [key for key in _FIELDS if key not in entry]
    if missing:
        return f"missing {', '.join(missing)}"
    for key, kind in _FIELDS.items():
        value = entry[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value.strip()):
            return f"`{key}` must be a{' non-empty string' if kind is str else 'n integer'}, got {value!r}"
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
    """The models a registry lists, in its order (the first is the default).

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
        path = _local(folder / entry["file"])
        models.append(
            PretrainedModel(
                name=entry["name"], path=path, sha256=_normalise_digest(entry["sha256"]), bytes=entry["bytes"],
                network=entry["network"], training_data=entry["training_data"], notice=entry["notice"].strip(),
                registry=where,
            )
        )  # fmt: skip
    return models


def default_model(registry: Traversable | Path | None = None) -> PretrainedModel:
    """The first model of the registry (not yet verified: see ``verify``).

    Raises:
        PredictionError: the registry lists no model, or is malformed.
    """
    models = registered_models(registry)
    if not models:
        where = registry if registry is not None else registry_file()
        raise PredictionError(f"{NO_MODEL_HINT} This installation ships no model: {where} lists none.")
    return models[0]


def verify(model: PretrainedModel) -> Path:
    """The checkpoint file of ``model``, once its size and SHA-256 match its registry entry.

    Raises:
        PredictionError: the file is missing, or its size or SHA-256 differ from the entry's (the
            message names the file and what to do).
    """
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
