"""How every command ends: one message and exit status 2 for a user error (a traceback only with
--debug or HYDRA_FULL_ERROR=1), Hydra mistakes with the choices and the fix, and a full disk or an
unwritable output that loses nothing already written."""

from __future__ import annotations

import errno
import json
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import pytest
import torch
from brats_fixtures import write_dataset
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from test_predict import SHAPE, predict_cfg, stand_in
from train_helpers import CONF, ROOT

from tumorseg.cli import EXIT_INCOMPLETE, EXIT_OK, EXIT_UNUSABLE, describe_os_error, run_command
from tumorseg.data.__main__ import main as data_main
from tumorseg.evaluate.cli import main as evaluate_main
from tumorseg.io import atomic_write
from tumorseg.launch import register_resolvers
from tumorseg.phantoms import dataset as phantom_dataset
from tumorseg.predict import PredictionError, run

register_resolvers()
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
ENV.pop("HYDRA_FULL_ERROR", None)


def full(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ the shared ending


def test_run_command_maps_errors_to_one_message_and_exit_status(capsys):
    assert run_command(lambda: None) == EXIT_OK
    assert run_command(lambda: EXIT_INCOMPLETE) == EXIT_INCOMPLETE

    def bad_option():
        raise ValueError("--cases: 3 case(s) are unknown; check the list.")

    assert run_command(bad_option) == EXIT_UNUSABLE
    assert capsys.readouterr().err == "error: --cases: 3 case(s) are unknown; check the list.\n"

    def disk_full():
        raise full("/data/out/metrics.csv")

    assert run_command(disk_full) == EXIT_UNUSABLE
    assert capsys.readouterr().err == (
        "error: /data/out/metrics.csv: No space left on device; free space, or write to another disk\n"
    )
    with pytest.raises(ValueError, match="unknown"):
        run_command(bad_option, debug=True)  # --debug: the traceback

    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):  # not a user error: its traceback stays
        run_command(bug)


def test_os_errors_name_the_file_and_what_to_do():
    denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/seg/case.nii.gz")
    assert describe_os_error(denied) == "/seg/case.nii.gz: Permission denied; fix its permissions, or use another path"
    read_only = OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/cd")
    assert describe_os_error(read_only) == "/mnt/cd: Read-only file system; write to another disk"
    assert describe_os_error(FileNotFoundError("ckpt_path=x.ckpt: no such checkpoint file.")) == (
        "ckpt_path=x.ckpt: no such checkpoint file."
    )  # raised with a message of its own: kept


# ------------------------------------------------------------------------------------ Hydra mistakes


@pytest.mark.parametrize(
    ("script", "override", "expected"),
    [
        ("train.py", "modle=linknet3d", "error: modle: no such key (did you mean model=linknet3d?)"),
        (
            "train.py",
            "model=linknt3d",
            "error: model=linknt3d: no such option (did you mean model=linknet3d?); "
            "model is one of arunet3d, linknet3d, pspnet3d (conf/model/).",
        ),
        ("train.py", "experiment=brats_linknet", "(did you mean experiment=brats_linknet3d or"),
        (
            "train.py",
            "experiment=brats_linknet",
            "; experiment is one of brats, brats_arunet3d, brats_cpu, brats_linknet3d,",
        ),
        ("train.py", "data.pach_size=64", "error: data.pach_size: no such key (did you mean data.patch_size=64"),
        ("train.py", "data.patch_size", "error: Error parsing override 'data.patch_size'; missing EQUAL"),
        ("predict.py", "overlapp=0.25", "error: overlapp: no such key (did you mean overlap=0.25?)"),
    ],
)
def test_config_mistakes_print_the_choices_and_the_fix(hydra_script, tmp_path, script, override, expected):
    status, _, err = hydra_script(script, override, f"paths.root_dir={tmp_path}")
    assert status == EXIT_UNUSABLE
    assert expected in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "outputs").exists()  # stopped before any run started


def test_an_unknown_top_level_key_lists_the_groups(hydra_script, tmp_path):
    _, _, err = hydra_script("train.py", "trainr.max_epochs=3", f"paths.root_dir={tmp_path}")
    first, second = err.strip().splitlines()
    assert first == "error: trainr: no such key (did you mean trainer.max_epochs=3?)"
    assert "config groups and keys: callbacks," in second and "model," in second and "optimizer," in second
    assert second.endswith("; +trainr.max_epochs=3 adds a new key instead.")


def test_missing_mandatory_values_say_what_to_give(hydra_script, tmp_path):
    status, _, err = hydra_script("train.py", "data=brats", f"paths.root_dir={tmp_path}")
    assert status == EXIT_UNUSABLE
    assert err.strip().splitlines()[-1] == (
        "error: Missing mandatory value data.root: give it on the command line: data.root=/path/to/BraTS2021_Training_Data"
    )
    assert "Traceback" not in err and "Error executing job" not in err


def test_predict_without_ckpt_path_and_no_shipped_model(hydra_script, monkeypatch, tmp_path):
    registry = tmp_path / "empty" / "pretrained.json"
    registry.parent.mkdir()
    registry.write_text('{"models": []}')
    monkeypatch.setenv("TUMORSEG_PRETRAINED_REGISTRY", str(registry))
    status, _, err = hydra_script("predict.py", f"input={tmp_path}", f"paths.root_dir={tmp_path}")
    assert status == EXIT_UNUSABLE
    assert "error: Give `ckpt_path=PATH` (or a URL, or a list [A,B,C] for an ensemble)." in err


def test_hydra_full_error_keeps_the_traceback(hydra_script, monkeypatch, tmp_path):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["train.py", "modle=linknet3d", f"paths.root_dir={tmp_path}"])
    with pytest.raises(ConfigCompositionException, match="Could not override 'modle'"):
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    assert os.environ["HYDRA_FULL_ERROR"] == "1" and "TUMORSEG_USER_HYDRA_FULL_ERROR" not in os.environ


def test_the_patch_too_small_message(hydra_script, tmp_path):
    status, _, err = hydra_script(
        "train.py", "model=linknet3d", "data.patch_size=32", f"paths.root_dir={tmp_path}",
        f"paths.data_dir={tmp_path / 'data'}",
    )  # fmt: skip
    assert status == EXIT_UNUSABLE
    assert err.strip().splitlines()[-1] == (
        "error: data.patch_size=32 is too small for linknet3d, which needs at least 64 voxels per axis; "
        "pass data.patch_size=64 (or larger) along every axis."
    )
    assert "Traceback" not in err


def test_the_resume_of_another_model_message(hydra_script, tmp_path):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={tmp_path}"])
    earlier = tmp_path / "outputs" / "train" / "runs" / "earlier"
    (earlier / "checkpoints").mkdir(parents=True)
    OmegaConf.save(OmegaConf.masked_copy(cfg, ["task_name", "data"]), earlier / "config.yaml")
    last = earlier / "checkpoints" / "last.ckpt"
    torch.save({"hyper_parameters": {"network": {"name": "arunet3d"}}}, last)

    status, _, err = hydra_script("train.py", "model=pspnet3d", "resume=true", f"paths.root_dir={tmp_path}")
    assert status == EXIT_UNUSABLE
    assert err.strip().splitlines()[-1] == (
        f"error: resume found {last}, a arunet3d checkpoint, but model=pspnet3d; pass model=arunet3d, "
        "a different task_name, or ckpt_path=<checkpoint> explicitly."
    )


def test_a_real_process_ends_without_traceback(tmp_path):
    """The same ending in a process of its own, as a user runs it, and with HYDRA_FULL_ERROR=1."""
    command = [sys.executable, str(ROOT / "train.py"), "modle=linknet3d", f"paths.root_dir={tmp_path}"]
    done = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_UNUSABLE
    assert done.stderr.startswith("error: modle: no such key (did you mean model=linknet3d?)\n")
    assert "Traceback" not in done.stderr and "HYDRA_FULL_ERROR" not in done.stderr


# ------------------------------------------------------------------------------------ predict.py: faults


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, list[str], Path]:
    data = tmp_path / "data"
    ids = write_dataset(data, "brats2020", 3, shape=SHAPE)
    return data, ids, stand_in(tmp_path / "m.ckpt", (10.0, 10.0, -10.0))


def fill_disk_at(monkeypatch, calls: set[int], code: int = errno.ENOSPC) -> list[str]:
    """``nibabel.save`` (what writes label maps) writes half its file, then fails with ``code``
    on the given calls (0-based), as a disk that fills up mid-write; returns the files tried."""
    real_save, tried = nib.save, []

    def save(image, filename):
        tried.append(str(filename))
        real_save(image, filename)
        if len(tried) - 1 in calls:
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            raise OSError(code, os.strerror(code), str(filename))

    monkeypatch.setattr(nib, "save", save)
    return tried


def test_a_full_disk_stops_predict_and_keeps_what_was_written(tmp_path, dataset, monkeypatch, capsys):
    data, ids, ckpt = dataset
    out = tmp_path / "seg"
    args = (f"ckpt_path={ckpt}", f"input={data}", f"output_dir={out}", "evaluate=false", "png=false")

    fill_disk_at(monkeypatch, {1})  # the second case's label map does not fit
    assert run(predict_cfg(tmp_path, *args)) == EXIT_INCOMPLETE
    report = capsys.readouterr().out
    assert "(1 written, 0 kept, 0 skipped, 1 failed, 1 not attempted" in report
    assert f"FAILED {ids[1]}: " in report and "No space left on device; free space" in report
    assert f"STOPPED: {out}: No space left on device; 1 case(s) not attempted." in report
    assert sorted(p.name for p in out.iterdir()) == [f"{ids[0]}.nii.gz"]  # no partial file left
    first = nib.load(out / f"{ids[0]}.nii.gz")
    assert first.shape == SHAPE and first.get_fdata().max() > 0  # complete and readable

    monkeypatch.undo()
    assert run(predict_cfg(tmp_path, *args)) == EXIT_OK  # once there is room: the rest
    assert "(2 written, 1 kept, 0 skipped, 0 failed" in capsys.readouterr().out


def test_rewriting_on_a_full_disk_leaves_every_existing_file_as_it_was(tmp_path, dataset, monkeypatch, capsys):
    data, _, ckpt = dataset
    out = tmp_path / "seg"
    args = (f"ckpt_path={ckpt}", f"input={data}", f"output_dir={out}")
    assert run(predict_cfg(tmp_path, *args)) == EXIT_OK
    before = file_bytes(out)

    tried = fill_disk_at(monkeypatch, {0})
    assert run(predict_cfg(tmp_path, *args, "overwrite=true")) == EXIT_INCOMPLETE
    assert len(tried) == 1 and "1 failed, 2 not attempted" in capsys.readouterr().out
    assert file_bytes(out) == before  # nothing lost, truncated or left behind


def test_an_unwritable_file_fails_its_case_and_the_others_go_on(tmp_path, dataset, monkeypatch, capsys):
    data, ids, ckpt = dataset
    out = tmp_path / "seg"
    fill_disk_at(monkeypatch, {1}, errno.EACCES)
    args = (f"ckpt_path={ckpt}", f"input={data}", f"output_dir={out}", "evaluate=false", "png=false")
    assert run(predict_cfg(tmp_path, *args)) == EXIT_INCOMPLETE
    report = capsys.readouterr().out
    assert "(2 written, 0 kept, 0 skipped, 1 failed" in report and "not attempted" not in report
    assert f"FAILED {ids[1]}: " in report and "Permission denied; fix its permissions" in report
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{ids[0]}.nii.gz", f"{ids[2]}.nii.gz", "summary.csv"])


@pytest.mark.parametrize("how", ["below a file", "read-only"])
def test_an_unwritable_output_folder_stops_before_the_first_case(tmp_path, dataset, monkeypatch, capsys, how):
    data, _, ckpt = dataset
    if how == "below a file":
        (tmp_path / "taken").write_text("a file, not a folder")
        out = tmp_path / "taken" / "seg"
    else:
        out = tmp_path / "seg"
        out.mkdir()
        out.chmod(0o555)
        if os.access(out, os.W_OK):  # root writes anyway: the write is refused here instead
            real = tempfile.TemporaryFile

            def refused(*args, dir=None, **kwargs):
                if Path(dir) == out:
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out))
                return real(*args, dir=dir, **kwargs)

            monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    cfg = predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={data}", f"output_dir={out}")
    try:
        with pytest.raises(PredictionError, match=rf"output_dir={out} cannot be written: "):
            run(cfg)
        assert run_command(lambda: run(cfg)) == EXIT_UNUSABLE
    finally:
        if out.is_dir():
            out.chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith(f"error: output_dir={out} cannot be written: ") and len(err.splitlines()) == 1
    assert ("Not a directory" if how == "below a file" else "Permission denied") in err
    assert not out.is_dir() or not any(out.iterdir())


def test_cases_that_are_not_selected_are_not_counted_as_skipped(tmp_path, dataset, capsys):
    data, ids, ckpt = dataset
    next((data / ids[1]).glob("*_t1ce.nii.gz")).unlink()
    common = (f"ckpt_path={ckpt}", f"input={data}", "evaluate=false", "png=false")
    assert run(predict_cfg(tmp_path, *common, f"output_dir={tmp_path / 'a'}", f"cases=[{ids[0]}]")) == EXIT_OK
    assert "(1 written, 0 kept, 0 skipped, 0 failed" in capsys.readouterr().out
    assert run(predict_cfg(tmp_path, *common, f"output_dir={tmp_path / 'b'}", f"cases=[{ids[0]},{ids[1]}]")) == 1
    assert "(1 written, 0 kept, 1 skipped, 0 failed" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ the argparse commands


def test_evaluate_with_an_unwritable_output(tmp_path, capsys):
    ref = tmp_path / "ref"
    (case_id,) = write_dataset(ref, "brats2020", 1, shape=SHAPE)
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / f"{case_id}.nii.gz").write_bytes(next(ref.rglob("*_seg.nii.gz")).read_bytes())
    (tmp_path / "taken").write_text("a file")
    argv = ["--pred", str(pred), "--ref", str(ref), "--workers", "1", "--out", str(tmp_path / "taken" / "m.csv")]
    assert evaluate_main(argv) == EXIT_UNUSABLE
    err = capsys.readouterr().err.strip()  # after the progress bar's last line
    assert err.startswith("error: ") and "taken" in err and "Traceback" not in err and len(err.splitlines()) == 1
    with pytest.raises(OSError):
        evaluate_main([*argv, "--debug"])
    assert evaluate_main(argv[:-2]) == EXIT_OK


def test_check_ends_an_unreadable_dataset_with_one_message(tmp_path, monkeypatch, capsys):
    def unreadable(root, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(root))

    monkeypatch.setattr("tumorseg.data.check.check_dataset", unreadable)
    assert data_main(["check", str(tmp_path)]) == EXIT_UNUSABLE
    assert (
        capsys.readouterr().err == f"error: {tmp_path}: Permission denied; fix its permissions, or use another path\n"
    )
    with pytest.raises(PermissionError):
        data_main(["check", str(tmp_path), "--debug"])


def test_synthetic_on_a_full_disk_keeps_the_cases_written(tmp_path, monkeypatch, capsys):
    out = tmp_path / "phantoms"
    shape = ("24", "24", "16")
    assert phantom_dataset.main([str(out), "--cases", "1", "--shape", *shape]) == EXIT_OK
    before = file_bytes(out)
    real = phantom_dataset.write_atomic

    def write_atomic(path, content):
        if "_002" not in str(path):
            return real(path, content)
        with atomic_write(path, "wb") as file:  # the disk fills up halfway through the file
            file.write(content[: len(content) // 2])
            raise full(path)

    monkeypatch.setattr(phantom_dataset, "write_atomic", write_atomic)
    assert phantom_dataset.main([str(out), "--cases", "2", "--shape", *shape]) == EXIT_UNUSABLE
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "_002" in err and "No space left on device; free space" in err
    after = file_bytes(out)
    manifest = [json.loads(files.pop(phantom_dataset.MANIFEST)) for files in (before, after)]
    assert after == before  # case 1 as it was, nothing of case 2 half-written
    assert manifest[1]["complete"] == manifest[0]["complete"]  # case 2 not listed as complete
    with pytest.raises(OSError):
        phantom_dataset.main([str(out), "--cases", "2", "--shape", *shape, "--debug"])

    monkeypatch.undo()
    assert phantom_dataset.main([str(out), "--cases", "2", "--shape", *shape]) == EXIT_OK
    after = file_bytes(out)
    assert {k: v for k, v in after.items() if k.startswith("BraTS20_Training_001/")} == {
        k: v for k, v in before.items() if k.startswith("BraTS20_Training_001/")
    }  # case 1 kept as it was
    assert len([k for k in after if k.startswith("BraTS20_Training_002/")]) == 5


def test_synthetic_into_a_path_below_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    assert phantom_dataset.main([str(tmp_path / "taken" / "out"), "--cases", "1", "--shape", "24", "24", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "taken" in err and len(err.splitlines()) == 1
