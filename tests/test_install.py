"""The installable tool: the wheel carries the package, its configs (``conf/`` as ``tumorseg.conf``),
the shipped models and the console scripts; installed outside the repository, it composes and trains
from another folder on the installed configs, with a user's own config folder on the search path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from train_helpers import ROOT, tiny_overrides

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

SCRIPTS = ("tumorseg-train", "tumorseg-predict", "tumorseg-export", "tumorseg-evaluate", "tumorseg-data")


def test_the_wheel_lists_every_package_and_the_configs():
    """``pyproject.toml`` names the packages one by one (``conf/`` is mapped in as ``tumorseg.conf``):
    a package added under src/ and not listed would be missing from the wheel."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(path.parent.relative_to(ROOT / "src").parts) for path in (ROOT / "src").rglob("__init__.py")} | {
        "tumorseg.conf"
    }
    assert set(setuptools["packages"]) == found
    assert setuptools["package-dir"]["tumorseg.conf"] == "conf" and (ROOT / "conf" / "__init__.py").is_file()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(SCRIPTS)
    for target in scripts.values():  # each names an existing main
        module, function = target.split(":")
        assert (ROOT / "src" / Path(*module.split("."))).with_suffix(".py").is_file()
        assert f"def {function}(" in (ROOT / "src" / Path(*module.split("."))).with_suffix(".py").read_text()


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """The wheel built from this checkout, and the folder it is installed into (``pip --target``)."""
    pytest.importorskip("setuptools")  # built with this environment's, offline
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # a copy, so that the build leaves nothing in the checkout
    for folder in ("src", "conf"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, source / name)
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp),
        str(source),
    ]
    done = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp.glob("tumorseg-*.whl")
    target = tmp / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return wheel, target


def _env(target: Path) -> dict[str, str]:
    """This interpreter's dependencies, with the installed tumorseg first on the path (before the
    checkout's editable install)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "TUMORSEG_ROOT")}
    env["PYTHONPATH"] = str(target)
    return env


def test_the_wheel_carries_configs_models_and_scripts(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    configs = {p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert {f"tumorseg/conf/{c}" for c in configs} <= names
    assert "tumorseg/conf/__init__.py" in names and "tumorseg/weights/pretrained.json" in names
    shipped = {p.name for p in (ROOT / "src" / "tumorseg" / "weights").glob("*.ckpt")}
    assert shipped and {f"tumorseg/weights/{name}" for name in shipped} <= names
    assert not any(name.startswith(("tests/", "experiments/", "conf/")) for name in names)
    for script in SCRIPTS:
        assert f"{script} = " in entry_points


def test_installed_outside_the_repository_it_trains_from_another_folder(installed, tmp_path, data_dir):
    """``python -m tumorseg.training`` (what ``tumorseg-train`` runs) from a folder without
    ``conf/``: the installed configs compose, a user's experiment from ``hydra.searchpath`` applies,
    and a tiny training runs to its checkpoint."""
    _, target = installed
    work = tmp_path / "elsewhere"
    mine = work / "my_conf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "my_study.yaml").write_text(
        "# @package _global_\ntask_name: my_study\nmodel:\n  optimizer:\n    lr: 0.002\n"
    )
    where = subprocess.run(
        [sys.executable, "-c", "import tumorseg.launch as l; print(l.__file__); print(l.conf_dir())"],
        cwd=work, env=_env(target), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    module, conf = where.stdout.split()
    assert Path(module).is_relative_to(target) and Path(conf) == target / "tumorseg" / "conf", where.stderr

    run_dir = work / "run"
    command = [
        sys.executable, "-m", "tumorseg.training", *tiny_overrides(work, data_dir),
        f"hydra.searchpath=[file://{work / 'my_conf'}]", "experiment=my_study", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=work, env=_env(target), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "my_study.log").is_file()
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "task_name: my_study" in config and "lr: 0.002" in config


def test_the_console_scripts_run(installed):
    """The scripts ``pip`` writes for the entry points: ``tumorseg-data --help`` names itself."""
    _, target = installed
    script = target / "bin" / "tumorseg-data"
    assert script.is_file()
    done = subprocess.run(
        [sys.executable, str(script), "--help"], env=_env(target), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: tumorseg-data"), done.stderr
