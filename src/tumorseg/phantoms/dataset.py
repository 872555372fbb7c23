"""Datasets of phantoms on disk: BraTS 2020 case folders written reproducibly and safely.

Command line::

    python -m tumorseg.phantoms OUT --cases N --seed S [--shape X Y Z] [--preview] [--workers K] [--debug]

writes the BraTS 2020 layout ``OUT/BraTS20_Training_001/BraTS20_Training_001_{flair,t1,t1ce,t2,seg}.nii.gz``:
int16 images, uint8 labels with the BraTS 2020 values 0 background, 1 NCR/NET, 2 ED, 4 ET, an LPS
affine with the case's voxel size, like real BraTS. ``--preview`` adds ``OUT/previews/<case_id>.png``,
an axial slice through the tumour of each modality and the label.

Reproducibility: case ``i`` is drawn from ``np.random.default_rng([seed, i])`` alone and the files
are gzipped without a timestamp or file name, so identical arguments give byte-identical files,
whatever ``--workers`` is and however many ``--cases`` are asked for.

Safety: ``OUT`` must be empty (hidden entries aside) or a folder this generator wrote with the same
seed, shape and phantom version, as recorded in ``OUT/synthetic.json``; anything else is refused,
and so are case folders in it that the generator never planned. Every file is written to a hidden
temporary name in its folder and renamed into place, so a killed run never leaves a truncated
file under a final name. A case counts as complete, and is skipped when the same command runs
again, when the manifest lists it (it is listed only after all five files are in place) and every
file still has the SHA-256 recorded there (and, with ``--preview``, its PNG exists); any other case
is generated again, which rewrites its five files and removes temporary files a killed run left.
Generators writing into one folder at once (the nodes of a training launch sharing a file system)
take turns, holding the lock ``OUT/.synthetic.lock``: the later ones find the cases complete.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import multiprocessing
import numbers
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import nibabel as nib
import numpy as np
from filelock import FileLock
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tumorseg.cli import add_debug_option, environment, run_command
from tumorseg.io import write_atomic
from tumorseg.labels import CLASS_COLOURS, CONVENTIONS, MODALITIES, MODALITY_NAMES
from tumorseg.phantoms.generator import (
    CASE_PREFIX,
    DEFAULT_SHAPE,
    GENERATOR,
    PHANTOM_VERSION,
    brats_affine,
    case_id,
    check_shape,
    make_phantom,
)  # fmt: skip

__all__ = ["MANIFEST", "generate_dataset", "main"]

MANIFEST = "synthetic.json"
LOCK = ".synthetic.lock"  # held by the generator writing into a folder
# The generator's name before it became its own package: the same phantoms (PHANTOM_VERSION says
# when they change), so the folders it wrote are reused.
FORMER_GENERATORS = ("tumorseg.data.synthetic",)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
GZIP_LEVEL = 1  # nibabel's default for .nii.gz: level 6+ is 2-3x slower for 2% smaller files
# the phantoms' labels are BraTS 2020 values: each value gets the colour of its internal class
PREVIEW_COLOURS = {value: CLASS_COLOURS[cls] for value, cls in CONVENTIONS["brats2020"].items() if cls}


def _nifti_gz(array: np.ndarray, description: str) -> bytes:
    """The .nii.gz bytes of ``array``, gzipped without a timestamp or file name so they are reproducible."""
    affine = brats_affine(array.shape)
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)  # 1: scanner anatomical, as BraTS files have
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = description.encode()[:79]
    return gzip.compress(image.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)


def _preview_png(images: dict[str, np.ndarray], label: np.ndarray, title: str) -> bytes:
    """PNG montage of the axial slice with the most tumour: the four modalities and the label on FLAIR."""
    from matplotlib.figure import Figure  # imported here: only previews need matplotlib
    from matplotlib.patches import Patch

    area = (label > 0).sum(axis=(0, 1))
    k = int(np.argmax(area)) if area.any() else label.shape[2] // 2
    # Transposed so rows run anterior to posterior and the patient's right is on the left (radiological view).
    slices = {name: images[name][:, :, k].T for name in MODALITIES}
    windows = {name: np.percentile(s[s > 0], 99.5) if s.any() else 1.0 for name, s in slices.items()}

    figure = Figure(figsize=(15, 3.6), layout="constrained")
    axes = figure.subplots(1, len(MODALITIES) + 1)
    for ax, name in zip(axes, MODALITIES):
        ax.imshow(slices[name], cmap="gray", vmin=0, vmax=windows[name], interpolation="nearest")
        ax.set_title(MODALITY_NAMES[name])
    overlay = np.zeros((*slices["flair"].shape, 4))
    for value, (_, colour) in PREVIEW_COLOURS.items():
        overlay[label[:, :, k].T == value] = (*colour, 0.6)
    axes[-1].imshow(slices["flair"], cmap="gray", vmin=0, vmax=windows["flair"], interpolation="nearest")
    axes[-1].imshow(overlay, interpolation="nearest")
    axes[-1].set_title("label on FLAIR")
    axes[-1].legend(
        handles=[Patch(color=colour, label=f"{value} {name}") for value, (name, colour) in PREVIEW_COLOURS.items()],
        loc="lower right",
        fontsize=8,
        framealpha=0.8,
    )
    for ax in axes:
        ax.set_axis_off()
    figure.suptitle(f"{title}, axial slice {k}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _write_case(
    out: Path, index: int, seed: int, shape: tuple[int, int, int], preview: bool
) -> tuple[str, dict[str, str]]:
    """Generate case ``index`` into ``out`` and return its id and the SHA-256 of each of its files."""
    name = case_id(index)
    folder = out / name
    folder.mkdir(exist_ok=True)
    for stale in [*folder.glob(f".{name}_*.partial*"), *(out / "previews").glob(f".{name}.png.*.partial*")]:
        stale.unlink()  # left by a killed run: ours by name, never read

    images, label = make_phantom(np.random.default_rng([seed, index]), shape)
    description = f"tumorseg synthetic v{PHANTOM_VERSION} seed={seed} case={index}"
    digests = {}
    for modality, array in [*images.items(), ("seg", label)]:
        data = _nifti_gz(array, description)
        path = folder / f"{name}_{modality}.nii.gz"
        write_atomic(path, data)
        digests[path.name] = hashlib.sha256(data).hexdigest()
    if preview:
        (out / "previews").mkdir(exist_ok=True)
        write_atomic(out / "previews" / f"{name}.png", _preview_png(images, label, name))
    return name, digests


def _is_complete(out: Path, name: str, digests: dict[str, str] | None, preview: bool) -> bool:
    expected = {f"{name}_{m}.nii.gz" for m in (*MODALITIES, "seg")}
    if not digests or set(digests) != expected:
        return False
    for file, digest in digests.items():
        path = out / name / file
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return False
    return not preview or (out / "previews" / f"{name}.png").is_file()


def _save_manifest(out: Path, manifest: dict) -> None:
    # Sorted, so that identical runs leave identical manifests whatever order workers finish in.
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())


def _describe(settings: dict) -> str:
    return f"seed={settings['seed']}, shape={'x'.join(map(str, settings['shape']))}, version {settings['version']}"


def _claim_output(out: Path, seed: int, shape: tuple[int, int, int], cases: int) -> dict:
    """Check that ``out`` may receive these cases, record them as planned, and return the manifest.

    Raises:
        FileExistsError: If ``out`` holds anything but what this generator wrote with these settings.
    """
    settings = {"generator": GENERATOR, "version": PHANTOM_VERSION, "seed": seed, "shape": list(shape)}
    path = out / MANIFEST
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
            found = {key: manifest[key] for key in settings}
            if found["generator"] in FORMER_GENERATORS:
                found["generator"] = GENERATOR
            if found["generator"] != GENERATOR:
                raise ValueError(f"written by {found['generator']!r}")
        except (ValueError, KeyError, TypeError) as err:
            raise FileExistsError(f"{path} is not a manifest of {GENERATOR} ({err}); choose another folder.") from err
        if found != settings:
            raise FileExistsError(
                f"{out} holds synthetic cases made with {_describe(found)}, not {_describe(settings)}; "
                f"choose another folder, or delete {out} to regenerate it."
            )
        manifest.setdefault("cases", 0)
        manifest.setdefault("complete", {})
        # Only cases planned by earlier runs may exist: any other case folder came from somewhere else.
        planned = {case_id(i) for i in range(1, manifest["cases"] + 1)}
        foreign = sorted(p.name for p in out.iterdir() if p.name.startswith(CASE_PREFIX) and p.name not in planned)
        if foreign:
            raise FileExistsError(
                f"{out} holds case folders this generator did not write ({', '.join(foreign[:5])}); "
                "move them away or choose another folder."
            )
    else:
        visible = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
        if visible:
            listed = ", ".join(visible[:5]) + (", ..." if len(visible) > 5 else "")
            raise FileExistsError(
                f"{out} is not empty ({listed}) and has no {MANIFEST} from this generator; refusing to mix "
                "synthetic cases with other files. Choose an empty or new folder."
            )
        manifest = {**settings, "cases": 0, "complete": {}}
    manifest["cases"] = max(manifest["cases"], cases)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f".{MANIFEST}.*.partial*"):
        stale.unlink()  # left by a killed run
    _save_manifest(out, manifest)
    return manifest


def _run(
    out: Path, indices: list[int], seed: int, shape: tuple[int, int, int], preview: bool, workers: int
) -> Iterator[tuple[str, dict[str, str]]]:
    """Write the cases, yielding ``(case_id, digests)`` as each one finishes."""
    if workers == 1 or len(indices) <= 1:
        for index in indices:
            yield _write_case(out, index, seed, shape, preview)
        return
    # spawn: fresh workers do not inherit the threads (rich, torch, BLAS) of the calling process. Each
    # worker is one single-threaded process per core: BLAS threads on top would only spin and compete.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(min(workers, len(indices)), mp_context=context)
    try:
        with environment(dict.fromkeys(THREAD_VARIABLES, "1")):  # read by the workers as they start
            futures = [pool.submit(_write_case, out, index, seed, shape, preview) for index in indices]
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(cancel_futures=True)


def generate_dataset(
    out: str | os.PathLike,
    cases: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    preview: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> list[Path]:
    """Write ``cases`` synthetic cases into ``out`` in the BraTS 2020 layout.

    Cases already complete in ``out`` from an earlier run with the same settings are kept (see the
    module docstring for the rule); the rest are generated.

    Args:
        out: Dataset folder; created if missing. It must be empty or hold this generator's cases
            made with the same ``seed`` and ``shape``.
        cases: Number of cases, named ``BraTS20_Training_001`` onwards.
        seed: Non-negative dataset seed; case ``i`` uses ``np.random.default_rng([seed, i])``. Defaults to 0.
        shape: Volume size in voxels. Defaults to 240x240x155.
        preview: Also write ``out/previews/<case_id>.png``. Defaults to False.
        workers: Processes generating cases in parallel. A script that passes more than 1 needs the
            usual ``if __name__ == "__main__":`` guard. Defaults to 1.
        progress: Show a progress bar. Defaults to True.

    Returns:
        The case folders, in case order.

    Raises:
        ValueError: If an argument is out of range.
        FileExistsError: If ``out`` holds files this generator did not write with these settings.
    """
    shape = check_shape(shape)
    for name, value, least in (("cases", cases, 1), ("seed", seed, 0), ("workers", workers, 1)):
        if not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"{name} must be an integer of at least {least}, got {value!r}.")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose a folder for the synthetic cases.")
    out.mkdir(parents=True, exist_ok=True)
    # One generator at a time: the nodes of a launch sharing a file system all start one, and each
    # removes the temporary files it takes for a killed run's. The others wait, then find the cases complete.
    lock = out / LOCK
    created = not lock.exists()
    with FileLock(lock):
        try:
            manifest = _claim_output(out, seed, shape, cases)
        except FileExistsError:
            if created:
                lock.unlink(missing_ok=True)  # a refused folder is left as it was
            raise
        todo = [
            i
            for i in range(1, cases + 1)
            if not _is_complete(out, case_id(i), manifest["complete"].get(case_id(i)), preview)
        ]
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task(f"synthetic cases -> {out}", total=cases, completed=cases - len(todo))
            for name, digests in _run(out, todo, seed, shape, preview, workers):
                # Listed only now that all its files are in place: this is what makes a case complete.
                manifest["complete"][name] = digests
                _save_manifest(out, manifest)
                bar.advance(task)
    return [out / case_id(i) for i in range(1, cases + 1)]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m tumorseg.phantoms",
        description="Write synthetic BraTS 2020-like cases (FLAIR, T1, T1ce, T2, seg) for tests and quick starts.",
    )
    parser.add_argument("out", type=Path, help="dataset folder: new, empty, or written by an earlier identical run")
    parser.add_argument("--cases", type=int, required=True, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=list(DEFAULT_SHAPE),
        metavar=("X", "Y", "Z"),
        help="volume size (default: 240 240 155)",
    )
    parser.add_argument("--preview", action="store_true", help="also write OUT/previews/<case_id>.png")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default: 1)")
    add_debug_option(parser)
    args = parser.parse_args(argv)

    def generate() -> None:
        folders = generate_dataset(args.out, args.cases, args.seed, args.shape, args.preview, args.workers)
        print(f"{len(folders)} cases in {args.out}")

    return run_command(generate, debug=args.debug)
