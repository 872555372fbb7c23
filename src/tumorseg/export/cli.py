"""The export command, ``tumorseg-export`` (``python -m tumorseg.export``): export a checkpoint's
network (``ckpt_path``, or the model shipped with the package when it is null) to ``out`` as ONNX or
TorchScript, verified first; options in ``conf/export.yaml``. Exit status: 0 written, 2 nothing
written: a mistake or a failed check, explained in one message (``HYDRA_FULL_ERROR=1`` adds the
traceback)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tumorseg.checkpoints import could_be_name, find_model, resolve_checkpoint, sha256_file, shipped_model
from tumorseg.cli import EXIT_OK, hydra_command
from tumorseg.export.exporter import FORMATS, Exported, check_out, export_model, write_export
from tumorseg.export.runtime import ExportError, is_export
from tumorseg.launch import register_resolvers
from tumorseg.training.module import load_model

_DYNAMIC = {"auto": None, True: True, False: False}


def export_checkpoint(
    ckpt_path: str | os.PathLike,
    out: str | os.PathLike,
    format: str = "onnx",
    *,
    overwrite: bool = False,
    sha256: str | None = None,
    allow_http: bool = False,
    progress: bool = True,
    **options,
) -> Exported:
    """Export the network of a training checkpoint to ``out``, verified first: ``python -m tumorseg.export``.

    Args:
        ckpt_path: a checkpoint file or https URL (``tumorseg.checkpoints.resolve_checkpoint``).
        out: the file to write (``.onnx`` for ONNX).
        format: ``"onnx"`` or ``"torchscript"``. Defaults to ``"onnx"``.
        overwrite: replace an existing ``out``. Defaults to False.
        sha256: the checkpoint's expected SHA-256. Defaults to None.
        allow_http: accept a plain http URL. Defaults to False.
        progress: a progress bar while downloading. Defaults to True.
        **options: ``dynamic``, ``tolerance``, ``opset``, as for ``export_model``.

    Raises:
        ExportError: see ``export_model``, and an ``out`` that exists (without ``overwrite``), is a
            folder, or has the wrong suffix; checked before the checkpoint is read.
        FileNotFoundError, ValueError: the checkpoint cannot be found or read.
    """
    if format not in FORMATS:
        raise ExportError(f"format={format!r}: choose one of {', '.join(FORMATS)}.")
    check_out(out, format, overwrite)  # before a download or an export that would be lost
    path = resolve_checkpoint(ckpt_path, sha256, progress=progress, allow_http=allow_http)
    check_out(out, format, overwrite, checkpoint=path)
    if is_export(path):
        raise ExportError(f"ckpt_path={path} is an export already; give the training checkpoint (.ckpt) it came from.")
    model = load_model(path)
    source = {"checkpoint": path.name, "sha256": sha256_file(path)}
    exported = export_model(model, format, source=source, **options)
    write_export(exported, out, overwrite)
    return exported


def run(cfg) -> int:
    """Export ``cfg.ckpt_path`` to ``cfg.out`` and print what was written; returns the exit status."""
    if cfg.format not in FORMATS:
        raise ExportError(f"format={cfg.format!r}: choose one of {', '.join(FORMATS)}.")
    if cfg.dynamic not in _DYNAMIC:
        raise ExportError(f"dynamic={cfg.dynamic!r}: choose auto, true or false.")
    if OmegaConf.is_missing(cfg, "out") or not cfg.out:
        raise ExportError(f"Give the file to write: out=model{FORMATS[cfg.format]}.")

    spec = cfg.ckpt_path
    if spec is None:
        shipped = shipped_model()
        print(shipped.banner(), flush=True)
        spec = shipped.path
    elif could_be_name(spec) and (registered := find_model(spec)) is not None:
        print(registered.banner(), flush=True)
    out = Path(cfg.out).expanduser()
    exported = export_checkpoint(
        spec, out, cfg.format, overwrite=cfg.overwrite, sha256=cfg.ckpt_sha256, allow_http=cfg.allow_http,
        progress=cfg.progress, dynamic=_DYNAMIC[cfg.dynamic], tolerance=cfg.tolerance, opset=cfg.opset,
    )  # fmt: skip
    size = len(exported.data) / 2**20
    print(f"Wrote {out} ({cfg.format}, {exported.metadata['network']}, {size:.1f} MiB): {exported.describe()}.")
    if cfg.format == "torchscript":
        print("Note: PyTorch marks TorchScript deprecated (torch.jit warns and points to torch.export); prefer ONNX.")
    return EXIT_OK


def _task(cfg) -> None:
    """The task Hydra runs with the config composed from ``export.yaml`` and the overrides."""
    status = run(cfg)
    if status:
        sys.exit(status)


def main(config_path: str | None = None) -> int:
    """``tumorseg-export ckpt_path=CKPT out=model.onnx``: export a trained network on the installed
    configs, or on the config folder ``config_path``; returns the exit status."""
    register_resolvers()
    return hydra_command(_task, config_name="export", config_path=config_path)
