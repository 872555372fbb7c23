"""Export trained networks for deployment, and run the exports.

* ``exporter``: ``python -m tumorseg.export``'s work: a checkpoint's network to ONNX
  (``torch.onnx.export(dynamo=True)``) or TorchScript (``torch.jit.trace``), with the checkpoint's
  hyper-parameters as JSON metadata, verified against PyTorch before it is written atomically;
* ``runtime``: exports loaded for the ``Predictor`` (ONNX with onnxruntime on the CPU, TorchScript
  with PyTorch), which runs them inside its own sliding window, mirroring and label scheme;
* ``cli``: ``python -m tumorseg.export``'s ``export_checkpoint`` and ``run(cfg)`` (options in
  ``conf/export.yaml``), which read checkpoints with ``tumorseg.predict``; the rest of this package
  imports nothing from it, since the ``Predictor`` runs exports.

TorchScript is deprecated by PyTorch (torch 2.13 warns on ``torch.jit.trace``, ``script`` and
``load`` and points to ``torch.export``); it is offered for runtimes that still load it (LibTorch),
and ONNX is the format to prefer.
"""

from tumorseg.export.exporter import (
    DEFAULT_TOLERANCE,
    FORMATS,
    ONNX_DYNAMIC,
    Exported,
    export_model,
    write_export,
)
from tumorseg.export.runtime import (
    ExportedNetwork,
    ExportError,
    OnnxNetwork,
    TorchScriptNetwork,
    is_export,
    load_exported,
)

__all__ = [
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "ONNX_DYNAMIC",
    "ExportError",
    "Exported",
    "ExportedNetwork",
    "OnnxNetwork",
    "TorchScriptNetwork",
    "export_model",
    "is_export",
    "load_exported",
    "write_export",
]
