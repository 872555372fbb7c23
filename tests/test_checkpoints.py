"""Resolving, downloading, verifying and loading checkpoints, against a loopback HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import random
import re
import socket
import threading
import urllib.request
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import ModelCheckpoint
from train_helpers import CONF, tiny_overrides

from tumorseg.checkpoints import (
    CheckpointDownloadError,
    checkpoint_summary,
    download,
    load_checkpoint,
    resolve_checkpoint,
)
from tumorseg.launch import register_resolvers
from tumorseg.predict.predictor import Predictor
from tumorseg.training.module import SegmentationModule, load_model
from tumorseg.training.train import train

NETWORK = {"name": "arunet3d", "features": [4, 8, 16]}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached_files(cache: Path) -> list[Path]:
    """Everything in the download folder, partial downloads included (lock files are no data)."""
    folder = cache / "checkpoints"
    return sorted(p for p in folder.iterdir() if p.suffix != ".lock") if folder.exists() else []


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[SegmentationModule, Path]:
    """A small model and a real Lightning checkpoint of it, with a ModelCheckpoint best score."""
    torch.manual_seed(0)
    model = SegmentationModule(NETWORK, modalities=["flair", "t1ce"], labels="softmax4")
    folder = tmp_path_factory.mktemp("run")
    callback = ModelCheckpoint(dirpath=folder, monitor="val/dice_mean", mode="max")
    trainer = pl.Trainer(
        accelerator="cpu", callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.strategy.connect(model)
    callback.best_model_score = torch.tensor(0.8125)
    callback.best_model_path = str(folder / "best.ckpt")
    path = folder / "best.ckpt"
    trainer.save_checkpoint(path)
    return model.eval(), path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("TUMORSEG_CACHE", str(folder))
    return folder


class FileServer:
    """Serves ``root`` on 127.0.0.1 with what a checkpoint host may do: range requests (``ranges``,
    checked against a strong ETag by ``If-Range``), redirects (``redirects``: path -> location),
    closing the connection after ``cut_after`` bytes of the next answer, and answering without a
    Content-Length (``send_length``) or an ETag (``send_etag``). ``requests`` lists (path, Range
    header) asked for, ``statuses`` the status codes answered."""

    def __init__(self, root: Path):
        self.root = root
        self.ranges = True
        self.redirects: dict[str, str] = {}
        self.cut_after: int | None = None
        self.send_length = True
        self.send_etag = True
        self.requests: list[tuple[str, str | None]] = []
        self.statuses: list[int] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def send_response(self, code, message=None):
                server.statuses.append(code)
                super().send_response(code, message)

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                file = server.root / self.path.lstrip("/")
                if not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
                asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                start = 0
                if asked and server.ranges and self.headers.get("If-Range") in (None, etag):
                    start = int(asked.group(1))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                if server.send_etag:
                    self.send_header("ETag", etag)
                if server.send_length:
                    self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                self.wfile.write(body)

            def log_message(self, *args):  # keep the test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    files = FileServer(root)
    thread = threading.Thread(target=files.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield files
    finally:
        files.httpd.shutdown()
        files.httpd.server_close()
        thread.join(timeout=5)


def publish(server, trained, name: str = "model.ckpt") -> str:
    (server.root / name).parent.mkdir(parents=True, exist_ok=True)
    (server.root / name).write_bytes(trained[1].read_bytes())
    return f"{server.url}/{name}"


# ------------------------------------------------------------------------------------ download


def test_download_loads_the_same_model_and_is_cached(server, trained, cache, capsys):
    model, original = trained
    url = publish(server, trained)

    path = resolve_checkpoint(url, allow_http=True)  # with the progress bar
    assert path.parent == cache / "checkpoints"
    assert path.name.endswith("-model.ckpt")
    assert path.read_bytes() == original.read_bytes()
    assert sorted(path.parent.iterdir()) == [path]  # no partial, validator or lock file left behind
    assert server.requests == [("/model.ckpt", None)]

    loaded = load_model(path)
    assert not loaded.training
    assert loaded.hparams.modalities == ["flair", "t1ce"]
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)

    assert resolve_checkpoint(url, progress=False, allow_http=True) == path
    assert len(server.requests) == 1  # the second call never asked the server


def test_same_file_name_from_two_urls_does_not_collide(server, trained, cache):
    a = resolve_checkpoint(publish(server, trained, "a/model.ckpt"), progress=False, allow_http=True)
    b = resolve_checkpoint(publish(server, trained, "b/model.ckpt"), progress=False, allow_http=True)
    assert a != b and a.is_file() and b.is_file()


def test_sha256_match_passes(server, trained, cache):
    url = publish(server, trained)
    digest = sha256_of(trained[1])
    path = resolve_checkpoint(url, sha256=digest.upper(), progress=False, allow_http=True)
    assert sha256_of(path) == digest
    assert resolve_checkpoint(url, sha256=digest, progress=False, allow_http=True) == path  # cached, verified again
    assert len(server.requests) == 1


def test_sha256_mismatch_of_a_download_caches_nothing(server, trained, cache):
    url = publish(server, trained)
    wrong = "0" * 64
    with pytest.raises(ValueError, match="does not have the expected SHA-256") as info:
        resolve_checkpoint(url, sha256=wrong, progress=False, allow_http=True)
    message = str(info.value)
    assert url in message and wrong in message and sha256_of(trained[1]) in message
    assert cached_files(cache) == []


def test_sha256_mismatch_of_a_cached_file_deletes_it_without_network(server, trained, cache):
    url = publish(server, trained)
    path = resolve_checkpoint(url, progress=False, allow_http=True)
    wrong = "f" * 64
    with pytest.raises(ValueError, match=wrong) as info:
        resolve_checkpoint(url, sha256=wrong, progress=False, allow_http=True)
    assert url in str(info.value) and sha256_of(trained[1]) in str(info.value)
    assert not path.exists() and cached_files(cache) == []
    assert len(server.requests) == 1


def test_missing_sha256_warns_with_the_digest_to_pin(server, trained, cache, caplog):
    url = publish(server, trained)
    digest = sha256_of(trained[1])
    with caplog.at_level(logging.WARNING, logger=download.__name__):
        path = resolve_checkpoint(url, progress=False, allow_http=True)
        resolve_checkpoint(url, progress=False, allow_http=True)  # cached: still not verified
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    for message in warnings:
        assert "NOT VERIFIED" in message and url in message and str(path) in message
        assert f"ckpt_sha256={digest}" in message

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=download.__name__):
        resolve_checkpoint(url, sha256=digest, progress=False, allow_http=True)
        resolve_checkpoint(trained[1], progress=False)  # the user's own file
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_http_404_names_the_url_and_status(server, cache):
    url = f"{server.url}/missing.ckpt"
    with pytest.raises(CheckpointDownloadError, match="HTTP 404") as info:
        resolve_checkpoint(url, progress=False, allow_http=True)
    assert url in str(info.value)
    assert cached_files(cache) == []


def test_refused_connection_and_timeout_name_the_url(cache, monkeypatch):
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model.ckpt"
    with pytest.raises(CheckpointDownloadError, match="refused") as info:
        resolve_checkpoint(url, progress=False, allow_http=True)
    assert url in str(info.value)

    monkeypatch.setattr(download, "DOWNLOAD_TIMEOUT", 0.3)
    with socket.socket() as sock:  # accepts connections (backlog) but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/model.ckpt"
        with pytest.raises(CheckpointDownloadError, match="timed out|no data") as info:
            resolve_checkpoint(url, progress=False, allow_http=True)
    assert url in str(info.value)
    assert cached_files(cache) == []


def test_a_cut_off_download_is_continued_by_the_next_call(server, trained, cache):
    """The server announces the whole file, closes after a third of it, then serves the rest."""
    url = publish(server, trained)
    data = trained[1].read_bytes()
    server.cut_after = len(data) // 3
    with pytest.raises(CheckpointDownloadError, match=f"closed after {len(data) // 3} of {len(data)} bytes") as info:
        resolve_checkpoint(url, progress=False, allow_http=True)
    assert url in str(info.value) and "run again to continue" in str(info.value)
    (part, validator) = cached_files(cache)  # no checkpoint: the partial file and its ETag
    assert part.name.endswith("-model.ckpt.part") and part.stat().st_size == len(data) // 3
    assert validator.name == part.name + ".validator"

    path = resolve_checkpoint(url, sha256=sha256_of(trained[1]), progress=False, allow_http=True)
    assert path.read_bytes() == data and cached_files(cache) == [path]
    assert server.requests[-1] == ("/model.ckpt", f"bytes={len(data) // 3}-")
    assert server.statuses == [200, 206]  # only the rest was sent


def test_a_cut_off_download_starts_again_when_the_server_sends_the_whole_file(server, trained, cache):
    url = publish(server, trained)
    data = trained[1].read_bytes()
    server.cut_after = len(data) // 2
    with pytest.raises(CheckpointDownloadError, match="run again to continue"):
        resolve_checkpoint(url, progress=False, allow_http=True)
    server.ranges = False  # answers a range request with 200 and the whole file
    path = resolve_checkpoint(url, sha256=sha256_of(trained[1]), progress=False, allow_http=True)
    assert path.read_bytes() == data and cached_files(cache) == [path]
    assert server.requests[-1] == ("/model.ckpt", f"bytes={len(data) // 2}-")
    assert server.statuses == [200, 200]


def test_a_file_changed_between_two_attempts_is_not_mixed(server, trained, tmp_path, cache):
    """If-Range: the server sends the whole new file instead of the rest of the old one."""
    url = publish(server, trained)
    data = trained[1].read_bytes()
    server.cut_after = len(data) // 2
    with pytest.raises(CheckpointDownloadError, match="run again to continue"):
        resolve_checkpoint(url, progress=False, allow_http=True)
    ckpt = torch.load(trained[1], weights_only=True)
    ckpt["epoch"] = 7
    torch.save(ckpt, server.root / "model.ckpt")  # a new version under the same URL
    new = server.root / "model.ckpt"
    path = resolve_checkpoint(url, sha256=sha256_of(new), progress=False, allow_http=True)
    assert path.read_bytes() == new.read_bytes() and load_checkpoint(path)["epoch"] == 7
    assert server.requests[-1][1] == f"bytes={len(data) // 2}-" and server.statuses == [200, 200]


def test_a_cut_off_download_without_validator_caches_nothing(server, trained, cache):
    """No ETag nor Last-Modified: a later range could belong to another file, so nothing is kept."""
    url = publish(server, trained)
    server.send_etag = False
    server.cut_after = len(trained[1].read_bytes()) // 2
    with pytest.raises(CheckpointDownloadError, match="not a whole checkpoint.*Nothing was cached") as info:
        resolve_checkpoint(url, progress=False, allow_http=True)
    assert url in str(info.value)
    assert cached_files(cache) == []
    assert resolve_checkpoint(url, progress=False, allow_http=True).read_bytes() == trained[1].read_bytes()
    assert server.requests[-1] == ("/model.ckpt", None)


def test_a_download_without_length_that_is_not_a_checkpoint_caches_nothing(server, trained, cache):
    url = publish(server, trained)
    server.send_length = False  # the end of the connection ends the file: a cut looks complete
    server.cut_after = len(trained[1].read_bytes()) // 2
    with pytest.raises(CheckpointDownloadError, match="not a whole checkpoint") as info:
        resolve_checkpoint(url, progress=False, allow_http=True)
    assert url in str(info.value)
    assert cached_files(cache) == []


def test_a_redirect_is_followed(server, trained, cache):
    publish(server, trained)
    server.redirects["/latest.ckpt"] = "/model.ckpt"
    url = f"{server.url}/latest.ckpt"
    path = resolve_checkpoint(url, sha256=sha256_of(trained[1]), progress=False, allow_http=True)
    assert path.read_bytes() == trained[1].read_bytes()
    assert path.name.endswith("-latest.ckpt")  # cached under the URL asked for
    assert server.paths == ["/latest.ckpt", "/model.ckpt"]


def test_plain_http_needs_allow_http(cache):
    url = "http://127.0.0.1:9/model.ckpt"  # never contacted
    with pytest.raises(ValueError, match="allow_http=true") as info:
        resolve_checkpoint(url, progress=False)
    assert url in str(info.value) and "https://" in str(info.value)
    with pytest.raises(ValueError, match="allow_http=true"):
        Predictor.from_checkpoints([url], progress=False)
    assert cached_files(cache) == []


def test_a_redirect_to_plain_http_is_refused(server, trained, cache):
    publish(server, trained)
    # a host that sends https requests on to plain http: the redirect handler refuses the new URL
    handler = download._RedirectsKeepTLS(allow_http=False)
    request = urllib.request.Request("https://example.org/model.ckpt")
    for target in ("http://example.org/model.ckpt", "http://mirror.example.org/model.ckpt"):
        with pytest.raises(CheckpointDownloadError, match="allow_http=true") as info:
            handler.redirect_request(request, None, 302, "Found", {}, target)
        assert "https://example.org/model.ckpt" in str(info.value) and target in str(info.value)
    assert handler.redirect_request(request, None, 302, "Found", {}, "https://mirror.example.org/m.ckpt").full_url == (
        "https://mirror.example.org/m.ckpt"
    )
    lenient = download._RedirectsKeepTLS(allow_http=True)
    assert lenient.redirect_request(request, None, 302, "Found", {}, "http://example.org/m.ckpt") is not None
    with pytest.raises(CheckpointDownloadError, match="not an https URL"):
        lenient.redirect_request(request, None, 302, "Found", {}, "file:///etc/passwd")

    # the same handler on a real redirect: a download that, like an https one, may not go to plain http
    server.redirects["/latest.ckpt"] = f"{server.url}/model.ckpt"
    url = f"{server.url}/latest.ckpt"
    part = cache / "latest.part"
    with pytest.raises(CheckpointDownloadError, match="redirects to .*/model.ckpt") as info:
        download._download(url, part, progress=False, allow_http=False, max_bytes=download.MAX_DOWNLOAD_BYTES)
    assert url in str(info.value)
    assert server.paths == ["/latest.ckpt"] and not part.exists()


@pytest.mark.parametrize("send_length", [True, False])
def test_a_download_larger_than_max_bytes_is_refused(server, trained, cache, send_length):
    url = publish(server, trained)
    server.send_length = send_length  # refused from Content-Length, or once more bytes arrived
    limit = len(trained[1].read_bytes()) - 1
    with pytest.raises(CheckpointDownloadError, match=f"more than the {limit} bytes allowed") as info:
        resolve_checkpoint(url, progress=False, allow_http=True, max_bytes=limit)
    assert url in str(info.value)
    assert cached_files(cache) == []


def test_unsupported_scheme(cache):
    with pytest.raises(ValueError, match="only https:// .* URLs or local paths"):
        resolve_checkpoint("s3://bucket/model.ckpt")


# ------------------------------------------------------------------------------------ local files


def test_local_file_and_its_sha256(trained, cache):
    path = trained[1]
    assert resolve_checkpoint(str(path)) == path
    assert resolve_checkpoint(path, sha256=sha256_of(path)) == path
    with pytest.raises(ValueError, match="0{64}"):
        resolve_checkpoint(path, sha256="0" * 64)
    assert path.is_file()  # the user's own file is never deleted
    assert cached_files(cache) == []


def test_missing_local_file(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        resolve_checkpoint(missing)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_checkpoint(missing)


# ------------------------------------------------------------------------------------ loading


def test_corrupt_and_truncated_files_are_not_readable(tmp_path, trained):
    random_bytes = tmp_path / "random.ckpt"
    random_bytes.write_bytes(random.Random(0).randbytes(4096))
    truncated = tmp_path / "truncated.ckpt"
    data = trained[1].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    for path in (random_bytes, truncated, empty):
        with pytest.raises(ValueError, match="is not a readable PyTorch checkpoint") as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)
        with pytest.raises(ValueError, match="is not a readable PyTorch checkpoint"):
            load_model(path)


@pytest.mark.parametrize(
    "content",
    [
        {"weights": torch.zeros(2)},  # a bare state dict
        {"state_dict": {}, "hyper_parameters": {"lr": 1e-3}},  # another project's checkpoint
        [1, 2, 3],
    ],
)
def test_readable_file_that_is_not_a_tumorseg_checkpoint(tmp_path, content):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match="is not a tumorseg training checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_file_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({"state_dict": {}, "hyper_parameters": {"network": NETWORK}, "opaque": Path("x")}, path)
    with pytest.raises(ValueError, match="is not a tumorseg training checkpoint.*pickled objects"):
        load_checkpoint(path)


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape", "hparams"])
def test_weights_that_do_not_fit_name_the_file(tmp_path, trained, change):
    ckpt = torch.load(trained[1], weights_only=True)
    state = ckpt["state_dict"]
    if change == "missing":
        del state[next(iter(state))]
    elif change == "unexpected":
        state["net.extra.weight"] = torch.zeros(1)
    elif change == "shape":  # as from another version of the network
        ckpt["hyper_parameters"]["network"] = {**NETWORK, "features": [4, 8, 32]}
    else:
        ckpt["hyper_parameters"]["no_such_option"] = 1
    path = tmp_path / f"{change}.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(ValueError) as info:
        load_model(path)
    assert str(path) in str(info.value)
    expected = {"missing": "Missing key", "unexpected": "Unexpected key", "shape": "size mismatch"}
    assert expected.get(change, "no_such_option") in str(info.value)


def test_summary_of_a_training_checkpoint(trained):
    ckpt = load_checkpoint(trained[1])
    summary = checkpoint_summary(ckpt)
    assert summary["network"] == "arunet3d"
    assert summary["preset"] == "light"
    assert summary["overrides"] == {"features": [4, 8, 16]}
    assert summary["labels"] == "softmax4"
    assert summary["modalities"] == ["flair", "t1ce"]
    assert summary["epoch"] == 0 and summary["global_step"] == 0
    assert summary["best"]["monitor"] == "val/dice_mean"
    assert summary["best"]["score"] == pytest.approx(0.8125)
    assert summary["best"]["mode"] == "max"
    assert summary["lightning_version"]


def test_summary_without_a_best_score():
    ckpt = {"state_dict": {}, "hyper_parameters": {"network": {"name": "pspnet3d", "preset": "paper"}}, "epoch": 3}
    summary = checkpoint_summary(ckpt)
    assert summary["network"] == "pspnet3d" and summary["preset"] == "paper"
    assert summary["labels"] == "regions" and summary["epoch"] == 3
    assert summary["best"] is None and summary["global_step"] is None


# ------------------------------------------------------------------------------------ safe loading


def test_resume_and_load_pass_weights_only(tmp_path, data_dir, monkeypatch):
    """Resuming a training and loading a model read the checkpoint with weights_only=True, not
    relying on torch's default (True only from torch 2.6); the training checkpoint holds nothing
    that the safe unpickler refuses."""
    register_resolvers()
    # a small network and one validation case keep the two trainings short
    small = ["+model.network.features=[4,8,16]", "trainer.limit_val_batches=1"]

    def config(run: str, epochs: int, *overrides: str):
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=[*tiny_overrides(tmp_path, data_dir, epochs=epochs), *overrides])
        cfg.paths.output_dir = str(tmp_path / run)
        return cfg

    train(config("first", 1, *small))
    first = tmp_path / "first" / "checkpoints" / "last.ckpt"
    loads = []
    torch_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return torch_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    train(config("second", 2, *small, f"ckpt_path={first}"))
    assert loads and all(w is True for w in loads), loads
    info = json.loads((tmp_path / "second" / "run_info.json").read_text())
    assert info["resumed_from"] == str(first)
    last = tmp_path / "second" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["epoch"] == 1

    loads.clear()
    load_model(last)
    assert loads == [True]
