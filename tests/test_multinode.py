"""Multi-node DDP on one machine: two "nodes" of one CPU process each, started by torchrun with the
static rendezvous over TCP and the gloo backend; and how the ranks of a launch name their run."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from train_helpers import CONF, ROOT, tiny_overrides

from tumorseg.launch import register_resolvers, run_id
from tumorseg.training.callbacks import ValidationCases
from tumorseg.training.module import SegmentationModule

register_resolvers()
REGION_METRICS = ("val/dice_mean", "val/dice_wt", "val/dice_tc", "val/dice_et")
DEADLINE_S = 150  # a hung rendezvous or collective fails the test instead of blocking the suite


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes() -> dict[int, tuple[int, str]]:
    """Every process (Linux /proc): pid -> (parent pid, start time, which tells a reused pid apart)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(stat.parent.name)] = (int(fields[1]), fields[19])
    return found


def descendants(pid: int) -> dict[int, str]:
    """The processes below ``pid``, with their start times: torchrun starts its workers in sessions of
    their own, so they are not in its process group."""
    table = processes()
    found, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, start) in table.items():
            if ppid == parent:
                found[child] = start
                todo.append(child)
    return found


def stop(nodes: list[subprocess.Popen]) -> None:
    """SIGTERM to each torchrun (it stops its workers), then SIGKILL to whatever of them is left."""
    left = {pid: start for node in nodes if node.poll() is None for pid, start in descendants(node.pid).items()}
    for node in nodes:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
    end = time.monotonic() + 10
    for node in nodes:
        try:
            node.wait(timeout=max(end - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
    table = processes()
    for pid, start in left.items():
        if pid in table and table[pid][1] == start:  # still the worker, not a new process with its pid
            os.kill(pid, signal.SIGKILL)


def launch_two_nodes(overrides: list[str], logs: Path) -> list[str]:
    """``torchrun --nnodes 2 --nproc-per-node 1 --node-rank {0,1} --rdzv-endpoint 127.0.0.1:PORT
    train.py ...`` (the static rendezvous, torchrun's default, the only one that takes --node-rank);
    returns each node's output. Fails, with both outputs, if either node fails or the deadline passes."""
    endpoint = f"127.0.0.1:{free_port()}"
    pythonpath = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    nodes, files = [], []
    for rank in (0, 1):
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                    "--node-rank", str(rank), "--rdzv-endpoint", endpoint]  # fmt: skip
        script = [str(ROOT / "train.py"), *overrides]
        if rank == 1:
            # Node 1's worker starts 2 s after node 0's (after the rendezvous both start at once, unlike on
            # real nodes), so ranks naming the run after their own clock would name two.
            script = ["--no-python", "sh", "-c", 'sleep 2 && exec "$0" -u "$@"', sys.executable, *script]
        command = [*torchrun, *script]
        files.append(open(logs / f"node{rank}.log", "w+"))
        nodes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=files[-1], stderr=subprocess.STDOUT))
    end = time.monotonic() + DEADLINE_S
    try:
        while any(node.poll() is None for node in nodes) and time.monotonic() < end:
            if any(node.poll() not in (None, 0) for node in nodes):
                break  # one node failed: the other would wait for it until its timeouts
            time.sleep(0.5)
        codes = [node.poll() for node in nodes]
    finally:
        stop(nodes)
    outputs = []
    for file in files:
        file.seek(0)
        outputs.append(file.read())
        file.close()
    if codes != [0, 0]:
        report = "\n".join(
            f"===== node {r} (exit status {c}) =====\n{o[-6000:]}" for r, (c, o) in enumerate(zip(codes, outputs))
        )
        pytest.fail(f"the two-node launch {'timed out' if None in codes else 'failed'}: {codes}\n{report}")
    return outputs


def read_csv(path: Path) -> list[dict]:
    with open(path) as file:
        return list(csv.DictReader(file))


@pytest.mark.timeout(DEADLINE_S + 60)  # the launch stops itself at DEADLINE_S; this bounds the rest too
def test_two_nodes_train_into_one_run_and_validate_each_case_once_like_one_process(tmp_path):
    overrides = [
        *tiny_overrides(tmp_path, tmp_path / "data", epochs=1, batches=2),
        "data.num_folds=2",  # 3 of the 6 phantoms validate: shards of 2 and 1 cases
        "trainer=ddp_cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
    ]
    # both nodes generate the phantoms and build the cache into the same folders, as nodes sharing
    # a file system do
    outputs = launch_two_nodes(overrides, tmp_path)

    # one run directory, named from the rendezvous (no --rdzv-id: the shared timestamp), written by rank zero
    runs = sorted((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1, runs
    run_dir = runs[0]
    assert f"Run directory: {run_dir}" in outputs[0] and "Run directory:" not in outputs[1]
    for name in ("config.yaml", ".hydra/config.yaml", "split.json", "run_info.json", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "run_info.json").read_text())
    assert (info["num_nodes"], info["devices"], info["world_size"]) == (2, 1, 2)

    # every validation case validated once, by one of the two ranks
    val_ids = json.loads((run_dir / "split.json").read_text())["val"]
    cases = read_csv(run_dir / "val_cases.csv")
    assert len(val_ids) == 3
    assert sorted(row["case_id"] for row in cases) == sorted(val_ids)
    assert sorted(int(row["rank"]) for row in cases) == [0, 0, 1]
    assert {row["epoch"] for row in cases} == {"0"}

    # the logged scores are the means of these cases, and those of one process validating the checkpoint
    (logged,) = [row for row in read_csv(run_dir / "csv" / "metrics.csv") if row.get("val/dice_mean")]
    for region in ("wt", "tc", "et"):
        mean = sum(float(row[f"dice_{region}"]) for row in cases) / len(cases)
        assert float(logged[f"val/dice_{region}"]) == pytest.approx(mean, abs=1e-6)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    single = tmp_path / "single"
    model = SegmentationModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=single, callbacks=[ValidationCases()])  # fmt: skip
    (result,) = trainer.validate(model, datamodule=instantiate(cfg.data, _convert_="all"))
    for key in REGION_METRICS:
        assert result[key] == pytest.approx(float(logged[key]), abs=1e-6), key
    by_case = {row["case_id"]: row for row in read_csv(single / "val_cases.csv")}
    assert sorted(by_case) == sorted(val_ids)
    for row in cases:
        for region in ("wt", "tc", "et"):
            assert float(row[f"dice_{region}"]) == pytest.approx(
                float(by_case[row["case_id"]][f"dice_{region}"]), abs=1e-6
            )


# ------------------------------------------------------------------------------ run names


def test_run_name_of_slurm_and_torchrun_launches(monkeypatch):
    for var in ("SLURM_JOB_ID", "SLURM_STEP_ID", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "exp7")
    assert run_id() == "torchrun-exp7"
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert run_id() == "slurm-123.0"


def test_torchrun_without_rdzv_id_shares_the_first_ranks_timestamp(monkeypatch):
    # torchrun's agent store, which its workers reach at MASTER_ADDR:MASTER_PORT
    port = free_port()
    store = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10))
    for var in ("SLURM_JOB_ID", "SLURM_STEP_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default --rdzv-id
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("WORLD_SIZE", "2")
    first = run_id()  # the first rank to ask leaves its timestamp
    assert store.get("tumorseg/run_id").decode() == first
    store.set("tumorseg/run_id", "2026-01-02_03-04-05")  # another node's, a second earlier
    assert run_id() == "2026-01-02_03-04-05"

    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # nothing to agree through
    with pytest.raises(ValueError, match="--rdzv-id"):
        run_id()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert run_id() not in ("2026-01-02_03-04-05", "none")
