"""Suite-wide settings.

The README's test command runs the suite in parallel (pytest-xdist, ``-n auto`` in pyproject.toml:
one worker per core, at most 4). Each worker, and every process a test starts, then uses one
thread: two workers of two OpenMP threads each on two cores wait on each other instead of working.
"""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = "1"
    import torch

    torch.set_num_threads(1)
