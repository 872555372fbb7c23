"""Export a trained network's forward pass (logits, eval mode, no auxiliary head) to ONNX or
TorchScript, with what prediction needs in the file, verified against PyTorch before it is written.

ONNX goes through ``torch.onnx.export(dynamo=True)`` (``torch.export`` capture, translated by
onnxscript), with ``dynamic_shapes`` built from ``torch.export.Dim``: the batch axis is always
dynamic; the spatial axes are dynamic in multiples of the network's stride where the network
allows it. PSPNet's pyramid pooling does not: ONNX has no adaptive pooling, and the matrices that
stand in for it (``AdaptiveAvgPool3d.separable``) depend on the input size, so its ONNX graph takes
windows of the checkpoint's ``inference.roi_size`` only, which is what ``predict.py``'s sliding
window feeds it. TorchScript goes through ``torch.jit.trace``, whose graph keeps ATen's adaptive
pooling, so all three networks take any multiple of their stride there.

Example:
    >>> exported = export_model(load_model("best.ckpt"), "onnx")
    >>> exported.metadata["axes"], exported.max_abs_diff
    >>> write_export(exported, "arunet3d.onnx")

It imports no module of ``tumorseg.predict``, which uses it (``backend=onnx``); the command that
exports a checkpoint file, ``tumorseg.export.cli``, reads checkpoints with ``tumorseg.predict``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from tumorseg import __version__
from tumorseg.export.runtime import (
    EXTRA,
    EXTRA_FILE,
    INPUT_NAME,
    METADATA_KEY,
    METADATA_VERSION,
    OUTPUT_NAME,
    ExportedNetwork,
    ExportError,
    OnnxNetwork,
    TorchScriptNetwork,
)
from tumorseg.io import write_atomic
from tumorseg.models.layers import AdaptiveAvgPool3d
from tumorseg.training.module import SegmentationModule

__all__ = ["DEFAULT_TOLERANCE", "FORMATS", "ONNX_DYNAMIC", "Exported", "check_out", "export_model", "write_export"]

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}  # format -> the file suffix it is written with
# largest logit difference from PyTorch an export may have, as a fraction of the logits' largest
# magnitude (at least 1): float32 carries 7 digits, and phantom-arunet3d-v2's logits reach 63, where
# PyTorch's own float32 result is 6e-5 from float64's and onnxruntime's 1e-4
DEFAULT_TOLERANCE = 1e-4
# whether a network's ONNX graph can take spatial sizes known only at run time (see the module docstring)
ONNX_DYNAMIC = {"arunet3d": True, "linknet3d": True, "pspnet3d": False}
PSPNET_FIXED = (
    "PSPNet's pyramid pooling (adaptive average pooling) has no ONNX form for sizes known only at run time, "
    "so its spatial axes are fixed at the checkpoint's inference window (inference.roi_size), the size of the "
    "windows predict.py's sliding window feeds it"
)
EXAMPLE_BATCH = 2  # torch.export specialises an axis whose example size is 1
_SEED = 0


@dataclass
class Exported:
    """An exported network, verified, not yet written.

    Attributes:
        format: ``"onnx"`` or ``"torchscript"``.
        data: the file's bytes.
        metadata: what the file carries (see ``export_metadata``).
        network: ``data`` loaded by its runtime, as ``predict.py``'s backend runs it.
        max_abs_diff: per verified input shape (``"1x4x32x32x32"``), the largest absolute logit
            difference from PyTorch.
        max_diff: the same over the logits' largest magnitude (at least 1): what ``tolerance`` bounds.
    """

    format: str
    data: bytes
    metadata: dict
    network: ExportedNetwork
    max_abs_diff: dict[str, float]
    max_diff: dict[str, float]

    def describe(self) -> str:
        """The axes and the verification, in one sentence for messages."""
        axes = self.metadata["axes"]
        if axes["spatial"] == "dynamic":
            spatial = f"spatial axes dynamic (multiples of {axes['multiple_of']}, at least {axes['min_size']} voxels)"
        else:
            spatial = f"spatial axes fixed at {'x'.join(map(str, axes['size']))}: {axes['reason']}"
        diffs = ", ".join(f"{diff:.2g} at {shape}" for shape, diff in self.max_abs_diff.items())
        tolerance = self.metadata["verification"]["tolerance"]
        return (
            f"batch axis dynamic, {spatial}; logits match PyTorch within {tolerance:g} of their largest magnitude "
            f"(largest absolute difference {diffs})"
        )


# ------------------------------------------------------------------------------------ what the file says


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    raise TypeError(f"{type(value).__name__} is not JSON data")


def plan_axes(model: SegmentationModule, format: str, dynamic: bool | None) -> dict:
    """Which axes of the export are dynamic: the batch always; the spatial ones where the network and
    ``format`` allow it and the window is a multiple of the stride (``dynamic``: None decides so,
    True insists, False fixes them at the window)."""
    name, net = model.hparams.network["name"], model.net
    roi, stride = tuple(model.inference_config.roi_size), net.stride
    reason = None
    if format == "onnx" and not ONNX_DYNAMIC.get(name, False):
        reason = PSPNET_FIXED if name == "pspnet3d" else f"{name} is not known to export dynamic axes to ONNX"
    elif any(r % stride for r in roi):
        reason = (
            f"the checkpoint's window inference.roi_size={list(roi)} is not a multiple of the network's stride "
            f"{stride}, so the export keeps the padding to it for that size"
        )
    if dynamic is True and reason:
        raise ExportError(f"dynamic=true: {name} cannot be exported to {format} with dynamic spatial axes: {reason}.")
    if dynamic is False and reason is None:
        reason = "dynamic=false was asked for"
    return {
        "batch": "dynamic",
        "spatial": "fixed" if reason else "dynamic",
        "size": list(roi) if reason else None,
        "multiple_of": stride,
        "min_size": net.min_input_size,
        "reason": reason,
    }


def verification_shapes(model: SegmentationModule, axes: dict) -> list[tuple[int, ...]]:
    """The inputs an export is checked on: the window with two and one windows per pass (the sliding
    window's last pass may be short) and, with dynamic axes, another size."""
    channels, roi = len(model.hparams.modalities), tuple(model.inference_config.roi_size)
    shapes = [(EXAMPLE_BATCH, channels, *roi), (1, channels, *roi)]
    if axes["spatial"] == "dynamic":
        step = axes["multiple_of"]
        shapes.append((1, channels, roi[0] + step, roi[1], roi[2] + 2 * step))
    return shapes


def export_metadata(
    model: SegmentationModule, format: str, axes: dict, tolerance: float, source: dict | None = None
) -> dict:
    """What an export carries for prediction, as JSON data: the checkpoint's hyper-parameters
    (modalities, label scheme, preprocessing, test-time settings), what the outputs and label
    values mean, which axes are dynamic, and where and how it was made."""
    hparams = json.loads(json.dumps(dict(model.hparams), default=_plain))
    scheme, labels = model.scheme, model.label_set
    shapes = verification_shapes(model, axes)
    return {
        "metadata_version": METADATA_VERSION,
        "format": format,
        "tumorseg_version": __version__,
        "torch_version": torch.__version__,
        "network": hparams["network"]["name"],
        "preset": hparams["network"].get("preset", "light"),
        "hyper_parameters": hparams,
        "modalities": hparams["modalities"],
        "scheme": scheme,
        "input": {"name": INPUT_NAME, "axes": ["batch", "modality", "x", "y", "z"], "dtype": "float32"},
        "output": {
            "name": OUTPUT_NAME,
            "axes": ["batch", "channel", "x", "y", "z"],
            "dtype": "float32",
            "channels": list(labels.channels if scheme == "regions" else labels.classes),
            "activation": "sigmoid per channel" if scheme == "regions" else "softmax over channels",
        },
        "labels": {
            "label_set": labels.name,
            "classes": {str(i): labels.class_names[c] for i, c in enumerate(labels.classes)},
            "regions": {r: list(labels.region_classes[r]) for r in labels.regions},
            "painting": [list(p) for p in labels.painting] if scheme == "regions" else None,
            "conventions": {k: {str(v): c for v, c in m.items()} for k, m in labels.conventions.items()},
        },
        "preprocess": hparams.get("preprocess") or {},
        "inference": hparams.get("inference") or {},
        "axes": axes,
        "source": source or {},
        "verification": {
            "tolerance": tolerance,
            "criterion": "max |export - pytorch| <= tolerance * max(1, max |pytorch|), per random input",
            "shapes": [list(s) for s in shapes],
        },
    }


# ------------------------------------------------------------------------------------ exporting


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs a warning per torchvision operator it skips, its optimiser logs every pass,
    and it prints its progress: none of it helps a user."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _onnx_bytes(net: torch.nn.Module, example: torch.Tensor, axes: dict, opset: int | None, text: str) -> bytes:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(
            f"format=onnx needs the onnx and onnxscript packages ({err.name} is missing): "
            f"pip install 'tumorseg[{EXTRA}]'."
        ) from err
    from torch.export import Dim

    shapes: dict[int, Any] = {0: Dim("batch", min=1)}
    if axes["spatial"] == "dynamic":
        step = axes["multiple_of"]
        for axis, letter in zip((2, 3, 4), "xyz"):
            shapes[axis] = step * Dim(f"{letter}_blocks", min=axes["min_size"] // step)
    # ONNX has no adaptive pooling; for a fixed size these matrix products fold into constants
    for module in net.modules():
        if isinstance(module, AdaptiveAvgPool3d):
            module.forward = module.separable
    with _quiet_exporter():
        program = torch.onnx.export(
            net, (example,), dynamo=True, dynamic_shapes=(shapes,), input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], opset_version=opset, external_data=False, verbose=False,
        )  # fmt: skip
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, text
    proto.doc_string = "tumorseg export: the network's logits; see the 'tumorseg' metadata entry (JSON)."
    return proto.SerializeToString()


def _torchscript_bytes(net: torch.nn.Module, example: torch.Tensor, text: str) -> bytes:
    with warnings.catch_warnings():
        # the tracer warns that the padding to the stride is recorded for the example's size: the
        # export takes multiples of the stride only, where no padding happens
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # said in the docs and the command's message
        with torch.no_grad():
            traced = torch.jit.trace(net, example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: text})
    return buffer.getvalue()


def _verify(reference: torch.nn.Module, network: ExportedNetwork, shapes, tolerance: float, what: str):
    """Run both on random inputs of ``shapes``: the largest absolute and scaled differences per shape."""
    generator = torch.Generator().manual_seed(_SEED)
    absolute, scaled = {}, {}
    for shape in shapes:
        image = torch.randn(shape, generator=generator)
        with torch.no_grad():
            expected = reference(image).float()
            try:
                got = network(image)
            except Exception as err:
                raise ExportError(
                    f"{what} does not run on an input of shape {list(shape)}: {err}; nothing was written."
                ) from err
        if got.shape != expected.shape:
            raise ExportError(
                f"{what} returns shape {list(got.shape)} for an input of shape {list(shape)}, PyTorch "
                f"{list(expected.shape)}; nothing was written."
            )
        key = "x".join(map(str, shape))
        difference = (got - expected).abs()
        absolute[key] = float(difference.max())
        scaled[key] = absolute[key] / max(1.0, float(expected.abs().max()))
        if not scaled[key] <= tolerance:  # NaN fails too
            raise ExportError(
                f"{what} differs from PyTorch by {absolute[key]:.3g} on a random input of shape {list(shape)}, "
                f"{scaled[key]:.3g} of the logits' largest magnitude (more than tolerance={tolerance:g}); "
                f"nothing was written."
            )
    return absolute, scaled


def export_model(
    model: SegmentationModule,
    format: str = "onnx",
    *,
    dynamic: bool | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int | None = None,
    source: dict | None = None,
) -> Exported:
    """Export ``model``'s network and check it against PyTorch, in memory.

    Args:
        model: a trained ``SegmentationModule`` (``tumorseg.training.module.load_model``).
        format: ``"onnx"`` or ``"torchscript"``. Defaults to ``"onnx"``.
        dynamic: spatial axes dynamic (True), fixed at the checkpoint's window (False), or dynamic
            where the network allows it (None). Defaults to None.
        tolerance: the largest logit difference from PyTorch accepted on random inputs, as a
            fraction of the logits' largest magnitude (at least 1). Defaults to 1e-4.
        opset: the ONNX opset. Defaults to None (the exporter's choice).
        source: where the model came from (checkpoint file, SHA-256), recorded in the metadata.

    Returns:
        The verified ``Exported``, its network loaded by its runtime.

    Raises:
        ExportError: an unknown format, ``dynamic=True`` where the network does not allow it, a
            missing package, an export that fails, or one that does not match PyTorch.
    """
    if format not in FORMATS:
        raise ExportError(f"format={format!r}: choose one of {', '.join(FORMATS)}.")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ExportError(f"tolerance={tolerance!r}: give the largest absolute difference accepted, e.g. 1e-4.")
    name = model.hparams.network["name"]
    axes = plan_axes(model, format, dynamic)
    metadata = export_metadata(model, format, axes, float(tolerance), source)
    text = json.dumps(metadata)
    reference = copy.deepcopy(model.net).to("cpu", torch.float32).eval()
    graph = copy.deepcopy(reference)
    example = torch.randn(verification_shapes(model, axes)[0], generator=torch.Generator().manual_seed(_SEED))
    try:
        if format == "onnx":
            data = _onnx_bytes(graph, example, axes, opset, text)
            network: ExportedNetwork = OnnxNetwork(data, name=f"the ONNX export of {name}")
        else:
            data = _torchscript_bytes(graph, example, text)
            network = TorchScriptNetwork(data, name=f"the TorchScript export of {name}")
    except ExportError:
        raise
    except Exception as err:  # the exporters raise many types; the first line says what failed
        first = next((line for line in str(err).strip().splitlines() if line.strip()), type(err).__name__)
        raise ExportError(f"Exporting {name} to {format} failed: {first}") from err
    absolute, scaled = _verify(reference, network, metadata["verification"]["shapes"], tolerance, network.name)
    return Exported(format, data, metadata, network, absolute, scaled)


# ------------------------------------------------------------------------------------ writing


def check_out(out: str | os.PathLike, format: str, overwrite: bool = False, checkpoint: Path | None = None) -> Path:
    """The path an export of ``format`` may be written to, or an ``ExportError`` saying why not."""
    out = Path(out).expanduser()
    suffix = FORMATS.get(format)
    if out.is_dir():
        raise ExportError(f"out={out} is a folder; give a file name, e.g. out={out / ('model' + (suffix or ''))}.")
    if format == "onnx" and out.suffix.lower() != ".onnx":
        raise ExportError(f"out={out}: an ONNX export's name must end in .onnx (predict.py recognises it by that).")
    if format == "torchscript" and out.suffix.lower() == ".onnx":
        raise ExportError(f"out={out} ends in .onnx but format=torchscript; name it {out.with_suffix('.pt').name}.")
    if checkpoint is not None and out.exists() and out.resolve() == Path(checkpoint).resolve():
        raise ExportError(f"out={out} is the checkpoint itself; choose another name.")
    if out.exists() and not overwrite:
        raise ExportError(f"out={out} exists and is kept; overwrite=true replaces it, or choose another name.")
    return out


def write_export(exported: Exported, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a verified export atomically (whole or not at all); an existing ``out`` only with ``overwrite``."""
    return write_atomic(check_out(out, exported.format, overwrite), exported.data)
