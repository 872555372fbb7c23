"""Run an exported network: an ONNX file with onnxruntime, a TorchScript file with PyTorch.

An export carries its checkpoint's hyper-parameters (modalities, label scheme, preprocessing,
test-time settings) as JSON: under the key ``tumorseg`` of the ONNX model's ``metadata_props``, or
as the extra file ``tumorseg.json`` of the TorchScript archive. ``ExportedNetwork`` reads them and
offers what the ``Predictor`` asks of a ``SegmentationModule``: ``hparams``, ``scheme``, and a call
that turns windows (B, M, X, Y, Z) into logits (B, C, X, Y, Z). So one predictor runs checkpoints and
exports alike, inside the same sliding window, mirroring and label scheme.

Example:
    >>> network = load_exported("arunet3d.onnx")
    >>> network.hparams.modalities, network.scheme, network.metadata["axes"]
    >>> Predictor(network)(case)
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.data import AttributeDict

from tumorseg.labels import BRATS2023, label_set

__all__ = [
    "METADATA_KEY",
    "METADATA_VERSION",
    "ExportError",
    "ExportedNetwork",
    "OnnxNetwork",
    "TorchScriptNetwork",
    "is_export",
    "load_exported",
    "onnxruntime_module",
]

METADATA_KEY = "tumorseg"  # ONNX metadata_props key; the TorchScript extra file is METADATA_KEY + ".json"
METADATA_VERSION = 1  # bumped when the metadata's meaning changes; newer ones are refused
INPUT_NAME, OUTPUT_NAME = "image", "logits"
EXTRA = "export"  # the pip extra with onnx, onnxruntime and onnxscript
EXTRA_FILE = f"{METADATA_KEY}.json"
_NOT_AN_EXPORT = "export a checkpoint with `python -m tumorseg.export ckpt_path=... out=...`"


class ExportError(ValueError):
    """An export cannot be written or read: a bad option, a failed export or verification, a file
    that is not an export of tumorseg, a missing package (the message says which and what to do)."""


def onnxruntime_module():
    """``import onnxruntime``, or an ``ExportError`` that names the pip extra to install."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ExportError(
            f"onnxruntime is not installed, and ONNX models run with it: pip install 'tumorseg[{EXTRA}]' "
            f"(or pip install onnxruntime), or run the checkpoint with backend=torch."
        ) from err
    return onnxruntime


class ExportedNetwork:
    """An exported network, with the metadata it was written with.

    Attributes:
        metadata: the export's metadata (see ``tumorseg.export.exporter.export_metadata``).
        hparams: the checkpoint's hyper-parameters, as ``SegmentationModule.hparams`` holds them.
        scheme: the label scheme of the outputs, ``"regions"`` or ``"softmax4"``.
        name: how messages name it (its file). Defaults to the network's name.
        runtime: what runs it, ``"onnxruntime"`` or ``"torchscript"``.
    """

    runtime = ""

    def __init__(self, metadata: dict, name: str | None = None):
        self.metadata = metadata
        self.hparams = AttributeDict(metadata["hyper_parameters"])
        self.scheme = self.hparams["labels"]
        # exports made before label sets existed learned BraTS 2023's classes
        self.label_set = label_set(self.hparams.get("label_set", BRATS2023.name))
        self.name = name or metadata["network"]
        self.axes = metadata["axes"]

    def check_window(self, shape: tuple[int, ...]) -> None:
        """Refuse an input the exported graph was not made for, naming what it takes."""
        spatial, channels = tuple(shape[2:]), len(self.hparams["modalities"])
        if len(shape) != 5 or shape[1] != channels:
            raise ExportError(
                f"{self.name}: expects (batch, {channels} modalities, x, y, z), got shape {tuple(shape)}."
            )
        fixed = self.axes["spatial"] == "fixed"
        if fixed and spatial != tuple(self.axes["size"]):
            raise ExportError(
                f"{self.name}: exported for windows of {tuple(self.axes['size'])} only, got {spatial} "
                f"({self.axes['reason']})."
            )
        multiple, least = self.axes["multiple_of"], self.axes["min_size"]
        if not fixed and any(s % multiple or s < least for s in spatial):
            raise ExportError(
                f"{self.name}: spatial sizes must be multiples of {multiple} of at least {least} voxels, got {spatial}."
            )

    def eval(self) -> ExportedNetwork:
        return self  # exported in eval mode

    def to(self, device: torch.device | str) -> ExportedNetwork:
        return self

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, X, Y, Z), float32, on the windows' device."""
        self.check_window(tuple(windows.shape))
        return self.forward(torch.as_tensor(windows))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class OnnxNetwork(ExportedNetwork):
    """An ONNX export run by onnxruntime on the CPU (``CPUExecutionProvider``).

    Args:
        model: the ``.onnx`` file, or its bytes.
        name: how messages name it. Defaults to the file, else the network's name.
        threads: onnxruntime's intra-op threads. Defaults to ``torch.get_num_threads()``, so that
            both backends use the same cores.

    Raises:
        ExportError: onnxruntime is missing, or the model is not a readable ONNX export of tumorseg.
    """

    runtime = "onnxruntime"

    def __init__(self, model: str | os.PathLike | bytes, *, name: str | None = None, threads: int | None = None):
        ort = onnxruntime_module()
        where = name or (str(model) if not isinstance(model, bytes) else "the exported model")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise
        try:
            self.session = ort.InferenceSession(
                model if isinstance(model, bytes) else str(model), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types for unreadable models
            raise ExportError(f"{where} is not a readable ONNX model: {str(err).strip().splitlines()[0]}") from err
        text = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        super().__init__(_parse_metadata(text, where, f"no '{METADATA_KEY}' entry in its metadata_props"), where)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(windows.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run([OUTPUT_NAME], {self.input_name: array})
        return torch.from_numpy(logits).to(windows.device)


class TorchScriptNetwork(ExportedNetwork):
    """A TorchScript export, run by PyTorch on any device (``torch.jit.load``, which torch 2.13
    marks deprecated: see ``tumorseg.export``).

    Args:
        model: the file, or its bytes.
        name: how messages name it. Defaults to the file, else the network's name.
        map_location: device to load it on. Defaults to ``"cpu"``.
    """

    runtime = "torchscript"

    def __init__(
        self, model: str | os.PathLike | bytes, *, name: str | None = None, map_location: str | torch.device = "cpu"
    ):
        where = name or (str(model) if not isinstance(model, bytes) else "the exported model")
        extra = {EXTRA_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # said once, in tumorseg.export's docs
                source = io.BytesIO(model) if isinstance(model, bytes) else str(model)
                self.module = torch.jit.load(source, map_location=map_location, _extra_files=extra)
        except Exception as err:  # torch raises RuntimeError or its C++ errors for unreadable archives
            raise ExportError(
                f"{where} is not a readable TorchScript model: {str(err).strip().splitlines()[0]}"
            ) from err
        text = extra[EXTRA_FILE]
        super().__init__(_parse_metadata(text or None, where, f"no {EXTRA_FILE} inside"), where)
        self.module.eval()

    def to(self, device: torch.device | str) -> TorchScriptNetwork:
        self.module.to(device)
        return self

    @torch.no_grad()
    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.module(windows).float()


def _parse_metadata(text: str | bytes | None, where: str, missing: str) -> dict[str, Any]:
    if not text:
        raise ExportError(f"{where} is not an export of tumorseg ({missing}); {_NOT_AN_EXPORT}.")
    try:
        metadata = json.loads(text)
    except ValueError as err:
        raise ExportError(f"{where}: its tumorseg metadata is not valid JSON ({err}); {_NOT_AN_EXPORT}.") from err
    keys = ("metadata_version", "network", "hyper_parameters", "axes")
    if not isinstance(metadata, dict) or any(k not in metadata for k in keys):
        raise ExportError(f"{where}: its tumorseg metadata lacks {list(keys)}; {_NOT_AN_EXPORT}.")
    if metadata["metadata_version"] > METADATA_VERSION:
        raise ExportError(
            f"{where} was exported by tumorseg {metadata.get('tumorseg_version')} (metadata version "
            f"{metadata['metadata_version']}), newer than this one: upgrade tumorseg, or export again with this one."
        )
    return metadata


def _is_torchscript_export(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith(f"/extra/{EXTRA_FILE}") for n in archive.namelist())


def is_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an export rather than a training checkpoint: an ``.onnx`` file, or a
    TorchScript archive with tumorseg's metadata."""
    path = Path(path)
    return path.suffix.lower() == ".onnx" or (path.is_file() and _is_torchscript_export(path))


def load_exported(path: str | os.PathLike, *, threads: int | None = None) -> ExportedNetwork:
    """The exported network in ``path``: an ``.onnx`` file runs with onnxruntime, a TorchScript
    export with PyTorch.

    Args:
        path: an ``.onnx`` file, or a TorchScript archive written by ``tumorseg.export``.
        threads: onnxruntime's intra-op threads. Defaults to ``torch.get_num_threads()``.

    Raises:
        FileNotFoundError: no such file.
        ExportError: not an export of tumorseg, unreadable, or onnxruntime missing.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Exported model {str(path)!r} does not exist.")
    if path.suffix.lower() == ".onnx":
        return OnnxNetwork(path, threads=threads)
    if _is_torchscript_export(path):
        return TorchScriptNetwork(path)
    raise ExportError(
        f"{path} is not an export of tumorseg (an .onnx file or a TorchScript archive); {_NOT_AN_EXPORT}."
    )
