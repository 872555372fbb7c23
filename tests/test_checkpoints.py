"""Resolving, downloading, verifying and loading checkpoints, against a loopback HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import random
import socket
import threading
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tumorseg.predict import checkpoints
from tumorseg.predict.checkpoints import (
    CheckpointDownloadError,
    checkpoint_summary,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
)
from tumorseg.training.module import SegmentationModule

NETWORK = {"name": "arunet3d", "features": [4, 8, 16]}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached_files(cache: Path) -> list[Path]:
    """Everything in the download folder, temporary files included."""
    folder = cache / "checkpoints"
    return sorted(folder.iterdir()) if folder.exists() else []


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


@pytest.fixture
def server(tmp_path):
    """Serves ``root`` on 127.0.0.1; ``requests`` lists the paths asked for."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep the test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield type("Server", (), {"root": root, "url": base, "requests": requests})
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def publish(server, trained, name: str = "model.ckpt") -> str:
    (server.root / name).parent.mkdir(parents=True, exist_ok=True)
    (server.root / name).write_bytes(trained[1].read_bytes())
    return f"{server.url}/{name}"


# ------------------------------------------------------------------------------------ download


def test_download_loads_the_same_model_and_is_cached(server, trained, cache, capsys):
    model, original = trained
    url = publish(server, trained)

    path = resolve_checkpoint(url)  # with the progress bar
    assert path.parent == cache / "checkpoints"
    assert path.name.endswith("-model.ckpt")
    assert path.read_bytes() == original.read_bytes()
    assert cached_files(cache) == [path]  # no temporary file left behind
    assert server.requests == ["/model.ckpt"]

    loaded = load_model(path)
    assert not loaded.training
    assert loaded.hparams.modalities == ["flair", "t1ce"]
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)

    assert resolve_checkpoint(url, progress=False) == path
    assert len(server.requests) == 1  # the second call never asked the server


def test_same_file_name_from_two_urls_does_not_collide(server, trained, cache):
    a = resolve_checkpoint(publish(server, trained, "a/model.ckpt"), progress=False)
    b = resolve_checkpoint(publish(server, trained, "b/model.ckpt"), progress=False)
    assert a != b and a.is_file() and b.is_file()


def test_sha256_match_passes(server, trained, cache):
    url = publish(server, trained)
    digest = sha256_of(trained[1])
    path = resolve_checkpoint(url, sha256=digest.upper(), progress=False)
    assert sha256_of(path) == digest
    assert resolve_checkpoint(url, sha256=digest, progress=False) == path  # cached, verified again
    assert len(server.requests) == 1


def test_sha256_mismatch_of_a_download_caches_nothing(server, trained, cache):
    url = publish(server, trained)
    wrong = "0" * 64
    with pytest.raises(ValueError) as info:
        resolve_checkpoint(url, sha256=wrong, progress=False)
    message = str(info.value)
    assert url in message and wrong in message and sha256_of(trained[1]) in message
    assert cached_files(cache) == []


def test_sha256_mismatch_of_a_cached_file_deletes_it_without_network(server, trained, cache):
    url = publish(server, trained)
    path = resolve_checkpoint(url, progress=False)
    wrong = "f" * 64
    with pytest.raises(ValueError, match=wrong) as info:
        resolve_checkpoint(url, sha256=wrong, progress=False)
    assert url in str(info.value) and sha256_of(trained[1]) in str(info.value)
    assert not path.exists() and cached_files(cache) == []
    assert len(server.requests) == 1


def test_http_404_names_the_url_and_status(server, cache):
    url = f"{server.url}/missing.ckpt"
    with pytest.raises(CheckpointDownloadError) as info:
        resolve_checkpoint(url, progress=False)
    assert url in str(info.value) and "404" in str(info.value)
    assert cached_files(cache) == []


def test_refused_connection_and_timeout_name_the_url(cache, monkeypatch):
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model.ckpt"
    with pytest.raises(CheckpointDownloadError, match="refused") as info:
        resolve_checkpoint(url, progress=False)
    assert url in str(info.value)

    monkeypatch.setattr(checkpoints, "DOWNLOAD_TIMEOUT", 0.3)
    with socket.socket() as sock:  # accepts connections (backlog) but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/model.ckpt"
        with pytest.raises(CheckpointDownloadError, match="timed out|no data") as info:
            resolve_checkpoint(url, progress=False)
    assert url in str(info.value)
    assert cached_files(cache) == []


def test_a_cut_off_download_caches_nothing(trained, cache):
    """The server announces the whole file and closes after half of it."""
    data = trained[1].read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/model.ckpt"
    try:
        with pytest.raises(CheckpointDownloadError, match="not a whole checkpoint") as info:
            resolve_checkpoint(url, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert url in str(info.value)
    assert cached_files(cache) == []


def test_unsupported_scheme(cache):
    with pytest.raises(ValueError, match="http"):
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
