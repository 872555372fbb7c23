"""The model shipped with the package: its registry, its verification before loading, predict.py
without ckpt_path, and every model the packaged registry lists (whole, and loadable safely)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from brats_fixtures import write_dataset
from test_predict import SHAPE, predict_cfg, stand_in

from tumorseg.checkpoints import (
    NO_MODEL_HINT,
    REGISTRY_ENV,
    ModelError,
    checkpoint_summary,
    default_model,
    load_checkpoint,
    packaged_registry,
    registered_models,
    resolve_checkpoint,
    sha256_file,
    shipped_model,
    verify,
)
from tumorseg.launch import register_resolvers
from tumorseg.predict import run
from tumorseg.predict.cli import build_predictor
from tumorseg.training.module import load_model

register_resolvers()
NAME = "phantoms-test"
NOTICE = "It learned from synthetic data only (phantoms) and is not for clinical use."


def write_registry(folder: Path, ckpt: Path | None, **changes) -> Path:
    """A registry in ``folder`` whose one model (the default) is a copy of ``ckpt`` beside it, its
    entry's fields replaced by ``changes``; no model when ``ckpt`` is None."""
    folder.mkdir(parents=True, exist_ok=True)
    models = []
    if ckpt is not None:
        target = shutil.copyfile(ckpt, folder / f"{NAME}.ckpt")
        entry = {
            "name": NAME, "file": target.name, "sha256": sha256_file(target), "bytes": target.stat().st_size,
            "network": "arunet3d", "training_data": "synthetic phantoms of tumorseg.phantoms", "notice": NOTICE,
        }  # fmt: skip
        models.append({**entry, **changes})
    registry = folder / "pretrained.json"
    registry.write_text(json.dumps({"models": models}, indent=2))
    return registry


@pytest.fixture
def edema_model(tmp_path) -> Path:
    return stand_in(tmp_path / "edema.ckpt", (10.0, -10.0, -10.0))  # WT only: edema wherever it looks


@pytest.fixture
def predict_command(tmp_path, monkeypatch, hydra_script):
    """``python predict.py OVERRIDES`` with ``registry`` as the registry of shipped models: its exit
    status, stdout and stderr."""

    def invoke(registry: Path, *overrides: str) -> tuple[int, str, str]:
        monkeypatch.setenv(REGISTRY_ENV, str(registry))
        return hydra_script("predict.py", f"paths.root_dir={tmp_path}", "progress=false", *overrides)

    return invoke


def test_predict_without_ckpt_path_uses_the_shipped_model_and_says_so_once(tmp_path, edema_model, predict_command):
    registry = write_registry(tmp_path / "weights", edema_model)
    data = tmp_path / "data"
    ids = write_dataset(data, "brats2020", 2, shape=SHAPE)
    out = tmp_path / "seg"
    status, out_text, err = predict_command(registry, f"input={data}", f"output_dir={out}")
    assert status == 0, err[-3000:]
    assert "2 written, 0 kept, 0 skipped, 0 failed" in out_text
    (model,) = registered_models(registry)
    banner = f"Shipped model {NAME} (arunet3d, SHA-256 {model.sha256}): {NOTICE}"
    assert out_text.count(NOTICE) == 1 and banner in out_text.splitlines()
    assert NOTICE not in err
    for case_id in ids:
        values = set(np.unique(np.asarray(nib.load(out / f"{case_id}.nii.gz").dataobj)).tolist())
        assert 2 in values and values <= {0, 2}  # the shipped model's edema


@pytest.mark.parametrize("damage", ["altered", "truncated", "missing"])
def test_a_damaged_shipped_file_is_refused_naming_it(tmp_path, edema_model, monkeypatch, damage):
    registry = write_registry(tmp_path / "weights", edema_model)
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    file = tmp_path / "weights" / f"{NAME}.ckpt"
    content = bytearray(file.read_bytes())
    if damage == "altered":  # the same size: only the digest tells
        content[len(content) // 2] ^= 0xFF
        file.write_bytes(content)
        expected = (
            rf"does not have the SHA-256 that {registry} lists \(expected [0-9a-f]{{64}}, actual [0-9a-f]{{64}}\)"
        )
    elif damage == "truncated":
        file.write_bytes(content[:1000])
        expected = rf"has 1000 bytes, but {registry} lists {len(content)}"
    else:
        file.unlink()
        expected = f"is listed in {registry}, but its file {file} is missing"
    with pytest.raises(ModelError, match=expected) as raised:
        build_predictor(predict_cfg(tmp_path))
    message = str(raised.value)
    assert str(file) in message and "reinstall tumorseg" in message and "ckpt_path=PATH" in message
    assert "\n" not in message


def test_a_digest_that_does_not_match_the_file_is_refused(tmp_path, edema_model, monkeypatch):
    registry = write_registry(tmp_path / "weights", edema_model, sha256="0" * 64)
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    with pytest.raises(ModelError, match=f"{NAME} .*{tmp_path / 'weights' / NAME}.ckpt.*expected {'0' * 64}"):
        shipped_model()


def test_no_shipped_model_ends_with_one_line_and_exit_status_2(tmp_path, predict_command):
    registry = write_registry(tmp_path / "weights", None)
    data = tmp_path / "data"
    write_dataset(data, "brats2020", 1, shape=SHAPE)
    status, _, err = predict_command(registry, f"input={data}", f"output_dir={tmp_path / 'seg'}")
    assert status == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last == f"error: {NO_MODEL_HINT} This installation ships no model: {registry} lists none."
    assert "ckpt_path=PATH" in NO_MODEL_HINT
    assert "Traceback" not in err and "Error executing job" not in err
    assert not (tmp_path / "seg").exists()


def test_an_explicit_ckpt_path_wins(tmp_path, edema_model, monkeypatch, capsys):
    registry = write_registry(tmp_path / "weights", edema_model)
    (tmp_path / "weights" / f"{NAME}.ckpt").unlink()  # the shipped model would fail: it is not looked at
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    data = tmp_path / "data"
    (case_id,) = write_dataset(data, "brats2020", 1, shape=SHAPE)
    everything = stand_in(tmp_path / "et.ckpt", (10.0, 10.0, 10.0))
    out = tmp_path / "seg"
    assert run(predict_cfg(tmp_path, f"ckpt_path={everything}", f"input={data}", f"output_dir={out}")) == 0
    assert set(np.unique(np.asarray(nib.load(out / f"{case_id}.nii.gz").dataobj))) == {4}  # its ET, not edema
    assert "Shipped model" not in capsys.readouterr().out
    # a list and a pinned digest, as before
    predictor = build_predictor(
        predict_cfg(
            tmp_path, f"ckpt_path=[{everything},{edema_model}]", f"ckpt_sha256=[{sha256_file(everything)},null]"
        )
    )
    assert predictor.names == [str(everything), str(edema_model)]


def test_a_registered_name_is_a_ckpt_path_and_recipes_are_never_the_default(tmp_path, edema_model, monkeypatch, capsys):
    registry = write_registry(tmp_path / "weights", edema_model)
    entries = json.loads(registry.read_text())["models"]
    recipe = {"name": "made-later", "recipe": ["experiment=phantom_model"], "network": "arunet3d",
              "training_data": "phantoms", "notice": NOTICE}  # fmt: skip
    registry.write_text(json.dumps({"models": [recipe, *entries]}))  # a recipe first
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    shipped = tmp_path / "weights" / f"{NAME}.ckpt"
    assert default_model().name == NAME  # the first shipped file
    predictor = build_predictor(predict_cfg(tmp_path, f"ckpt_path={NAME}"))
    assert predictor.names == [str(shipped)]
    assert capsys.readouterr().out.count(NOTICE) == 1  # its notice, once
    # as the export and init_from resolve it too: verified first
    assert resolve_checkpoint(NAME, sha256_file(shipped)) == shipped
    with pytest.raises(FileNotFoundError, match=rf"no registered model has that name \(made-later, {NAME}\)"):
        resolve_checkpoint("made-latr")
    shipped.write_bytes(shipped.read_bytes()[:1000])
    with pytest.raises(ModelError, match=f"The shipped model {NAME} .* has 1000 bytes"):
        build_predictor(predict_cfg(tmp_path, f"ckpt_path={NAME}"))


def test_a_registry_of_recipes_only_ships_no_default(tmp_path):
    registry = tmp_path / "pretrained.json"
    recipe = {"name": "made-later", "recipe": ["model=pspnet3d"], "network": "pspnet3d", "training_data": "x",
              "notice": NOTICE}  # fmt: skip
    registry.write_text(json.dumps({"models": [recipe]}))
    with pytest.raises(
        ModelError, match=r"ships no model: .* lists none \(only models made on first use: made-later\)"
    ):
        default_model(registry)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"file": "x.ckpt"}, "give either `file` .* or `recipe`"),
        ({"recipe": []}, "`recipe` must be a non-empty list of train.py overrides"),
        ({"recipe": "model=pspnet3d"}, "`recipe` must be a non-empty list"),
        ({"recipe": ["model=pspnet3d", "hydra.run.dir=x"]}, "`recipe` must not set hydra.run.dir=x"),
        ({"recipe": ["+paths.data_dir=x"]}, "`recipe` must not set \\+paths.data_dir=x"),
        ({"time_to_make": 30}, "`time_to_make` must be a non-empty string"),
        ({"notice": None}, "missing notice"),
    ],
)
def test_a_malformed_recipe_is_reported_naming_it(tmp_path, change, expected):
    entry = {"name": "made-later", "recipe": ["model=pspnet3d"], "network": "pspnet3d", "training_data": "x",
             "notice": NOTICE}  # fmt: skip
    entry = {k: v for k, v in {**entry, **change}.items() if v is not None}
    registry = tmp_path / "pretrained.json"
    registry.write_text(json.dumps({"models": [entry]}))
    with pytest.raises(ModelError, match=rf"model 1 \(made-later\): {expected}"):
        registered_models(registry)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "is not valid JSON"),
        ('{"entries": []}', "expected an object with a list `models`"),
        ({"sha256": None}, r"model 1 \(phantoms-test\): missing sha256; fix the entry"),
        ({"sha256": "abc"}, "must be 64 hexadecimal digits"),
        ({"bytes": "12"}, "`bytes` must be an integer"),
        ({"notice": " "}, "`notice` must be a non-empty string"),
        ({"file": "../elsewhere.ckpt"}, "`file` must be the name of a file beside the registry"),
    ],
)
def test_a_malformed_registry_is_reported_naming_it(tmp_path, edema_model, content, expected):
    registry = write_registry(tmp_path / "weights", edema_model)
    if isinstance(content, str):
        registry.write_text(content)
    else:
        entry = json.loads(registry.read_text())["models"][0]
        entry.update(content)
        entry = {k: v for k, v in entry.items() if v is not None}
        registry.write_text(json.dumps({"models": [entry]}))
    with pytest.raises(ModelError, match=expected) as raised:
        registered_models(registry)
    assert str(registry) in str(raised.value)


# ------------------------------------------------------------------------------------ the packaged registry


def test_the_packaged_registry_is_valid():
    registered_models(packaged_registry())  # raises, naming the entry, if not


def _packaged_models() -> list:
    try:
        return registered_models(packaged_registry())
    except ModelError:
        return []  # test_the_packaged_registry_is_valid says why


PACKAGED = [m for m in _packaged_models() if m.shipped]  # the recipes: tests/test_init_from.py


@pytest.mark.parametrize(
    "model",
    [pytest.param(m, id=m.name) for m in PACKAGED]
    or [pytest.param(None, id="none", marks=pytest.mark.skip(reason="the packaged registry ships no model yet"))],
)
def test_each_packaged_model_is_whole_and_loads_safely(model):
    assert model.path.is_file(), f"{model.path} is listed in {model.registry} but missing"
    assert model.path.stat().st_size == model.bytes
    assert sha256_file(model.path) == model.sha256
    assert verify(model) == model.path
    ckpt = load_checkpoint(model.path)  # torch.load(weights_only=True): plain data only
    assert checkpoint_summary(ckpt)["network"] == model.network
    load_model(model.path)  # the network rebuilds from its hyper-parameters and its weights fit strictly
    # the notice names what it learned from
    assert ("synthetic" in model.notice or "BraTS" in model.notice) and "not for clinical use" in model.notice
