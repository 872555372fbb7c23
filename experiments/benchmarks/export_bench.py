"""``python experiments/benchmark.py export`` runs the whole predictor (``tumorseg.predict.Predictor``:
preprocessing, sliding window, scheme, the crop undone, labels) on one real-size case with each network
twice, side by side in one process: run by PyTorch (``backend=torch``) and by onnxruntime on the CPU
(``backend=onnx``: the checkpoint exported to ONNX in memory and verified against PyTorch first). It
reports the largest difference of the probability maps (which must stay within 1e-4), how many voxels'
labels agree, and the CPU seconds per case of each backend (``time.process_time``: every thread of the
process) and their ratio, the median of ``--repeats`` runs after one warm-up, alternating the order.

The case is read and preprocessed once, outside the timing: both backends share that step. The
checkpoints: AR-UNet is the model shipped with the package; LinkNet and PSPNet are randomly
initialised light networks (their ``conf/model`` settings) with the shipped model's preprocessing
and test-time settings and the quick start's window (``data.patch_size=auto``), since no trained
ones ship. Both backends run with the same number of threads, one row per ``--threads`` value
(default 1 and all of them): where other jobs share the cores, PyTorch's OpenMP threads wait on each
other and its multi-threaded time swells, so the one-thread row is the steadier comparison. The
machine's load average is recorded before and after. Exit status 1 when a network's probabilities
differ by more than 1e-4.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import lightning
import torch
from omegaconf import OmegaConf

from benchmarks.common import command_parser, device_name
from tumorseg.checkpoints import load_checkpoint, shipped_model
from tumorseg.cli import positive_int
from tumorseg.export import OnnxNetwork, export_model
from tumorseg.io import write_atomic
from tumorseg.models import MODELS, build_model
from tumorseg.predict import Predictor, dataset_cases
from tumorseg.sizes import auto_patch_edge
from tumorseg.training.module import SegmentationModule, load_model

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("TUMORSEG_SHARED_DATA") or ROOT.parent / "shared" / "data")
DEFAULT_CASE = SHARED_DATA / "real2020" / "BraTS20_Training_990"
DEFAULT_OUT = ROOT / "experiments" / "export" / "results"
LIMIT = 1e-4  # the largest probability difference accepted between the backends
SEED = 0


def checkpoints(names: list[str], folder: Path) -> dict[str, tuple[Path, str]]:
    """network -> (checkpoint, what it is): the shipped AR-UNet, random light LinkNet and PSPNet."""
    shipped = shipped_model()
    hparams = load_checkpoint(shipped.path)["hyper_parameters"]
    made = {}
    for name in names:
        if name == "arunet3d":
            made[name] = shipped.path, f"shipped ({shipped.name})"
            continue
        torch.manual_seed(SEED)
        network = {
            "name": name,
            "preset": "light",
            **OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml").network),
        }
        roi = auto_patch_edge(build_model(name, "light").min_input_size)
        model = SegmentationModule(
            network, labels=hparams["labels"], modalities=hparams["modalities"],
            inference={**hparams["inference"], "roi_size": roi}, preprocess=hparams["preprocess"],
        )  # fmt: skip
        path = folder / f"{name}-random.ckpt"
        torch.save(
            {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "epoch": 0, "global_step": 0,
             "pytorch-lightning_version": lightning.__version__},
            path,
        )  # fmt: skip
        made[name] = path, "random light"
    return made


def timed(predictor: Predictor, prepared):
    cpu, wall = time.process_time(), time.perf_counter()
    prediction = predictor.segment(prepared)
    return time.process_time() - cpu, time.perf_counter() - wall, prediction


def bench(name: str, ckpt: Path, origin: str, case, repeats: int, thread_counts: list[int]) -> list[dict]:
    """One record per thread count: both backends' CPU and wall seconds, and how far their outputs differ."""
    model = load_model(ckpt)
    torch_predictor = Predictor(model, device="cpu", names=[str(ckpt)])
    start = time.perf_counter()
    exported = export_model(model, "onnx", source={"checkpoint": ckpt.name})  # what backend=onnx does
    export_s = time.perf_counter() - start
    prepared = torch_predictor.reader(case)
    axes = exported.metadata["axes"]
    records = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        network = OnnxNetwork(exported.data, name=f"{ckpt} (ONNX)", threads=threads)
        predictors = {"torch": torch_predictor, "onnx": Predictor(network, device="cpu")}
        warm = {backend: timed(p, prepared)[2] for backend, p in predictors.items()}  # warm-up, compared
        cpu: dict[str, list[float]] = {"torch": [], "onnx": []}
        wall: dict[str, list[float]] = {"torch": [], "onnx": []}
        for i in range(repeats):
            for backend in ("torch", "onnx") if i % 2 == 0 else ("onnx", "torch"):
                c, w, _ = timed(predictors[backend], prepared)
                cpu[backend].append(c)
                wall[backend].append(w)
        a, b = warm["torch"], warm["onnx"]
        median = {k: statistics.median(v) for k, v in cpu.items()}
        records.append(
            {
                "network": name,
                "checkpoint": origin,
                "threads": threads,
                "window": list(torch_predictor.configs[0].roi_size),
                "case_shape": list(prepared.display.shape),
                "grid": list(prepared.inputs[0][0].shape[1:]),
                "onnx_axes": "dynamic" if axes["spatial"] == "dynamic" else f"fixed {'x'.join(map(str, axes['size']))}",
                "export_s": export_s,
                "max_prob_diff": float((a.probabilities - b.probabilities).abs().max()),
                "label_agreement": float((a.label == b.label).mean()),
                "labels_differing": int((a.label != b.label).sum()),
                "voxels": int(a.label.size),
                "tumour_voxels": int((a.label > 0).sum()),
                "torch_cpu_s": median["torch"],
                "onnx_cpu_s": median["onnx"],
                "ratio": median["torch"] / median["onnx"],
                "torch_wall_s": statistics.median(wall["torch"]),
                "onnx_wall_s": statistics.median(wall["onnx"]),
                "cpu_s": cpu,
                "wall_s": wall,
            }
        )
    return records


def markdown(records: list[dict]) -> str:
    lines = [
        "| network | checkpoint | window | ONNX spatial axes | export + check s | threads | max abs prob diff "
        "| labels equal | torch CPU s/case | onnx CPU s/case | torch / onnx | torch wall s | onnx wall s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        agree = f"{100 * r['label_agreement']:.4f} % ({r['labels_differing']} differ)"
        lines.append(
            f"| {r['network']} | {r['checkpoint']} | {r['window'][0]}^3 | {r['onnx_axes']} | {r['export_s']:.1f} "
            f"| {r['threads']} | {r['max_prob_diff']:.2g} | {agree} | {r['torch_cpu_s']:.2f} | {r['onnx_cpu_s']:.2f} "
            f"| {r['ratio']:.2f}x | {r['torch_wall_s']:.2f} | {r['onnx_wall_s']:.2f} |"
        )
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> None:
    if not args.case.is_dir():
        sys.exit(f"error: --case {args.case}: no such case folder; give a BraTS case folder of 240x240x155.")
    items = [c for c in dataset_cases(args.case.parent) if c.case_id == args.case.name]
    if not items:
        sys.exit(
            f"error: --case {args.case}: not a readable BraTS case folder (python -m tumorseg.data check says why)."
        )
    threads = list(dict.fromkeys(args.threads or [1, torch.get_num_threads()]))
    load_before = os.getloadavg()
    records = []
    with tempfile.TemporaryDirectory() as folder:
        for name, (ckpt, origin) in checkpoints(args.models, Path(folder)).items():
            print(f"{name}: {origin}, {args.repeats} timed runs of each backend after a warm-up", flush=True)
            records += bench(name, ckpt, origin, items[0], args.repeats, threads)
    load_after = os.getloadavg()
    table = markdown(records)
    shape = "x".join(map(str, records[0]["case_shape"]))
    context = (
        f"Case {args.case.name} ({shape}, preprocessed once: resampled to each checkpoint's grid, "
        f"{'x'.join(map(str, records[0]['grid']))} here). {device_name('cpu').rsplit(',', 1)[0]}; "
        f"torch {torch.__version__}, onnxruntime {version('onnxruntime')}, onnx {version('onnx')}, "
        f"onnxscript {version('onnxscript')}. Median of "
        f"{args.repeats} runs after a warm-up, the backends alternating; CPU s = process CPU time (all threads). "
        f"Load average (1, 5, 15 min) {', '.join(f'{v:.2f}' for v in load_before)} before, "
        f"{', '.join(f'{v:.2f}' for v in load_after)} after ({os.cpu_count()} cores, shared with other jobs)."
    )
    print(table)
    print(context)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if args.out is not None:
        header = (
            "# Export benchmark: the whole predictor, backend=torch vs backend=onnx\n\n"
            f"`python experiments/benchmark.py export`, {stamp}\n\n"
        )
        write_atomic(args.out / "export_bench.md", header + table + "\n\n" + context + "\n")
        meta = {"case": args.case.name, "load_before": load_before,
                "load_after": load_after, "torch": torch.__version__, "onnxruntime": version("onnxruntime"),
                "timestamp": stamp, "repeats": args.repeats}  # fmt: skip
        write_atomic(args.out / "export_bench.jsonl", "".join(json.dumps({**meta, **r}) + "\n" for r in records))
        print(f"Saved {args.out / 'export_bench.md'} and export_bench.jsonl")
    failed = [r["network"] for r in records if not r["max_prob_diff"] <= LIMIT]
    if failed:
        print(f"FAILED: probabilities differ by more than {LIMIT:g} for {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = command_parser(
        commands, "export", "the whole predictor with PyTorch vs onnxruntime, one real-size case", __doc__
    )
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="a BraTS case folder (default: the real exam)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs of each backend per network")
    parser.add_argument(
        "--threads", type=positive_int, nargs="+", help="threads of both backends, one row each (default: 1 and all)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for export_bench.md and .jsonl")
    parser.set_defaults(run=cmd_export, device="cpu")
