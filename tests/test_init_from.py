"""init_from: a training that starts from another model's network weights (a file, a registered
model, a recipe made on first use), checked to be the same network; resuming wins over it."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from hydra import compose, initialize_config_dir
from test_predict import save_checkpoint
from test_pretrained import NAME, NOTICE, write_registry
from test_train import make_cfg
from train_helpers import CONF, StartProbe, tiny_overrides

from tumorseg.checkpoints import (
    REGISTRY_ENV,
    find_model,
    made_file,
    make_model,
    making,
    model_file,
    registry,
    sha256_file,
)
from tumorseg.launch import register_resolvers
from tumorseg.training.init_from import check_same_network, load_initial_weights, recipe_hparams
from tumorseg.training.module import SegmentationModule
from tumorseg.training.train import train

register_resolvers()
SOURCE_SPACING = [2.0, 2.0, 2.0]  # the tiny runs' phantoms are at 5 x 6 x 4.84 mm
# the network of tiny_overrides' runs (conf/model/arunet3d.yaml and conf/train.yaml)
TINY_NETWORK = {"name": "arunet3d", "preset": "light", "norm": "instance"}
RECIPE = "tiny-recipe"


def source_checkpoint(path: Path, seed: int = 0, modalities=("flair", "t1", "t1ce", "t2"), labels="regions", **network):
    """A checkpoint of random weights (``seed``) of the tiny runs' network with ``network`` changed,
    whose data was at ``SOURCE_SPACING``."""
    torch.manual_seed(seed)
    model = SegmentationModule(
        {**TINY_NETWORK, **network}, modalities=list(modalities), labels=labels, preprocess={"spacing": SOURCE_SPACING}
    )
    return save_checkpoint(model, path)


def tiny_run_module(**network) -> SegmentationModule:
    return SegmentationModule({**TINY_NETWORK, **network})


def net_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


def recipe_registry(folder: Path, data_dir: Path) -> Path:
    """A registry whose one model, ``RECIPE``, is made by a 1-epoch tiny training (not a shipped file)."""
    recipe = [o for o in tiny_overrides(data_dir, data_dir) if not o.startswith("paths.")]
    entry = {"name": RECIPE, "recipe": recipe, "time_to_make": "a few seconds", "network": "arunet3d",
             "training_data": "6 tiny phantoms", "notice": NOTICE}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    registry = folder / "pretrained.json"
    registry.write_text(json.dumps({"models": [entry]}))
    return registry


def test_init_from_a_registered_name_takes_the_network_weights_only(tmp_path, data_dir, monkeypatch):
    source = source_checkpoint(tmp_path / "source.ckpt")
    registry = write_registry(tmp_path / "weights", source)  # NAME, a shipped file: a copy of source
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    shipped = tmp_path / "weights" / f"{NAME}.ckpt"
    run_dir = tmp_path / "run"
    overrides = [
        *tiny_overrides(tmp_path, data_dir),
        f"init_from={NAME}",
        "+callbacks.start._target_=train_helpers.StartProbe",
    ]
    _, objects = train(make_cfg(overrides, run_dir))

    probe = next(c for c in objects["trainer"].callbacks if isinstance(c, StartProbe))
    expected = net_weights(source)
    assert probe.weights.keys() == expected.keys()
    assert all(torch.equal(probe.weights[k], expected[k]) for k in expected)  # every tensor, exactly
    assert (probe.epoch, probe.step, probe.optimizer_state) == (0, 0, {})  # a fresh optimizer at epoch 0
    trained = net_weights(run_dir / "checkpoints" / "last.ckpt")
    assert any(not torch.equal(trained[k], expected[k]) for k in expected)  # and then it trained

    record = {"spec": NAME, "path": str(shipped.resolve()), "sha256": sha256_file(source), "registered_model": NAME}
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["init_from"] == record and info["resumed_from"] is None
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["init_from"] == record
    # the run's own preprocessing, not the source's
    assert last["hyper_parameters"]["preprocess"]["spacing"] == pytest.approx([5.0, 6.0, 155 / 32])


@pytest.mark.parametrize(
    ("source", "listed", "fix"),
    [
        ({"norm": "batch"}, "network.norm: batch there, instance here", "model.network.norm=batch"),
        ({"preset": "paper"}, "network.features: [64,128,256,512] there, [16,32,64,128] here", "model.network.preset=paper"),
        ({"features": [8, 16, 32]}, "network.features: [8,16,32] there", "model.network.features=[8,16,32]"),
        ({"name": "linknet3d", "full_resolution": True}, "network: linknet3d there, arunet3d here", "model=linknet3d"),
        ({"modalities": ["flair"]}, "modalities: [flair] there, [flair,t1,t1ce,t2] here", "data.preprocess.modalities=[flair]"),
        ({"labels": "softmax4"}, "labels: softmax4 there, regions here", "model.labels=softmax4"),
    ],
)  # fmt: skip
def test_another_network_is_refused_naming_what_differs(tmp_path, source, listed, fix):
    ckpt = source_checkpoint(tmp_path / "other.ckpt", **source)
    module = tiny_run_module()
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    with pytest.raises(ValueError) as raised:
        load_initial_weights(module, str(ckpt))
    message = str(raised.value)
    assert message.startswith(f"init_from={ckpt} ({ckpt}) is not the network this run trains")
    assert listed in message and f"pass {fix}" in message
    assert all(torch.equal(v, before[k]) for k, v in module.net.state_dict().items())  # nothing loaded


def test_dropout_may_differ_and_a_mismatch_stops_the_run_before_it_fits(tmp_path, data_dir):
    check_same_network({"network": {**TINY_NETWORK, "dropout": 0.3}}, {"network": TINY_NETWORK}, "x")  # no weights
    ckpt = source_checkpoint(tmp_path / "batch.ckpt", norm="batch")
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"network\.norm: batch there, instance here.*model\.network\.norm=batch"):
        train(make_cfg([*tiny_overrides(tmp_path, data_dir), f"init_from={ckpt}"], run_dir))
    assert not (run_dir / "checkpoints").exists()
    with pytest.raises(ValueError, match=r"init_from=.*nowhere\.ckpt: Checkpoint .* does not exist"):
        load_initial_weights(tiny_run_module(), str(tmp_path / "nowhere.ckpt"))


def test_resuming_wins_over_init_from(tmp_path, data_dir, caplog):
    source = source_checkpoint(tmp_path / "source.ckpt")
    log_dir = tmp_path / "outputs"
    common = [*tiny_overrides(tmp_path, data_dir), f"paths.log_dir={log_dir}", "task_name=finetune"]
    first = log_dir / "finetune" / "runs" / "first"
    train(make_cfg([*common, f"init_from={source}"], first))
    first_record = json.loads((first / "run_info.json").read_text())["init_from"]
    assert first_record["path"] == str(source.resolve())

    # a killed fine-tuning run again with the same command: it continues, and init_from is not even
    # looked at (this one does not exist)
    second = log_dir / "finetune" / "runs" / "second"
    caplog.set_level(logging.INFO, logger="tumorseg.training.train")
    overrides = [*common, "trainer.max_epochs=2", "resume=true", f"init_from={tmp_path / 'gone.ckpt'}"]
    train(make_cfg(overrides, second))
    last = first / "checkpoints" / "last.ckpt"
    assert f"init_from={tmp_path / 'gone.ckpt'} is not used: the run resumes from {last}" in caplog.text
    ckpt = torch.load(second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 4)  # 2 epochs of 2 batches, the first one's kept
    info = json.loads((second / "run_info.json").read_text())
    assert info["resumed_from"] == str(last)
    assert info["init_from"] == first_record == ckpt["init_from"]  # what the weights descend from


def test_a_recipe_is_made_on_first_use_then_reused(tmp_path, monkeypatch, capfd):
    """``init_from=<recipe>``: the recipe's 1-epoch tiny training runs once, as ``python train.py`` in a
    subprocess, into the cache; the fine-tuning starts from its best checkpoint; later calls reuse it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TUMORSEG_CACHE", str(cache))
    monkeypatch.setenv(REGISTRY_ENV, str(recipe_registry(tmp_path / "weights", tmp_path)))
    run_dir = tmp_path / "finetune"
    # the phantoms the recipe generates, shared (the same cases) by the fine-tuning
    overrides = [*tiny_overrides(tmp_path, cache / "pretrained" / "data"), f"init_from={RECIPE}"]
    train(make_cfg(overrides, run_dir))
    notice = f"The pretrained model {RECIPE} is not made yet: training it once now (a few seconds)"
    assert capfd.readouterr().err.count(notice) == 1
    folder = cache / "pretrained" / RECIPE
    made = folder / f"{RECIPE}.ckpt"
    record = json.loads((folder / "made.json").read_text())
    assert record["sha256"] == sha256_file(made) and record["source"] == str(
        folder / "run" / "checkpoints" / "best.ckpt"
    )
    assert "optimizer_states" not in torch.load(made, map_location="cpu", weights_only=True)  # slim
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["init_from"] == {"spec": RECIPE, "path": str(made.resolve()), "sha256": record["sha256"],
                                 "registered_model": RECIPE}  # fmt: skip

    # later: found, verified against its record, not trained again
    monkeypatch.setattr(making.subprocess, "run", lambda *a, **k: pytest.fail("made twice"))
    model = find_model(RECIPE)
    assert model_file(model) == made_file(model) == made
    module = tiny_run_module()
    assert load_initial_weights(module, RECIPE).sha256 == record["sha256"]
    assert all(torch.equal(v, net_weights(made)[k]) for k, v in module.net.state_dict().items())
    assert notice not in capfd.readouterr().err


def test_a_recipe_of_another_network_is_refused_before_it_is_made(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(REGISTRY_ENV, str(recipe_registry(tmp_path / "weights", tmp_path)))
    monkeypatch.setattr(making.subprocess, "run", lambda *a, **k: pytest.fail("made although it cannot be used"))
    assert recipe_hparams(find_model(RECIPE))["network"] == TINY_NETWORK
    with initialize_config_dir(str(CONF), version_base="1.3"):  # as inside train.py's Hydra application
        with pytest.raises(
            ValueError, match=rf"init_from={RECIPE} \(made by `python train.py .*`\) is not the network"
        ):
            load_initial_weights(tiny_run_module(norm="batch"), RECIPE)
        assert compose("train", overrides=["model=pspnet3d"]).model.network.name == "pspnet3d"  # still its own
    with pytest.raises(ValueError, match=rf"init_from={RECIPE} holds the weights of arunet3d .* pass model=arunet3d"):
        load_initial_weights(SegmentationModule({"name": "pspnet3d", "features": [4, 8, 16, 32]}), RECIPE)
    assert not (tmp_path / "cache" / "pretrained" / RECIPE).exists()


def test_a_model_being_made_elsewhere_is_waited_for_then_used(tmp_path, monkeypatch, caplog):
    """The lock: a second process (here a thread) waits for the one making the model, then uses its
    file instead of training again."""
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(REGISTRY_ENV, str(recipe_registry(tmp_path / "weights", tmp_path)))
    monkeypatch.setattr(making.subprocess, "run", lambda *a, **k: pytest.fail("made twice"))
    model = find_model(RECIPE)
    folder = model.path.parent
    folder.mkdir(parents=True)
    maker = FileLock(folder / "make.lock")
    maker.acquire()  # the other process, making it
    caplog.set_level(logging.WARNING, logger="tumorseg.checkpoints.making")
    result: dict = {}
    waiter = threading.Thread(target=lambda: result.update(path=make_model(model)))
    waiter.start()
    time.sleep(1.5)
    assert waiter.is_alive() and not result  # it waits for the lock
    assert f"Waiting for another process making the pretrained model {RECIPE}" in caplog.text
    source_checkpoint(model.path)  # what the other process made, then its record
    (folder / "made.json").write_text(json.dumps({"recipe": list(model.recipe), "sha256": sha256_file(model.path)}))
    maker.release()
    waiter.join(30)
    assert result["path"] == model.path


def test_a_damaged_or_stale_made_model_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(REGISTRY_ENV, str(recipe_registry(tmp_path / "weights", tmp_path)))
    model = find_model(RECIPE)
    model.path.parent.mkdir(parents=True)
    source_checkpoint(model.path)
    record = {"recipe": list(model.recipe), "sha256": "0" * 64}
    (model.path.parent / "made.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"does not have the SHA-256 .* delete {model.path.parent} to make it again"):
        model_file(model)
    (model.path.parent / "made.json").write_text(json.dumps({**record, "recipe": ["model=pspnet3d"]}))
    with pytest.raises(ValueError, match=r"was made by the recipe \['model=pspnet3d'\]"):
        model_file(model)


# ------------------------------------------------------------------------------------ the phantom recipes


def test_the_packaged_recipes_train_the_network_they_name(monkeypatch):
    """Each phantom model of the packaged registry, made on first use, trains the network its entry
    names, with the budget of conf/experiment/phantom_model.yaml."""
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    recipes = [m for m in registry.registered_models(registry.packaged_registry()) if not m.shipped]
    assert {m.network for m in recipes} == {"linknet3d", "pspnet3d"}
    for model in recipes:
        hparams = recipe_hparams(model)
        assert hparams["network"]["name"] == model.network and hparams["network"]["preset"] == "light"
        assert hparams["modalities"] == ["flair", "t1", "t1ce", "t2"] and hparams["labels"] == "regions"
    epochs = {}
    for net in ("arunet3d", "linknet3d", "pspnet3d"):
        cfg = make_cfg(["experiment=phantom_model", f"model={net}"], Path(os.devnull))
        epochs[net] = cfg.trainer.max_epochs
        assert cfg.task_name == f"phantom_{net}" and cfg.data.cases == 96
    assert epochs == {"arunet3d": 15, "linknet3d": 30, "pspnet3d": 24}  # AR-UNet's shipped model: 15
