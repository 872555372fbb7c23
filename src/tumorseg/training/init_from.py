"""``init_from=``: a training that starts from another model's network weights (pre-training).

The weights come from a checkpoint file, an https URL (downloaded once and cached,
``tumorseg.checkpoints``) or a registered model by name (``tumorseg.checkpoints.registry``: a
shipped file, or a model made on first use, trained first). Only the network's weights are taken:
the optimizer, the schedule, the epoch and the step start afresh, and what the new run's
checkpoints record besides the weights (preprocessing, test-time settings) is the new run's own.

The network must be the same: its name, its constructor arguments with the preset's widths filled
in (dropout aside: it has no weights), the modalities (input channels, in order), the label scheme
and the label set (output channels and what they mean). A difference stops the run before it
fits, naming each differing setting and the override that trains the checkpoint's network.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import OmegaConf

from tumorseg.checkpoints import could_be_name, find_model, load_checkpoint, made_file, resolve_checkpoint, sha256_file
from tumorseg.labels import MODALITIES
from tumorseg.launch import conf_dir
from tumorseg.models import MODELS

log = logging.getLogger(__name__)

__all__ = ["InitialWeights", "architecture", "differences", "load_initial_weights", "recipe_hparams"]

# constructor arguments without weights: they may differ between pre-training and fine-tuning
_FREE = ("dropout",)
# where each setting outside model.network is chosen
_OPTION = {"modalities": "data.preprocess.modalities", "labels": "model.labels", "label_set": "labels"}


@dataclass(frozen=True)
class InitialWeights:
    """Where a run's initial weights came from, as ``run_info.json`` and the run's checkpoints record it."""

    spec: str  # init_from as given
    path: str  # the local checkpoint file
    sha256: str
    registered_model: str | None  # the registered model's name, when init_from named one

    def record(self) -> dict:
        return asdict(self)


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def architecture(hparams: Mapping) -> dict:
    """What fixes a network's weights and their meaning, from a ``SegmentationModule``'s
    hyper-parameters: ``network`` (name), ``network.<argument>`` for every constructor argument (the
    preset's values and the class defaults filled in, dropout left out), ``modalities``, ``labels``
    (scheme) and ``label_set``.

    Raises:
        ValueError: an unknown network name or preset.
    """
    network = dict(hparams["network"])
    name = network.pop("name")
    preset = network.pop("preset", "light")
    if name not in MODELS:
        raise ValueError(f"network {name!r} is not one of {sorted(MODELS)}")
    cls = MODELS[name]
    args = {
        key: p.default
        for key, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty and key not in ("in_channels", "out_channels")
    }
    if preset is not None:
        if preset not in cls.presets:
            raise ValueError(f"preset {preset!r} of {name} is not one of {sorted(cls.presets)}")
        args.update(cls.presets[preset])
    args.update(network)
    result = {"network": name}
    result.update({f"network.{k}": _plain(v) for k, v in sorted(args.items()) if k not in _FREE})
    result["modalities"] = list(hparams.get("modalities") or MODALITIES)
    result["labels"] = hparams.get("labels", "regions")
    result["label_set"] = hparams.get("label_set", "brats2023")
    return result


def differences(source: Mapping, run: Mapping) -> list[tuple[str, object, object]]:
    """``(setting, source's value, run's value)`` for each setting of ``architecture`` that differs; only
    the name when the networks differ (their arguments are then not comparable)."""
    there, here = architecture(source), architecture(run)
    if there["network"] != here["network"]:
        return [("network", there["network"], here["network"])]
    return [
        (key, there.get(key), here.get(key))
        for key in dict.fromkeys([*there, *here])
        if there.get(key) != here.get(key)
    ]


def _value(value) -> str:
    """A value as a Hydra override writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def _fixes(source: Mapping, run: Mapping, diffs: list[tuple[str, object, object]]) -> list[str]:
    """The overrides that make this run train the source's network."""
    fixes: list[str] = []
    source_net, run_net = dict(source["network"]), dict(run["network"])
    for key, there, _ in diffs:
        if key == "network":
            fixes.append(f"model={there}")
        elif key.startswith("network."):
            argument = key.removeprefix("network.")
            preset = source_net.get("preset", "light")
            by_preset = preset is not None and argument in MODELS[source_net["name"]].presets.get(preset, {})
            if by_preset and argument not in source_net and argument not in run_net:
                fix = f"model.network.preset={_value(preset)}"  # the widths follow the preset
            else:
                fix = f"model.network.{argument}={_value(there)}"
            if fix not in fixes:
                fixes.append(fix)
        else:
            fixes.append(f"{_OPTION[key]}={_value(there)}")
    return fixes


def check_same_network(source: Mapping, run: Mapping, what: str) -> None:
    """Raise, naming ``what`` (the option and the checkpoint), each difference and the overrides that
    fix them, unless ``source`` and ``run`` (hyper-parameters) build the same network.

    Raises:
        ValueError: the networks differ.
    """
    diffs = differences(source, run)
    if not diffs:
        return
    listed = "; ".join(f"{key}: {_value(there)} there, {_value(here)} here" for key, there, here in diffs)
    raise ValueError(
        f"{what} is not the network this run trains ({listed}). init_from takes the weights of the same "
        f"network only: pass {' '.join(_fixes(source, run, diffs))} to train the checkpoint's network, or give "
        f"init_from a checkpoint of this one."
    )


# ------------------------------------------------------------------------------------ recipes


def _compose(conf_dir: Path, overrides: list[str]):
    """``conf/train.yaml`` composed with ``overrides``, also from inside a running Hydra application,
    whose global state is set aside and put back."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    running = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf_dir), version_base="1.3"):
            return compose("train", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
        if running is not None:
            GlobalHydra.instance().initialize(running)


def recipe_hparams(model) -> dict:
    """The network hyper-parameters that a registered model's recipe trains (``architecture``'s input),
    read from the composed config without training: a mismatch is found before the model is made.

    Raises:
        ValueError: the recipe does not compose.
    """
    try:
        cfg = _compose(conf_dir(), list(model.recipe))
        network = OmegaConf.to_container(cfg.model.network, resolve=True)
        modalities = OmegaConf.select(cfg, "data.preprocess.modalities", default=None)
        return {
            "network": network,
            "modalities": list(modalities) if modalities else list(MODALITIES),
            "labels": str(cfg.model.get("labels", "regions")),
            "label_set": str(cfg.model.get("label_set", "brats2023")),
        }
    except Exception as err:  # Hydra's and OmegaConf's errors alike: the recipe is at fault
        raise ValueError(
            f"The recipe of the registered model {model.name} ({model.command}, in {model.registry}) does not "
            f"compose: {err}"
        ) from err


# ------------------------------------------------------------------------------------ loading


def load_initial_weights(module, spec: str, sha256: str | None = None) -> InitialWeights:
    """Load the network weights of ``spec`` into ``module`` (a ``SegmentationModule``), checked to be
    the same network, and set ``module.init_source``, which its checkpoints and ``run_info.json``
    record.

    Args:
        module: the model of the run, built from its config.
        spec: a checkpoint file, an https URL, or a registered model's name (made first if it is a
            recipe not made yet, after its recipe is checked to train this network).
        sha256: the SHA-256 the file must have. Defaults to None: not checked (a URL's download then
            warns with its digest to pin).

    Raises:
        ValueError: the checkpoint cannot be found, fetched, made or read, or holds another network
            (the message starts with ``init_from=<spec>``).
    """
    option = f"init_from={spec}"
    run = dict(module.hparams)
    name = run["network"]["name"]
    registered = find_model(spec) if could_be_name(spec) else None
    if registered is not None:
        log.info("%s", registered.banner())
        if registered.network != name:
            raise ValueError(
                f"{option} holds the weights of {registered.network} ({registered.registry}), but this run trains "
                f"{name}: pass model={registered.network}, or give init_from a {name} checkpoint."
            )
        if not registered.shipped and made_file(registered) is None:
            check_same_network(recipe_hparams(registered), run, f"{option} (made by `{registered.command}`)")
    try:
        path = resolve_checkpoint(spec, sha256)
        ckpt = load_checkpoint(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{option}: {err}") from err
    source = ckpt["hyper_parameters"]
    try:
        check_same_network(source, run, f"{option} ({path})")
    except KeyError as err:
        raise ValueError(f"{option} ({path}): its hyper-parameters lack {err}; give a tumorseg checkpoint.") from err
    weights = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        module.net.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{option} ({path}): its weights do not fit this run's {name} network although its hyper-parameters "
            f"match (written by another version of the network?):\n{err}"
        ) from err
    initial = InitialWeights(
        spec=str(spec), path=str(Path(path).resolve()), sha256=sha256_file(path),
        registered_model=registered.name if registered else None,
    )  # fmt: skip
    module.init_source = initial.record()
    there = (source.get("preprocess") or {}).get("spacing")
    here = (run.get("preprocess") or {}).get("spacing")
    if there and here and list(there) != list(here):
        log.info(
            "%s learned on a %s mm grid; this run trains on %s mm, which its checkpoints record.",
            option, "x".join(f"{s:.3g}" for s in there), "x".join(f"{s:.3g}" for s in here),
        )  # fmt: skip
    log.info(
        "Network weights from %s (%s, SHA-256 %s); the optimizer, schedule, epoch and step start afresh.",
        option, initial.path, initial.sha256,
    )  # fmt: skip
    return initial
