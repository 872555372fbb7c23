"""Trained checkpoints: find them (a path, a URL downloaded once into the cache, or the name of a
registered model), verify, read and summarise them, and the registry of shipped models and of those
made on first use.

The package reads files only: it builds no network (``tumorseg.training.load_model`` does) and
imports neither ``predict`` nor ``export``, which both use it.

Example:
    >>> path = resolve_checkpoint("https://example.org/arunet3d.ckpt", sha256="9f86d0...")
    >>> print(checkpoint_summary(load_checkpoint(path)))
    >>> model_file(find_model("phantom-pspnet3d-v2"))  # made on first use (about 30 minutes on a CPU)
"""

from tumorseg.checkpoints.download import (
    MAX_DOWNLOAD_BYTES,
    CheckpointDownloadError,
    default_checkpoint_dir,
    resolve_checkpoint,
)
from tumorseg.checkpoints.files import checkpoint_summary, load_checkpoint, normalise_digest, sha256_file
from tumorseg.checkpoints.making import make_model, model_file, slim_checkpoint
from tumorseg.checkpoints.registry import (
    NO_MODEL_HINT,
    REGISTRY_ENV,
    ModelError,
    PretrainedModel,
    could_be_name,
    default_model,
    find_model,
    made_file,
    made_folder,
    packaged_registry,
    registered_models,
    registry_file,
    shipped_model,
    verify,
)

__all__ = [
    "MAX_DOWNLOAD_BYTES",
    "NO_MODEL_HINT",
    "REGISTRY_ENV",
    "CheckpointDownloadError",
    "ModelError",
    "PretrainedModel",
    "checkpoint_summary",
    "could_be_name",
    "default_checkpoint_dir",
    "default_model",
    "find_model",
    "load_checkpoint",
    "made_file",
    "made_folder",
    "make_model",
    "model_file",
    "normalise_digest",
    "packaged_registry",
    "registered_models",
    "registry_file",
    "resolve_checkpoint",
    "sha256_file",
    "shipped_model",
    "slim_checkpoint",
    "verify",
]
