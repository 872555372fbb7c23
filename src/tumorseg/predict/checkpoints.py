"""Find, download, check and load trained checkpoints.

A checkpoint is named by a local path or an ``http(s)://`` URL. URLs are downloaded once into
``<cache>/checkpoints/`` (``<cache>`` is ``tumorseg.io.cache_root()``: ``$TUMORSEG_CACHE``,
``$XDG_CACHE_HOME/tumorseg`` or ``~/.cache/tumorseg``, as for the preprocessing cache) with
``torch.hub.download_url_to_file``, verified, and reused from there without any network access. Checkpoints are read with ``torch.load(weights_only=True)``: the module's hyper-parameters
are plain data, so no pickled code runs when loading a file from the internet.

Example:
    >>> path = resolve_checkpoint("https://example.org/arunet3d.ckpt", sha256="9f86d0...")
    >>> model = load_model(path)
    >>> print(checkpoint_summary(load_checkpoint(path)))
"""

from __future__ import annotations

import ast
import hashlib
import http.client
import logging
import math
import re
import socket
import urllib.error
import urllib.parse
import warnings
import zipfile
from pathlib import Path

import torch

from tumorseg.io import atomic_path, cache_root
from tumorseg.labels import MODALITIES
from tumorseg.training.module import SegmentationModule

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointDownloadError",
    "checkpoint_summary",
    "current_hparams",
    "default_checkpoint_dir",
    "load_checkpoint",
    "load_model",
    "resolve_checkpoint",
]

DOWNLOAD_TIMEOUT = 60.0  # seconds without data before a download is abandoned
_CHUNK = 1 << 20  # bytes read at a time when hashing


class CheckpointDownloadError(OSError):
    """A checkpoint URL could not be fetched (HTTP error, refused connection, timeout, cut off)."""


# ------------------------------------------------------------------------------------ locating


def default_checkpoint_dir(cache_dir: str | Path | None = None) -> Path:
    """Folder of downloaded checkpoints: ``<cache>/checkpoints``.

    Args:
        cache_dir: the tumorseg cache folder. Defaults to ``$TUMORSEG_CACHE``, else
            ``$XDG_CACHE_HOME/tumorseg``, else ``~/.cache/tumorseg``.
    """
    return (cache_root() if cache_dir is None else Path(cache_dir).expanduser()) / "checkpoints"


def _is_url(spec: str | Path) -> bool:
    # a Path collapses "//", so only strings can be URLs
    return isinstance(spec, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", spec) is not None


def _cache_name(url: str) -> str:
    """``<12 hex digits of sha256(url)>-<file name>``: readable, and distinct for equal file names."""
    name = urllib.parse.unquote(Path(urllib.parse.urlsplit(url).path).name)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "checkpoint.ckpt"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_digest(sha256: str) -> str:
    digest = sha256.strip().lower()
    if digest.startswith("sha256:"):  # as printed by some registries
        digest = digest[len("sha256:") :]
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"`sha256` must be 64 hexadecimal digits, got {sha256!r}.")
    return digest


def resolve_checkpoint(
    spec: str | Path,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """The local file of a checkpoint, downloading it first when ``spec`` is a URL.

    A URL is downloaded once into ``<cache>/checkpoints/<hash>-<file name>`` (the hash of the URL
    keeps equal file names from different URLs apart) and later calls reuse that file without
    network access. The download goes to a temporary file in the same folder that replaces the
    final name only once complete and verified, so an interrupted download never looks cached.

    Args:
        spec: a local path, or an ``http://`` / ``https://`` URL.
        sha256: expected SHA-256 of the file (hex). When given, the file is verified, whether it
            is local, cached or freshly downloaded. Defaults to None (not verified).
        cache_dir: the tumorseg cache folder; downloads go to its ``checkpoints`` subfolder.
            Defaults to ``$TUMORSEG_CACHE``, ``$XDG_CACHE_HOME/tumorseg`` or ``~/.cache/tumorseg``.
        progress: show a progress bar on stderr while downloading. Defaults to True.

    Returns:
        The path of the checkpoint file.

    Raises:
        FileNotFoundError: a local path that is not a file.
        ValueError: a URL scheme other than http(s), a malformed ``sha256``, or a digest mismatch
            (a mismatching cached or downloaded file is deleted).
        CheckpointDownloadError: the URL could not be fetched (HTTP status, refused connection,
            timeout, download cut off).
    """
    expected = _normalise_digest(sha256) if sha256 is not None else None
    if not _is_url(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
            raise FileNotFoundError(f"Checkpoint {str(path)!r} {what}.")
        if expected is not None:
            actual = _sha256_file(path)
            if actual != expected:
                # the user's own file: reported, never deleted
                raise ValueError(
                    f"Checkpoint {path} does not have the expected SHA-256:\n  expected {expected}\n  actual   {actual}"
                )
        return path

    url = str(spec)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"Cannot fetch {url}: only http:// and https:// URLs or local paths are supported.")
    folder = default_checkpoint_dir(cache_dir)
    target = folder / _cache_name(url)

    if target.is_file():
        if expected is not None:
            actual = _sha256_file(target)
            if actual != expected:
                target.unlink(missing_ok=True)  # a bad file must not stay cached
                raise ValueError(
                    f"The cached download of {url} ({target}) does not have the expected SHA-256:\n"
                    f"  expected {expected}\n  actual   {actual}\n"
                    f"The cached file was deleted; check the digest, then run again to download it afresh."
                )
        log.debug("Using cached checkpoint %s for %s.", target, url)
        return target

    folder.mkdir(parents=True, exist_ok=True)
    log.info("Downloading %s to %s", url, target)
    # a private temporary name per process (concurrent downloads, e.g. DDP ranks, never mix),
    # renamed onto the target only once it checks out
    with atomic_path(target) as tmp:
        _download(url, tmp, progress)
        actual = _sha256_file(tmp)
        if expected is not None and actual != expected:
            raise ValueError(
                f"The download of {url} does not have the expected SHA-256:\n"
                f"  expected {expected}\n  actual   {actual}\n"
                f"Nothing was cached; check the URL and the digest."
            )
        # torch.hub does not compare the bytes received with Content-Length, so a cut-off download
        # would look complete; checkpoints are zip archives (torch.save's format), whose directory
        # ends the file, so a cut-off one is not a zip file
        if not zipfile.is_zipfile(tmp):
            raise CheckpointDownloadError(
                f"Cannot download {url}: the {tmp.stat().st_size} bytes received are not a whole checkpoint "
                f"(the connection closed early, or the URL serves something else). Nothing was cached; try again."
            )
    return target


def _download(url: str, path: Path, progress: bool) -> None:
    """``torch.hub.download_url_to_file`` (a temporary file renamed onto ``path`` when complete, a
    progress bar on stderr), with a timeout and errors that name the URL."""
    # torch.hub opens the URL without a timeout, so a server that accepts the connection but never
    # answers would hang forever; its sockets take the default timeout, set here for the download
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=progress)
    except urllib.error.HTTPError as err:
        err.close()
        raise CheckpointDownloadError(f"Cannot download {url}: HTTP {err.code} {err.reason}.") from err
    except urllib.error.URLError as err:
        raise CheckpointDownloadError(f"Cannot download {url}: {err.reason}.") from err
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        # raised while waiting for the response or reading its body
        reason = (
            f"no data for {DOWNLOAD_TIMEOUT:g} s" if isinstance(err, TimeoutError) else str(err) or type(err).__name__
        )
        raise CheckpointDownloadError(f"Cannot download {url}: {reason}. Nothing was cached; try again.") from err
    finally:
        socket.setdefaulttimeout(previous)


# ------------------------------------------------------------------------------------ loading


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


def current_hparams(hparams: dict) -> dict:
    """A checkpoint's hyper-parameters as this version's ``SegmentationModule`` takes them.

    Checkpoints written before the test-time settings had a config group of their own
    (``conf/inference``) recorded under ``inference`` only the validation window (from the model's
    config), without ``et_min_voxels``; their ``mirror`` was validation's, and ``predict.py`` did
    not mirror nor relabel unless told to. They keep predicting that way.
    """
    inference = dict(hparams.get("inference") or {})
    if "et_min_voxels" in inference:
        return hparams
    inference.update(mirror=False, val_mirror=bool(inference.get("mirror", False)), et_min_voxels=0)
    return {**hparams, "inference": inference}


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> SegmentationModule:
    """Rebuild the trained ``SegmentationModule`` of a checkpoint, in eval mode.

    The network is built from the checkpoint's hyper-parameters and its weights are loaded
    strictly, so a checkpoint of a different network version fails here rather than predicting
    with partly random weights. Older checkpoints' test-time settings are read as ``current_hparams`` says.

    Args:
        path: a local checkpoint file (see ``resolve_checkpoint`` for URLs).
        map_location: device of the returned model. Defaults to ``"cpu"``.

    Raises:
        ValueError: the file is not a tumorseg checkpoint, its hyper-parameters are not accepted
            by this version, or its weights do not fit the network (missing, unexpected or
            differently shaped parameters).
    """
    path = Path(path).expanduser()
    ckpt = load_checkpoint(path)
    try:
        model = SegmentationModule(**current_hparams(ckpt["hyper_parameters"]))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: its hyper-parameters do not build a network with this tumorseg version: {err}"
        ) from err
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        # torch lists every missing/unexpected/misshaped key; keep it, it shows what changed
        raise ValueError(
            f"{path}: its weights do not fit the {ckpt['hyper_parameters']['network'].get('name')} network "
            f"rebuilt from its hyper-parameters (written by a different version of the network?):\n{err}"
        ) from err
    model.on_load_checkpoint(ckpt)
    return model.to(map_location).eval()


# ------------------------------------------------------------------------------------ summary


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
