"""The local file of a checkpoint named by a path, a URL or a registered model's name.

URLs are downloaded once into ``<cache>/checkpoints/`` (``<cache>`` is ``tumorseg.io.cache_root()``:
``$TUMORSEG_CACHE``, ``$XDG_CACHE_HOME/tumorseg`` or ``~/.cache/tumorseg``, as for the preprocessing
cache), verified, and reused from there without any network access. A download cut short is kept
as ``<name>.part`` and continued by the next call where the server allows it (an HTTP range
request). Without a SHA-256 to check against, a loud warning prints the file's digest to pin.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from filelock import FileLock, Timeout
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from tumorseg.checkpoints.files import CHUNK, normalise_digest, sha256_file
from tumorseg.checkpoints.making import model_file
from tumorseg.checkpoints.registry import could_be_name, find_model, registered_models
from tumorseg.io import atomic_path, cache_root

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = 60.0  # seconds without data before a download is abandoned
MAX_DOWNLOAD_BYTES = 4 << 30  # the largest checkpoint downloaded; the paper presets' are far smaller


class CheckpointDownloadError(OSError):
    """A checkpoint URL could not be fetched (HTTP error, refused connection, timeout, cut off,
    too large, redirected to plain http)."""


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


def _check_scheme(url: str, allow_http: bool) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"Cannot fetch {url}: only https:// (or http://) URLs or local paths are supported.")
    if scheme == "http" and not allow_http:
        raise ValueError(
            f"Refusing to download {url}: plain http is not encrypted, so the checkpoint could be altered on "
            f"the way. Use an https:// URL, or set allow_http=true to accept it (and pin ckpt_sha256)."
        )


def _cache_name(url: str) -> str:
    """``<12 hex digits of sha256(url)>-<file name>``: readable, and distinct for equal file names."""
    name = urllib.parse.unquote(Path(urllib.parse.urlsplit(url).path).name)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "checkpoint.ckpt"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def _warn_unpinned(url: str, path: Path, digest: str) -> None:
    log.warning(
        "The checkpoint %s (%s) is NOT VERIFIED: no SHA-256 was given to check it against. If you trust "
        "this file, pin it with ckpt_sha256=%s (predict.py) or sha256=%r (Python).",
        url, path, digest, digest,
    )  # fmt: skip


def resolve_checkpoint(
    spec: str | Path,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    *,
    allow_http: bool = False,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """The local file of a checkpoint, downloading it first when ``spec`` is a URL, or the file of the
    registered model that ``spec`` names (``tumorseg.checkpoints.registry``: a shipped file, verified, or a
    model made on first use) when no file of that name exists.

    A URL is downloaded once into ``<cache>/checkpoints/<hash>-<file name>`` (the hash of the URL
    keeps equal file names from different URLs apart) and later calls reuse that file without
    network access. The bytes arrive in ``<hash>-<file name>.part``, which takes the final name
    only once complete and verified, so an interrupted download never looks cached; the next call
    continues it where the server answers range requests, else starts it again. Concurrent calls
    for one URL (e.g. several processes) wait for each other through a lock file beside it.

    Args:
        spec: a local path, an ``https://`` URL (``http://`` with ``allow_http``), or the name of a
            registered model (``phantom-arunet3d-v2``).
        sha256: expected SHA-256 of the file (hex). When given, the file is verified, whether it
            is local, cached or freshly downloaded. Defaults to None: a URL's file is then not
            verified, and a warning prints its digest to pin.
        cache_dir: the tumorseg cache folder; downloads go to its ``checkpoints`` subfolder.
            Defaults to ``$TUMORSEG_CACHE``, ``$XDG_CACHE_HOME/tumorseg`` or ``~/.cache/tumorseg``.
        progress: show a progress bar on stderr while downloading. Defaults to True.
        allow_http: accept plain ``http://`` URLs and redirects to them. Defaults to False.
        max_bytes: refuse a download larger than this. Defaults to ``MAX_DOWNLOAD_BYTES`` (4 GiB).

    Returns:
        The path of the checkpoint file.

    Raises:
        FileNotFoundError: a local path that is not a file.
        ValueError: a URL scheme other than https (or http with ``allow_http``), a malformed
            ``sha256``, or a digest mismatch (a mismatching cached or downloaded file is deleted).
        CheckpointDownloadError: the URL could not be fetched (HTTP status, refused connection,
            timeout, download cut off, larger than ``max_bytes``, redirected to plain http).
    """
    expected = normalise_digest(sha256) if sha256 is not None else None
    if not _is_url(spec):
        return _local_checkpoint(spec, expected)

    url = str(spec)
    _check_scheme(url, allow_http)
    folder = default_checkpoint_dir(cache_dir)
    target = folder / _cache_name(url)
    if target.is_file():
        return _cached(url, target, expected)

    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(target.with_name(f"{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("Waiting for another process downloading %s (lock %s).", url, lock.lock_file)
        lock.acquire()
    try:
        if target.is_file():  # the other process completed it
            return _cached(url, target, expected)
        _fetch(url, target, expected, progress=progress, allow_http=allow_http, max_bytes=max_bytes)
    finally:
        lock.release()
    # once the checkpoint exists nobody locks again (see above), so the lock file can go
    with contextlib.suppress(OSError):
        Path(lock.lock_file).unlink()
    return target


def _local_checkpoint(spec: str | Path, expected: str | None) -> Path:
    """A local file, or the file of the registered model that ``spec`` names, verified if ``expected``."""
    path = Path(spec).expanduser()
    if could_be_name(spec):
        model = find_model(spec)
        if model is not None:
            path = model_file(model)  # verified; a recipe's made first
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        if could_be_name(spec):
            names = ", ".join(m.name for m in registered_models())
            what += f", and no registered model has that name ({names or 'none is registered'})"
        raise FileNotFoundError(f"Checkpoint {str(path)!r} {what}.")
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            # the user's own file: reported, never deleted
            raise ValueError(
                f"Checkpoint {path} does not have the expected SHA-256:\n  expected {expected}\n  actual   {actual}"
            )
    return path


def _cached(url: str, target: Path, expected: str | None) -> Path:
    actual = sha256_file(target)
    if expected is None:
        _warn_unpinned(url, target, actual)
    elif actual != expected:
        target.unlink(missing_ok=True)  # a bad file must not stay cached
        raise ValueError(
            f"The cached download of {url} ({target}) does not have the expected SHA-256:\n"
            f"  expected {expected}\n  actual   {actual}\n"
            f"The cached file was deleted; check the digest, then run again to download it afresh."
        )
    log.debug("Using cached checkpoint %s for %s.", target, url)
    return target


def _fetch(url: str, target: Path, expected: str | None, **download) -> None:
    """Download ``url`` into ``target``'s partial file, verify it, then give it ``target``'s name."""
    part = target.with_name(f"{target.name}.part")
    log.info("Downloading %s to %s", url, target)
    _download(url, part, **download)
    actual = sha256_file(part)
    if expected is not None and actual != expected:
        _discard(part)
        raise ValueError(
            f"The download of {url} does not have the expected SHA-256:\n"
            f"  expected {expected}\n  actual   {actual}\n"
            f"Nothing was cached; check the URL and the digest."
        )
    # checkpoints are zip archives (torch.save's format), whose directory ends the file: a server
    # that sends no length and closes early, or an HTML page, is not one
    if not zipfile.is_zipfile(part):
        size = part.stat().st_size
        _discard(part)
        raise CheckpointDownloadError(
            f"Cannot download {url}: the {size} bytes received are not a whole checkpoint (the connection "
            f"closed early, or the URL serves something else). Nothing was cached; try again."
        )
    if expected is None:
        _warn_unpinned(url, target, actual)
    with atomic_path(target) as tmp:  # flushed to disk, then renamed onto the final name
        os.replace(part, tmp)
    _validator_file(part).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ downloading
#
# torch.hub.download_url_to_file cannot continue a download cut short (it always starts afresh in a
# new temporary file), so this small urllib loop does what it did (a progress bar, errors that name
# the URL) plus resuming, a size limit, a read timeout and refusing redirects to plain http.


class _RedirectsKeepTLS(urllib.request.HTTPRedirectHandler):
    """Follows redirects to https URLs, and to plain http ones only with ``allow_http``."""

    def __init__(self, allow_http: bool):
        self.allow_http = allow_http

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        newurl = urllib.parse.urljoin(req.full_url, newurl)
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https") or (scheme == "http" and not self.allow_http):
            raise CheckpointDownloadError(
                f"Cannot download {req.full_url}: the server redirects to {newurl}, which is not an https URL. "
                f"Ask for the https URL, or set allow_http=true to accept plain http."
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _validator_file(part: Path) -> Path:
    """Beside a partial download: the ETag or Last-Modified of the response it came from."""
    return part.with_name(f"{part.name}.validator")


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _validator_file(part).unlink(missing_ok=True)


def _resume_point(part: Path) -> tuple[int, str | None]:
    """Bytes already received and the validator to continue them with; (0, None) to start afresh.
    Without a validator a changed file could not be told apart, so such a part is not continued."""
    validator_file = _validator_file(part)
    if not part.is_file() or not validator_file.is_file():
        return 0, None
    validator = validator_file.read_text().strip()
    size = part.stat().st_size
    return (size, validator) if size and validator else (0, None)


def _validator(headers) -> str | None:
    """What ``If-Range`` may carry: a strong ETag, else Last-Modified."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _range_start_and_total(headers) -> tuple[int | None, int | None]:
    """``Content-Range: bytes START-END/TOTAL`` as (START, TOTAL); TOTAL may be ``*`` (None)."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", headers.get("Content-Range") or "")
    if match is None:
        return None, None
    return int(match.group(1)), None if match.group(3) == "*" else int(match.group(3))


def _open(opener, url: str, offset: int, validator: str | None):
    headers = {"User-Agent": "tumorseg", "Accept-Encoding": "identity"}
    if offset:
        # If-Range: the rest of the file only if it is still the same file, else the whole new one
        headers.update({"Range": f"bytes={offset}-", "If-Range": validator})
    return opener.open(urllib.request.Request(url, headers=headers), timeout=DOWNLOAD_TIMEOUT)


def _start(opener, url: str, part: Path):
    """The response to write into ``part``, the bytes of ``part`` it follows (0: the whole file) and
    the file's size when the server tells it."""
    offset, validator = _resume_point(part)
    response = None
    if offset:
        try:
            response = _open(opener, url, offset, validator)
        except urllib.error.HTTPError as err:
            if err.code != 416:
                raise
            err.close()  # the range starts past the file's end: the file changed
        else:
            start, total = _range_start_and_total(response.headers)
            if response.status == 206 and start == offset:
                log.info("Continuing the download of %s after %d bytes.", url, offset)
                return response, offset, total
            if response.status == 206:  # a range other than the one asked for
                response.close()
                response = None
            # else 200: no range support, or the file changed (If-Range): the whole file follows
    if response is None:
        response = _open(opener, url, 0, None)
    validator = _validator(response.headers)
    if validator:
        _validator_file(part).write_text(validator)
    else:
        _validator_file(part).unlink(missing_ok=True)
    length = response.headers.get("Content-Length")
    return response, 0, int(length) if length and length.isdigit() else None


def _download(url: str, part: Path, *, progress: bool, allow_http: bool, max_bytes: int) -> None:
    """Download ``url`` into ``part``, continuing the bytes already there when the server sends the
    rest (HTTP 206) and starting afresh when it sends the whole file (200). A download cut short
    raises, leaving what arrived in ``part`` for the next call."""
    too_large = f"more than the {max_bytes} bytes allowed (max_bytes); check the URL."
    opener = urllib.request.build_opener(_RedirectsKeepTLS(allow_http))
    try:
        response, received, total = _start(opener, url, part)
        with response:
            if total is not None and total > max_bytes:
                _discard(part)
                raise CheckpointDownloadError(f"Cannot download {url}: it is {total} bytes, {too_large}")
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn())  # fmt: skip
            with (
                open(part, "ab" if received else "wb") as file,
                Progress(*columns, console=Console(stderr=True), disable=not progress) as bar,
            ):
                task = bar.add_task(f"Downloading {part.name.removesuffix('.part')}", total=total, completed=received)
                while chunk := response.read(CHUNK):
                    received += len(chunk)
                    if received > max_bytes:
                        file.close()
                        _discard(part)
                        raise CheckpointDownloadError(f"Cannot download {url}: it sent {too_large}")
                    file.write(chunk)
                    bar.update(task, completed=received)
    except CheckpointDownloadError:
        raise
    except urllib.error.HTTPError as err:
        err.close()
        raise CheckpointDownloadError(f"Cannot download {url}: HTTP {err.code} {err.reason}.{_kept(part)}") from err
    except urllib.error.URLError as err:
        raise CheckpointDownloadError(f"Cannot download {url}: {err.reason}.{_kept(part)}") from err
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        # raised while waiting for the response or reading its body
        reason = (
            f"no data for {DOWNLOAD_TIMEOUT:g} s" if isinstance(err, TimeoutError) else str(err) or type(err).__name__
        )
        raise CheckpointDownloadError(f"Cannot download {url}: {reason}.{_kept(part)}") from err
    if total is not None and received < total:
        raise CheckpointDownloadError(
            f"Cannot download {url}: the connection closed after {received} of {total} bytes, so this is not "
            f"a whole checkpoint.{_kept(part)}"
        )


def _kept(part: Path) -> str:
    """What is left for the next call: the bytes received if it can continue them, else nothing."""
    offset, _ = _resume_point(part)
    if offset:
        return f" The {offset} bytes received are kept in {part}; run again to continue the download."
    _discard(part)
    return " Nothing was cached; try again."
