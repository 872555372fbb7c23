"""python -m tumorseg.export and the exports' runtimes: each network in each format matches PyTorch,
dynamic axes where the network allows them, the metadata, predict.py with backend=onnx and with
exported files, and the errors.

The exports are made once per module (``exports``): the ONNX exporter takes 10-30 s per network on
two cores whatever the network's size, so tiny widths and one block per stage keep it at that."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from brats_fixtures import write_dataset
from hydra import compose, initialize_config_dir
from test_predict import predict_cfg, save_checkpoint
from train_helpers import CONF

from tumorseg import __version__
from tumorseg.checkpoints import sha256_file
from tumorseg.export import ExportError, OnnxNetwork, TorchScriptNetwork, load_exported
from tumorseg.export.cli import run
from tumorseg.export.runtime import METADATA_KEY
from tumorseg.launch import register_resolvers
from tumorseg.predict import PredictionError, dataset_cases
from tumorseg.predict import run as predict_run
from tumorseg.predict.cli import build_predictor
from tumorseg.training.module import SegmentationModule, load_model

register_resolvers()
MODALITIES = ["flair", "t1ce"]  # not the default four: the metadata must carry them
# network -> (its arguments over the light preset, the checkpoint's window, its label scheme); tiny
# widths and one block per stage, window = twice the stride
NETWORKS = {
    "arunet3d": ({"features": [4, 8, 16]}, 16, "regions"),
    "linknet3d": ({"features": [4, 4, 8, 8], "blocks": [1, 1, 1, 1], "full_resolution": True}, 64, "softmax4"),
    "pspnet3d": (
        {"features": [4, 4, 8, 8], "blocks": [1, 1, 1, 1], "full_resolution": True, "aux_head": True},
        16,
        "regions",
    ),
}
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
SHAPE = (20, 18, 16)  # the synthetic case of the prediction test


def tiny_checkpoint(network: str, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    arguments, roi, scheme = NETWORKS[network]
    model = SegmentationModule(
        {"name": network, **arguments}, labels=scheme, modalities=MODALITIES,
        inference={"roi_size": roi, "sw_batch_size": 2, "overlap": 0.25},
    )  # fmt: skip
    with torch.no_grad():
        # batch norm at its initial statistics is the identity: give it some, as training would
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        # logits spread as a trained model's are, rather than all close to 0 (probabilities near 0.5)
        head = [m for m in model.net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))][-1]
        head.weight.mul_(5)
    return save_checkpoint(model, path)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """PyTorch's two OpenMP threads wait on each other when other jobs share the two cores (the export
    benchmark in the README measured 4-10-fold); the comparisons here do not depend on threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def export_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("export", overrides=[f"paths.root_dir={tmp_path}", "progress=false", *overrides])


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[tuple[str, str], tuple[Path, Path]]:
    """(network, format) -> (checkpoint, export), made by the command's ``run``."""
    folder = tmp_path_factory.mktemp("exports")
    made = {}
    for network in NETWORKS:
        ckpt = tiny_checkpoint(network, folder / f"{network}.ckpt")
        for fmt, suffix in SUFFIX.items():
            out = folder / f"{network}{suffix}"
            assert run(export_cfg(folder, f"ckpt_path={ckpt}", f"format={fmt}", f"out={out}")) == 0
            made[network, fmt] = ckpt, out
    return made


def assert_logits_close(got: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-4) -> None:
    """Within ``tolerance`` of the logits' largest magnitude, at least 1 (the export's own criterion)."""
    assert got.shape == expected.shape
    scaled = (got - expected).abs().max().item() / max(1.0, expected.abs().max().item())
    assert scaled <= tolerance, scaled


# ------------------------------------------------------------------------------------ exports


@pytest.mark.parametrize("fmt", SUFFIX)
@pytest.mark.parametrize("network", NETWORKS)
def test_each_network_exports_and_matches_pytorch(exports, network, fmt):
    ckpt, out = exports[network, fmt]
    assert sorted(p.name for p in out.parent.glob(f"{network}*")) == sorted(
        [ckpt.name, *(f"{network}{s}" for s in SUFFIX.values())]
    )
    model = load_model(ckpt)
    exported = load_exported(out)
    assert isinstance(exported, OnnxNetwork if fmt == "onnx" else TorchScriptNetwork)
    stride = model.net.stride
    roi = NETWORKS[network][1]
    dynamic = not (fmt == "onnx" and network == "pspnet3d")
    # the export's own checks used the window and window + (1, 0, 2) strides: here another size
    sizes = [(roi, roi, roi)] + ([(roi + 2 * stride, roi + stride, roi)] if dynamic else [])
    generator = torch.Generator().manual_seed(7)
    for batch, size in [(3, sizes[0]), *((1, s) for s in sizes[1:])]:
        image = torch.randn((batch, len(MODALITIES), *size), generator=generator)
        with torch.no_grad():
            expected = model.net(image)
        assert_logits_close(exported(image), expected)

    meta = exported.metadata
    assert meta["network"] == network and meta["format"] == fmt and meta["tumorseg_version"] == __version__
    assert meta["modalities"] == MODALITIES and meta["hyper_parameters"]["modalities"] == MODALITIES
    assert meta["scheme"] == NETWORKS[network][2] == exported.scheme
    assert meta["output"]["channels"] == (
        ["wt", "tc", "et"] if meta["scheme"] == "regions" else ["background", "ncr", "ed", "et"]
    )
    assert meta["inference"]["roi_size"] == roi and meta["inference"]["overlap"] == 0.25
    assert meta["source"] == {"checkpoint": ckpt.name, "sha256": sha256_file(ckpt)}
    assert meta["labels"]["conventions"]["brats2020"]["4"] == 3
    axes = meta["axes"]
    assert (axes["batch"], axes["multiple_of"], axes["min_size"]) == ("dynamic", stride, 2 * stride)
    if dynamic:
        assert axes["spatial"] == "dynamic" and axes["size"] is None
    else:
        assert axes["spatial"] == "fixed" and axes["size"] == [roi] * 3 and "PSPNet" in axes["reason"]
        with pytest.raises(ExportError, match=rf"exported for windows of \({roi}, {roi}, {roi}\) only"):
            exported(torch.zeros(1, len(MODALITIES), roi + stride, roi, roi))
    if fmt == "onnx":  # self-contained (no external weights file) and the axes as ONNX sees them
        proto = onnx.load(str(out))
        assert json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY]) == meta
        dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        assert isinstance(dims[0], str) and dims[1] == len(MODALITIES)
        assert all(isinstance(d, str) for d in dims[2:]) if dynamic else dims[2:] == [roi] * 3


def test_dynamic_true_is_refused_where_the_network_cannot_and_false_fixes_the_axes(exports, tmp_path):
    ckpt, _ = exports["pspnet3d", "onnx"]
    out = tmp_path / "psp.onnx"
    with pytest.raises(ExportError, match="dynamic=true: pspnet3d cannot be exported to onnx with dynamic spatial"):
        run(export_cfg(tmp_path, f"ckpt_path={ckpt}", f"out={out}", "dynamic=true"))
    assert not out.exists()
    ckpt, _ = exports["arunet3d", "onnx"]
    out = tmp_path / "fixed.pt"
    assert run(export_cfg(tmp_path, f"ckpt_path={ckpt}", "format=torchscript", f"out={out}", "dynamic=false")) == 0
    assert load_exported(out).metadata["axes"]["size"] == [16, 16, 16]


# ------------------------------------------------------------------------------------ prediction


def test_predict_with_onnx_matches_torch(exports, tmp_path):
    """The same sliding window (overlap, mirroring) run by PyTorch, by onnxruntime from the checkpoint
    (exported in memory) and from the exported files: the same labels, probabilities within 1e-4."""
    data = tmp_path / "data"
    write_dataset(data, "brats2020", 1, shape=SHAPE)
    (case,) = dataset_cases(data)
    ckpt, onnx_file = exports["arunet3d", "onnx"]
    _, script_file = exports["arunet3d", "torchscript"]
    runs = {
        "torch": [f"ckpt_path={ckpt}"],
        "onnx from the checkpoint": [f"ckpt_path={ckpt}", "backend=onnx"],
        "onnx file": [f"ckpt_path={onnx_file}"],
        "torchscript file": [f"ckpt_path={script_file}"],
    }
    predictions = {}
    for name, overrides in runs.items():
        predictor = build_predictor(predict_cfg(tmp_path, *overrides, "mirror=true", "device=cpu"))
        assert predictor.configs[0].mirror and predictor.configs[0].overlap == 0.25
        predictions[name] = predictor(case)
    expected = predictions.pop("torch")
    assert 0 < (expected.label > 0).mean() < 1  # a label map with tumour and background: not a trivial one
    # no voxel so close to 0.5 that the backends' float32 rounding (about 1e-6) could flip its label
    assert (expected.probabilities - 0.5).abs().min() > 1e-5
    for name, got in predictions.items():
        np.testing.assert_array_equal(got.label, expected.label, err_msg=name)
        torch.testing.assert_close(got.probabilities, expected.probabilities, rtol=0, atol=1e-4, msg=name)

    # the whole command: the label files written from the ONNX file and from the checkpoint agree
    for name, spec in (("onnx", onnx_file), ("torch", ckpt)):
        out = f"output_dir={tmp_path / name}"
        cfg = predict_cfg(tmp_path, f"ckpt_path={spec}", f"input={data}", out, "png=false", "evaluate=false")
        assert predict_run(cfg) == 0
    written = [np.asarray(nib.load(tmp_path / n / f"{case.case_id}.nii.gz").dataobj) for n in ("onnx", "torch")]
    np.testing.assert_array_equal(*written)


def test_exports_that_are_not_tumorseg_ones_and_a_missing_onnxruntime(tmp_path, monkeypatch):
    plain = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])], "plain",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        ir_version=10, opset_imports=[onnx.helper.make_opsetid("", 17)],  # what onnxruntime 1.18 reads
    )  # fmt: skip
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(ExportError, match="plain.onnx is not an export of tumorseg .*python -m tumorseg.export"):
        build_predictor(predict_cfg(tmp_path, f"ckpt_path={tmp_path / 'plain.onnx'}"))
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="garbage.onnx is not a readable ONNX model"):
        load_exported(tmp_path / "garbage.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(ExportError, match=r"onnxruntime is not installed.*pip install 'tumorseg\[export\]'"):
        load_exported(tmp_path / "plain.onnx")


# ------------------------------------------------------------------------------------ errors


def test_command_errors_write_nothing(exports, tmp_path, monkeypatch, capsys):
    ckpt, _ = exports["arunet3d", "torchscript"]
    with pytest.raises(ExportError, match="format='tflite': choose one of onnx, torchscript"):
        run(export_cfg(tmp_path, f"ckpt_path={ckpt}", "format=tflite", f"out={tmp_path / 'm.tflite'}"))
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        run(export_cfg(tmp_path, f"ckpt_path={tmp_path / 'nothing.ckpt'}", f"out={tmp_path / 'm.onnx'}"))
    with pytest.raises(ExportError, match=r"must end in \.onnx"):
        run(export_cfg(tmp_path, f"ckpt_path={ckpt}", f"out={tmp_path / 'm.bin'}"))
    with pytest.raises(PredictionError, match="backend='tensorrt': choose one of torch, onnx"):
        build_predictor(predict_cfg(tmp_path, f"ckpt_path={ckpt}", "backend=tensorrt"))

    # an existing file is kept, unless overwrite=true
    out = tmp_path / "model.pt"
    out.write_bytes(b"keep me")
    with pytest.raises(ExportError, match="model.pt exists and is kept; overwrite=true replaces it"):
        run(export_cfg(tmp_path, f"ckpt_path={ckpt}", "format=torchscript", f"out={out}"))
    assert out.read_bytes() == b"keep me"
    assert run(export_cfg(tmp_path, f"ckpt_path={ckpt}", "format=torchscript", f"out={out}", "overwrite=true")) == 0
    assert load_exported(out).metadata["network"] == "arunet3d"
    printed = capsys.readouterr().out
    assert f"Wrote {out} (torchscript, arunet3d" in printed and "spatial axes dynamic (multiples of 4" in printed
    assert "TorchScript deprecated" in printed

    # an export that does not match PyTorch is not written, and leaves no partial file
    monkeypatch.setattr(TorchScriptNetwork, "forward", lambda self, windows: self.module(windows) + 0.5)
    out = tmp_path / "bad" / "model.pt"
    with pytest.raises(ExportError, match="differs from PyTorch by 0.5 on a random input .*nothing was written"):
        run(export_cfg(tmp_path, f"ckpt_path={ckpt}", "format=torchscript", f"out={out}"))
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_the_command_line(exports, tmp_path, hydra_script):
    """``python -m tumorseg.export`` ends a mistake with exit status 2 and one line saying what to do
    (the exports themselves ran through the same ``run`` in ``exports``)."""
    ckpt, _ = exports["arunet3d", "torchscript"]
    out = tmp_path / "kept.pt"
    out.write_bytes(b"keep me")
    args = [f"ckpt_path={ckpt}", "format=torchscript", f"out={out}", f"paths.root_dir={tmp_path}"]
    status, _, err = hydra_script("tumorseg.export", *args)
    assert status == 2, err[-2000:]
    assert f"error: out={out} exists and is kept; overwrite=true replaces it" in err
    assert "Traceback" not in err and out.read_bytes() == b"keep me"


def test_a_brats2024_model_exports_its_label_set(tmp_path):
    torch.manual_seed(0)
    model = SegmentationModule(
        {"name": "arunet3d", **NETWORKS["arunet3d"][0]}, labels="regions", label_set="brats2024",
        modalities=MODALITIES, inference={"roi_size": 16, "sw_batch_size": 2, "overlap": 0.25},
    )  # fmt: skip
    ckpt = save_checkpoint(model, tmp_path / "brats2024.ckpt")
    out = tmp_path / "brats2024.pt"
    assert run(export_cfg(tmp_path, f"ckpt_path={ckpt}", "format=torchscript", f"out={out}")) == 0
    exported = load_exported(out)
    labels = exported.metadata["labels"]
    # four sigmoid channels, the cavity last; the six regions of the 2024 evaluation
    assert exported.metadata["output"]["channels"] == ["wt", "tc", "et", "rc"]
    assert (
        labels["label_set"] == "brats2024" and labels["regions"]["rc"] == [4] and labels["regions"]["wt"] == [1, 2, 3]
    )
    assert list(labels["conventions"]) == ["brats2024"] and labels["classes"]["4"] == "RC"
    assert exported.label_set.name == "brats2024"
    image = torch.randn(1, len(MODALITIES), 16, 16, 16)
    with torch.no_grad():
        assert_logits_close(exported(image), model.net.eval()(image))
