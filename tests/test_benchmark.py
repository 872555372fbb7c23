"""End-to-end tests of experiments/benchmark.py on tiny CPU inputs.

Each command runs through the script's ``main(argv)`` in this process (its measurements still run
in the fresh processes the benchmark spawns for them); a failing command's message is its exit code.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tumorseg.models import build_model
from tumorseg.models.summary import forward_flops

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "experiments" / "benchmark.py"
CASES = [("arunet3d", 16, None), ("linknet3d", 64, ["fp32"])]  # (model, patch, --modes); None: the defaults
DEFAULT_MODES = ["fp32", "bf16", "bf16-cl"]


@pytest.fixture(scope="module")
def benchmark_module():
    """experiments/benchmark.py imported in this process, as ``python experiments/benchmark.py`` runs it."""
    spec = importlib.util.spec_from_file_location("benchmark_under_test", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def run(module, capsys, *args: str) -> str:
    """What ``python experiments/benchmark.py ARGS`` prints; a failure raises its SystemExit."""
    capsys.readouterr()
    module.main([str(a) for a in args])
    return capsys.readouterr().out


def refused(module, *args: str) -> str:
    """The message ``python experiments/benchmark.py ARGS`` exits with (on stderr, exit status 1)."""
    with pytest.raises(SystemExit) as exit_info:
        module.main([str(a) for a in args])
    assert isinstance(exit_info.value.code, str), exit_info.value.code
    return exit_info.value.code


def expected_step_flops(name: str, patch: int) -> int:
    """Independent FLOP count: a convolution's backward costs twice its forward (input and weight
    gradients), except for the first one, whose input needs no gradient."""
    shape = (1, 4, patch, patch, patch)
    model = build_model(name, "light")
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv3d))
    return 3 * forward_flops(model, shape) - forward_flops(first_conv, shape)


def benchmark(module, capsys, tmp_path: Path, *args: str) -> list[dict]:
    jsonl = tmp_path / "out" / "step.jsonl"
    tiny = "--device cpu --batch 1 --steps 2 --warmup 1".split()
    out = run(module, capsys, "step", *tiny, "--jsonl", jsonl, *args)
    assert "ms/step" in out  # the table
    return [json.loads(line) for line in jsonl.read_text().splitlines()]


@pytest.mark.parametrize(("name", "patch", "modes"), CASES)
def test_step(benchmark_module, capsys, tmp_path, name, patch, modes):
    mode_args = ["--modes", *modes] if modes else []
    records = benchmark(
        benchmark_module, capsys, tmp_path, "--model", name, "--preset", "light", "--patch", str(patch), *mode_args
    )
    flops = expected_step_flops(name, patch)
    assert [r["mode"] for r in records] == (modes or DEFAULT_MODES)
    for r in records:
        assert r["error"] is None
        assert (r["model"], r["preset"], r["batch"], r["patch"]) == (name, "light", 1, patch)
        assert (r["in_channels"], r["out_channels"], r["device"]) == (4, 3, "cpu")
        for key in ("ms", "patches_per_s", "mvox_per_s", "tflop_per_s", "peak_mem_gib", "speedup_vs_fp32"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert (r["steps"], r["warmup"]) == (2, 1) and r["ms_min"] <= r["ms"]
        # every rate is the step's work over its median time, the speed-up relative to fp32's
        assert r["patches_per_s"] == pytest.approx(1e3 / r["ms"])
        assert r["mvox_per_s"] == pytest.approx(r["patches_per_s"] * patch**3 / 1e6)
        assert r["tflop_per_step"] * 1e12 == pytest.approx(flops, rel=1e-9)
        assert r["tflop_per_s"] == pytest.approx(r["tflop_per_step"] / (r["ms"] / 1e3))
        assert r["speedup_vs_fp32"] == pytest.approx(records[0]["ms"] / r["ms"])
        assert 0.05 < r["peak_mem_gib"] < 64  # on the CPU the process's peak RSS: torch itself, a few hundred MiB
    assert records[0]["speedup_vs_fp32"] == 1.0

    report = run(benchmark_module, capsys, "report", tmp_path / "out" / "step.jsonl", "--peak-tflops", "1")
    assert name in report and "% of peak" in report
    assert all(mode in report for mode in (modes or DEFAULT_MODES))


def test_report_rejects_foreign_files(benchmark_module, tmp_path):
    bad = tmp_path / "notes.jsonl"
    bad.write_text("{}\nnot json\n")
    assert "notes.jsonl, line 2 is not JSON" in refused(benchmark_module, "report", bad)


def test_patch_too_small(benchmark_module):
    message = refused(benchmark_module, "step", "--model", "linknet3d", "--patch", "32", "--device", "cpu")
    assert "--patch 32 is too small for linknet3d" in message and "--patch 64" in message


def test_data(benchmark_module, capsys, tmp_path):
    from tumorseg.phantoms import generate_dataset

    generate_dataset(tmp_path / "phantoms", 2, seed=1, shape=(48, 40, 32), progress=False)
    jsonl = tmp_path / "data.jsonl"
    args = f"--root {tmp_path / 'phantoms'} --work-dir {tmp_path / 'work'} --cases 2 --patch 16 --batch 2"
    args += " --samples-per-volume 2 --step-model arunet3d --step-preset light --step-mode fp32 --workers 2"
    out = run(benchmark_module, capsys, "data", *args.split(), "--device", "cpu", "--jsonl", jsonl)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    records = {(r["measure"], r.get("pipeline")): r for r in lines}
    assert len(records) == len(lines) == 8  # one record per measure and pipeline
    assert {r["measure"] for r in lines} == {
        "cpu_s_per_patch", "speedup", "cache_build_s_per_case", "augmentation_ms", "step_ms",
        "augmentation_share_percent", "loader_peak_gib",
    }  # fmt: skip
    assert all((r["benchmark"], r["cases"], r["patch"]) == ("data", 2, 16) and not r.get("error") for r in lines)
    naive = records[("cpu_s_per_patch", "naive TorchIO (no RandomBiasField)")]["value"]
    ours = records[("cpu_s_per_patch", "tumorseg cache + queue")]["value"]
    assert naive > 0 and ours > 0
    assert all(records[("cpu_s_per_patch", p)]["samples_per_volume"] == 2 for _, p in records if p)
    assert records[("speedup", None)]["value"] == pytest.approx(naive / ours)
    assert records[("cache_build_s_per_case", None)]["value"] > 0
    augmentation, step = records[("augmentation_ms", None)]["value"], records[("step_ms", None)]["value"]
    assert augmentation > 0 and step > 0 and records[("step_ms", None)]["model"] == "arunet3d"
    assert records[("augmentation_share_percent", None)]["value"] == pytest.approx(100 * augmentation / step)
    memory = records[("loader_peak_gib", None)]
    assert memory["peak_gib"] >= memory["baseline_gib"] > 0 and memory["patches"] == 4  # 2 cases x 2 samples
    assert (memory["workers"], memory["queue_length"]) == (2, 24) and memory["patches_per_s"] > 0
    # the data bound: the queue's 24 patches (float16 image + uint8 label) and 2 cases per worker
    assert memory["data_bound_gib"] > 24 * (4 * 2 + 1) * 16**3 / 2**30
    assert "speed-up of the cache over naive" in out


def test_infer(benchmark_module, capsys, tmp_path):
    jsonl = tmp_path / "infer.jsonl"
    args = "--model arunet3d --preset light --shape 24 20 16 --roi 16 --overlap 0.5 --sw-batch 2 --repeats 1"
    # one thread: two OpenMP threads slow down tenfold when another process holds one of two cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = run(benchmark_module, capsys, "infer", *args.split(), "--device", "cpu", "--jsonl", jsonl)
    finally:
        torch.set_num_threads(threads)
    assert "hann" in out and "s/case" in out  # the table
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["backend"] for r in records] == ["monai", "torchio"]
    monai, torchio = records
    assert (monai["blending"], torchio["blending"]) == ("gaussian", "hann")
    for r in records:
        assert r["benchmark"] == "infer" and r["error"] is None
        assert (r["model"], r["preset"], r["shape"]) == ("arunet3d", "light", [24, 20, 16])
        assert (r["roi"], r["overlap"], r["sw_batch"], r["bf16"], r["mirror"]) == (16, 0.5, 2, False, False)
        assert (r["in_channels"], r["out_channels"], r["device"], r["repeats"]) == (4, 3, "cpu", 1)
        assert r["device_name"] and r["torchio_patch_overlap"] == 8
        assert r["windows"] == 4  # 2 x 2 x 1 windows of 16^3 with a step of 8
        assert math.isfinite(r["s"]) and r["s"] > 0 and r["s_min"] <= r["s"]
        if sys.platform == "linux":  # peak RSS growth; None elsewhere
            assert r["peak_mem_gib"] >= 0 and r["peak_mem_gib"] == r["host_rss_growth_gib"]
        # untrained weights disagree between overlapping windows, so the blendings differ a little
        assert 0.9 < r["threshold_agreement"] <= 1 and 0.9 < r["threshold_dice"] <= 1
        assert 0 <= r["argmax_agreement"] <= 1
    assert monai["time_ratio_vs_monai"] == 1.0
    assert torchio["time_ratio_vs_monai"] == pytest.approx(torchio["s"] / monai["s"])
    faster = "faster here by" if torchio["s"] >= monai["s"] else "slower here by"
    assert f"predict.py uses MONAI's sliding window ({faster}" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [("--roi 48", "larger than the case"), ("--roi 16 --model linknet3d", "--roi 64"), ("--overlap 1", "[0, 1)")],
)
def test_infer_rejects_bad_windows(benchmark_module, args, message):
    base = "infer --model arunet3d --shape 40 36 32 --device cpu".split()
    assert message in refused(benchmark_module, *base, *args.split())  # before any measurement starts


def test_export_rejects_a_missing_case(benchmark_module, tmp_path):
    # before any checkpoint is made or exported
    message = refused(benchmark_module, "export", "--case", tmp_path / "absent", "--out", tmp_path / "out")
    assert "absent: no such case folder" in message
    assert not (tmp_path / "out").exists()
