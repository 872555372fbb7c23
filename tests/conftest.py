"""Suite-wide settings.

The README's test command runs the suite in parallel (pytest-xdist, ``-n auto`` in pyproject.toml:
one worker per core, at most 4). Each worker, and every process a test starts, then uses one
thread: two workers of two OpenMP threads each on two cores wait on each other instead of working.
"""

import logging
import os
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The files that take longest, started first (pyproject.toml's --dist loadfile --no-loadscope-reorder
# hands each file whole to the next free worker, in this order): the workers then end together
# instead of one running a long file alone at the end. Measured on the 2-core machine, one worker.
SLOWEST_FIRST = (
    "test_learning.py",
    "test_train.py",
    "test_benchmark.py",
    "test_readme_commands.py",
    "test_phantoms.py",
    "test_export.py",
    "test_predict.py",
    "test_init_from.py",
)

if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = "1"
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """``paths.data_dir`` of the training tests: phantoms and their cache, made once per worker and
    shared. A dataset's folder is named by its cases, shape and seed and a cache by its settings, so
    a run that asks for other data gets its own."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def hydra_script(monkeypatch, capsys):
    """Runs ``python <script> ARGS`` (a Hydra command of the repository: ``train.py``, ``predict.py``,
    or a module such as ``tumorseg.export`` for ``python -m``) in this process: returns its exit
    status, stdout and stderr, and leaves the logging as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def invoke(script: str, *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", [script, *args])
        with pytest.raises(SystemExit) as ended:
            if script.endswith(".py"):
                runpy.run_path(str(ROOT / script), run_name="__main__")
            else:
                runpy.run_module(script, run_name="__main__", alter_sys=True)
        out, err = capsys.readouterr()
        return ended.value.code, out, err

    yield invoke
    for handler in root.handlers[:]:  # the job's logging, which Hydra configured
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
