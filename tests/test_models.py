"""The three networks: shapes, gradients, determinism, memory formats, argument errors, references."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tumorseg.models import MODELS, ARUNet3D, LinkNet3D, PSPNet3D, build_model, summary
from tumorseg.models.arunet import AttentionGate, PreActResBlock

TINY = {
    "arunet3d": {"features": (4, 8, 8, 16)},
    "linknet3d": {"features": (8, 8, 16, 16), "blocks": (1, 1, 1, 1)},
    "pspnet3d": {"features": (4, 4, 8, 8), "blocks": (1, 1, 1, 1)},
}

# (network, kwargs, input shape, expected output shape)
SHAPE_CASES = [
    ("arunet3d", {}, (1, 4, 16, 16, 16), (1, 3, 16, 16, 16)),
    ("arunet3d", TINY["arunet3d"], (2, 4, 97, 113, 71), (2, 3, 97, 113, 71)),
    (
        "arunet3d",
        {"features": (4, 8), "in_channels": 1, "out_channels": 4, "norm": "instance"},
        (1, 1, 5, 6, 7),
        (1, 4, 5, 6, 7),
    ),
    (
        "arunet3d",
        {"features": (4, 4, 8, 8, 8), "norm": "group", "norm_groups": 4, "act": "leakyrelu", "dropout": 0.2},
        (2, 4, 33, 32, 40),
        (2, 3, 33, 32, 40),
    ),
    ("arunet3d", {"features": (4, 8, 16), "act": "prelu", "out_channels": 1}, (2, 4, 17, 19, 23), (2, 1, 17, 19, 23)),
    ("linknet3d", TINY["linknet3d"], (1, 4, 64, 64, 64), (1, 3, 64, 64, 64)),
    ("linknet3d", TINY["linknet3d"], (2, 4, 97, 113, 71), (2, 3, 97, 113, 71)),
    (
        "linknet3d",
        {"features": (8, 8, 16, 16), "in_channels": 2, "out_channels": 4, "norm": "instance", "act": "gelu"},
        (2, 2, 65, 70, 64),
        (2, 4, 65, 70, 64),
    ),
    (
        "linknet3d",
        {"features": (8, 8, 16, 16), "blocks": (1, 2, 1, 1), "norm": "group", "norm_groups": 2, "dropout": 0.1},
        (1, 4, 64, 96, 64),
        (1, 3, 64, 96, 64),
    ),
    ("linknet3d", {**TINY["linknet3d"], "full_resolution": True}, (2, 4, 97, 113, 71), (2, 3, 97, 113, 71)),
    ("pspnet3d", {}, (1, 4, 16, 16, 16), (1, 3, 16, 16, 16)),
    ("pspnet3d", TINY["pspnet3d"], (2, 4, 97, 113, 71), (2, 3, 97, 113, 71)),
    ("pspnet3d", {**TINY["pspnet3d"], "bins": (1, 2, 4), "norm": "instance", "act": "elu"}, (2, 1, 19, 23, 17), None),
    (
        "pspnet3d",
        {**TINY["pspnet3d"], "aux_head": True, "dropout": 0.1, "in_channels": 1, "out_channels": 4},
        (1, 1, 24, 16, 32),
        (1, 4, 24, 16, 32),
    ),
    (
        "pspnet3d",
        {**TINY["pspnet3d"], "full_resolution": True, "aux_head": True},
        (2, 4, 17, 19, 23),
        (2, 3, 17, 19, 23),
    ),
]


@pytest.mark.parametrize("name,kwargs,shape,expected", SHAPE_CASES)
def test_output_shape(name, kwargs, shape, expected):
    kwargs = dict(kwargs)
    if expected is None:  # in_channels taken from the input shape
        kwargs["in_channels"] = shape[1]
        expected = (shape[0], 3, *shape[2:])
    torch.manual_seed(0)
    net = build_model(name, preset=None, **kwargs)
    for mode in (True, False):
        net.train(mode)
        with torch.no_grad():
            out = net(torch.randn(shape))
        outs = out if mode and kwargs.get("aux_head") else (out,)  # (logits, aux) in training
        for o in outs:
            assert isinstance(o, torch.Tensor) and o.shape == expected and o.dtype == torch.float32
            assert torch.isfinite(o).all()


def test_pspnet_aux_head_in_training_only():
    net = PSPNet3D(**TINY["pspnet3d"], aux_head=True).train()
    out = net(torch.randn(2, 4, 20, 16, 24))
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0].shape == out[1].shape == (2, 3, 20, 16, 24)
    assert isinstance(net.eval()(torch.randn(1, 4, 16, 16, 16)), torch.Tensor)


def _loss(out):
    outs = out if isinstance(out, tuple) else (out,)
    return sum((o.float() ** 2).mean() for o in outs)


GRAD_CASES = [
    ("arunet3d", {**TINY["arunet3d"], "dropout": 0.1}, (2, 4, 16, 16, 16)),
    ("arunet3d", {"features": (4, 8, 8), "norm": "instance", "act": "prelu"}, (1, 4, 12, 8, 10)),
    ("linknet3d", {**TINY["linknet3d"], "dropout": 0.1}, (2, 4, 64, 64, 64)),
    (
        "linknet3d",
        {"features": (8, 8, 8, 8), "blocks": (2, 1, 1, 2), "norm": "group", "norm_groups": 4},
        (1, 4, 64, 64, 64),
    ),
    ("pspnet3d", {**TINY["pspnet3d"], "aux_head": True, "dropout": 0.1}, (2, 4, 16, 16, 16)),
    ("pspnet3d", {**TINY["pspnet3d"], "norm": "instance", "act": "silu"}, (1, 4, 16, 24, 16)),
    ("linknet3d", {**TINY["linknet3d"], "full_resolution": True, "dropout": 0.1}, (1, 4, 64, 64, 64)),
    ("pspnet3d", {**TINY["pspnet3d"], "full_resolution": True, "aux_head": True}, (2, 4, 16, 16, 16)),
]


@pytest.mark.parametrize("name,kwargs,shape", GRAD_CASES)
def test_backward_reaches_every_parameter(name, kwargs, shape):
    torch.manual_seed(0)
    net = build_model(name, preset=None, **kwargs).train()
    with torch.no_grad():  # zero-initialised residual scales hold back their branch's gradient at step 0
        for m in net.modules():
            if getattr(m, "residual_norm", None) and getattr(m, m.residual_norm).weight is not None:
                getattr(m, m.residual_norm).weight.uniform_(0.5, 1.5)
    _loss(net(torch.randn(shape))).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert sum(int(p.grad.count_nonzero()) for p in net.parameters()) > 0.5 * sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", ["linknet3d", "pspnet3d"])
def test_residual_blocks_start_as_their_shortcut(name):
    """Zero-initialised last norm of each residual branch: a block with an identity shortcut is
    act(x) at initialisation, whatever the input (torchvision's zero_init_residual)."""
    torch.manual_seed(0)
    net = build_model(name, preset=None, **TINY[name], norm="instance").train()
    blocks = [m for m in net.modules() if getattr(m, "residual_norm", None)]
    assert blocks and all(getattr(b, b.residual_norm).weight.abs().sum() == 0 for b in blocks)
    identity = [b for b in blocks if isinstance(b.shortcut, nn.Identity)]
    assert identity
    for block in identity:
        channels = next(p for p in block.parameters() if p.ndim == 5).shape[1]
        x = torch.randn(1, channels, 6, 6, 6)
        with torch.no_grad():
            torch.testing.assert_close(block(x), torch.relu(x))


def test_ddp_without_find_unused_parameters(tmp_path):
    """DistributedDataParallel fails on the second step if any parameter went unused."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for name, kwargs, shape in GRAD_CASES[::2]:
            ddp = nn.parallel.DistributedDataParallel(build_model(name, preset=None, **kwargs))
            opt = torch.optim.RMSprop(ddp.parameters(), lr=1e-4)
            for _ in range(2):
                opt.zero_grad(set_to_none=True)
                _loss(ddp(torch.randn(shape))).backward()
                opt.step()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", list(MODELS))
def test_eval_mode_is_deterministic(name):
    torch.manual_seed(0)
    net = build_model(name, preset=None, **TINY[name], dropout=0.3)
    shape = (2, 4, 64, 64, 64) if name == "linknet3d" else (2, 4, 24, 20, 16)
    net.train()
    with torch.no_grad():
        net(torch.randn(shape))  # move batch-norm running statistics away from their initial values
    net.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(MODELS))
def test_channels_last_matches_contiguous(name):
    torch.manual_seed(0)
    net = build_model(name, preset=None, **TINY[name]).eval()
    shape = (2, 4, 70, 64, 66) if name == "linknet3d" else (2, 4, 20, 17, 16)
    x = torch.randn(shape)
    with torch.no_grad():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last_3d)
        out = net_cl(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out.contiguous(), ref, rtol=1e-4, atol=1e-4)


BAD_ARGS = [
    ("arunet3d", {"in_channels": 0}, "in_channels"),
    ("arunet3d", {"out_channels": -1}, "out_channels"),
    ("arunet3d", {"out_channels": 2.0}, "out_channels"),
    ("arunet3d", {"features": ()}, "features"),
    ("arunet3d", {"features": (16,)}, "features"),
    ("arunet3d", {"features": (16, "32")}, "features"),
    ("arunet3d", {"features": 16}, "features"),
    ("arunet3d", {"norm": "layer"}, "norm"),
    ("arunet3d", {"act": "tanh"}, "act"),
    ("arunet3d", {"dropout": 1.0}, "dropout"),
    ("arunet3d", {"dropout": -0.1}, "dropout"),
    ("arunet3d", {"norm": "group", "norm_groups": 3}, "norm_groups"),
    ("arunet3d", {"norm_groups": 0}, "norm_groups"),
    ("linknet3d", {"features": (16, 32, 64)}, "features"),
    ("linknet3d", {"blocks": (2, 2, 2)}, "blocks"),
    ("linknet3d", {"blocks": (2, 0, 2, 2)}, "blocks"),
    ("pspnet3d", {"features": (16, 32, 64, 128, 256)}, "features"),
    ("pspnet3d", {"blocks": "3463"}, "blocks"),
    ("pspnet3d", {"bins": ()}, "bins"),
    ("pspnet3d", {"bins": (1, 0)}, "bins"),
    ("pspnet3d", {"aux_head": "yes"}, "aux_head"),
    ("pspnet3d", {"full_resolution": 1}, "full_resolution"),
    ("linknet3d", {"full_resolution": "true"}, "full_resolution"),
]


@pytest.mark.parametrize("name,kwargs,argument", BAD_ARGS)
def test_bad_arguments_name_the_argument(name, kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        build_model(name, **kwargs)


def test_registry_errors_name_the_choice():
    with pytest.raises(ValueError, match="unet.*arunet3d"):
        build_model("unet")
    with pytest.raises(ValueError, match="preset 'huge'.*light"):
        build_model("pspnet3d", preset="huge")


@pytest.mark.parametrize("name", list(MODELS))
def test_bad_inputs_are_explained(name):
    net = build_model(name, preset=None, **TINY[name]).eval()
    too_small = net.min_input_size - 1
    with pytest.raises(ValueError, match=f"at least {net.min_input_size} voxels"):
        net(torch.randn(1, 4, too_small, net.min_input_size, net.min_input_size))
    with pytest.raises(ValueError, match="in_channels=4.*1 channels"):
        net(torch.randn(1, 1, *(3 * [net.min_input_size])))
    with pytest.raises(ValueError, match="5D tensor"):
        net(torch.randn(4, *(3 * [net.min_input_size])))


def test_presets_override_and_defaults():
    assert build_model("arunet3d", "paper").features == (64, 128, 256, 512)
    assert build_model("arunet3d", "paper", features=(8, 16)).features == (8, 16)
    for name, cls in MODELS.items():
        assert cls().features == cls.presets["light"]["features"], name


def test_networks_table_is_generated():
    """The parameter/FLOP table of docs/reference/networks.md is the one the code computes today."""
    page = Path(__file__).resolve().parents[1] / "docs" / "reference" / "networks.md"
    assert summary.table_block() in page.read_text()


def test_flop_count_matches_hand_computed_value():
    # stem conv 1->4 (3^3) + ... is tedious for a whole net; check the counter on the attention gate:
    gate = AttentionGate(8, 8, 4, norm="batch", act="relu", norm_groups=8).eval()
    n = 6 * 5 * 4
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        gate(torch.randn(1, 8, 6, 5, 4), torch.randn(1, 8, 6, 5, 4))
    assert counter.get_total_flops() == 2 * n * (8 * 4 + 8 * 4 + 4 * 1)


# --- references ------------------------------------------------------------------------------


def test_preact_block_is_identity_plus_residual():
    block = PreActResBlock(6, 6, stride=1, norm="batch", act="relu", dropout=0.0, norm_groups=8).eval()
    nn.init.zeros_(block.conv2.weight)
    x = torch.randn(2, 6, 5, 5, 5)
    torch.testing.assert_close(block(x), x)
    down = PreActResBlock(6, 4, stride=2, norm="batch", act="relu", dropout=0.0, norm_groups=8).eval()
    nn.init.zeros_(down.conv2.weight)
    torch.testing.assert_close(down(x), nn.functional.conv3d(x, down.shortcut.weight, stride=2))


def test_attention_gate_scales_the_skip_by_sigmoid():
    gate = AttentionGate(3, 5, 2, norm="batch", act="relu", norm_groups=8).eval()
    nn.init.zeros_(gate.psi.weight)
    nn.init.constant_(gate.psi.bias, 0.7)
    x, g = torch.randn(1, 3, 4, 4, 4), torch.randn(1, 5, 4, 4, 4)
    torch.testing.assert_close(gate(x, g), x * torch.sigmoid(torch.tensor(0.7)))
    gate.train()
    torch.testing.assert_close(gate(x, g).abs() <= x.abs(), torch.ones_like(x, dtype=torch.bool))


def _copy_in_order(dst: nn.Module, src: nn.Module) -> None:
    """Copy parameters and buffers in definition order after checking the shapes agree.

    MONAI's projection shortcuts give their convolution a bias that the batch norm right after
    it makes redundant; it is zeroed there and left out of the copy.
    """
    for m in src.modules():
        if hasattr(m, "downsample") and isinstance(m.downsample, nn.Sequential) and m.downsample[0].bias is not None:
            nn.init.zeros_(m.downsample[0].bias)
    d = list(dst.state_dict().items())
    s = [(k, v) for k, v in src.state_dict().items() if not k.endswith("downsample.0.bias")]
    assert [v.shape for _, v in d] == [v.shape for _, v in s]
    dst.load_state_dict({k: v for (k, _), (_, v) in zip(d, s)})


def _monai_resnet_features(resnet, x, stages):
    y = resnet.maxpool(resnet.act(resnet.bn1(resnet.conv1(x))))
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)[:stages]:
        y = layer(y)
    return y


def test_linknet_encoder_equals_monai_resnet18():
    """The encoder is a true ResNet18-3D (residual adds included): same weights, same features as MONAI's."""
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    resnet = nets.resnet18(
        spatial_dims=3, n_input_channels=4, num_classes=2, shortcut_type="B", conv1_t_stride=2
    ).eval()
    ours = LinkNet3D(4, 3, features=(64, 128, 256, 512)).eval()
    encoder = nn.Sequential(ours.stem, *ours.encoder)
    _copy_in_order(
        encoder,
        nn.Sequential(
            resnet.conv1, resnet.bn1, resnet.maxpool, resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        ),
    )
    x = torch.randn(1, 4, 64, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), _monai_resnet_features(resnet, x, 4), rtol=1e-4, atol=1e-4)


def test_pspnet_backbone_is_a_dilated_monai_resnet50():
    """Same parameters as MONAI's ResNet50-3D; stages 1-2 give the same features; output stride 8."""
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    resnet = nets.resnet50(
        spatial_dims=3, n_input_channels=4, num_classes=2, shortcut_type="B", conv1_t_stride=2
    ).eval()
    ours = PSPNet3D(4, 3, features=(64, 128, 256, 512)).eval()
    backbone = nn.Sequential(ours.stem, *ours.stages)
    reference = nn.Sequential(
        resnet.conv1, resnet.bn1, resnet.maxpool, resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
    )
    _copy_in_order(backbone, reference)
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        ours_stage2 = nn.Sequential(ours.stem, *ours.stages[:2])(x)
        torch.testing.assert_close(ours_stage2, _monai_resnet_features(resnet, x, 2), rtol=1e-4, atol=1e-4)
        assert backbone(x).shape == (1, 2048, 4, 4, 4)
    dilations = [[b.conv2[0].dilation[0] for b in stage] for stage in ours.stages]
    assert dilations == [[1] * 3, [1] * 4, [1] + [2] * 5, [2, 4, 4]]


def test_padding_is_cropped_symmetrically():
    """A constant-free check: the logits of a padded input equal those of the network on the padded tensor."""
    torch.manual_seed(0)
    net = ARUNet3D(features=(4, 8, 8, 16)).eval()
    x = torch.randn(1, 4, 17, 16, 18)
    padded = nn.functional.pad(x, (3, 3, 0, 0, 3, 4))  # 17 -> 24 (3 + 4), 16 -> 16, 18 -> 24 (3 + 3)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(padded)[:, :, 3:20, :, 3:21])


def test_deterministic_paths_compute_what_the_native_ops_compute(monkeypatch):
    """With deterministic algorithms on a GPU, trilinear upsampling, adaptive average pooling and max
    pooling run as atomic-free formulations; forced here on the CPU, values and gradients must equal
    the native kernels'."""
    import torch.nn.functional as F

    from tumorseg.models import layers

    monkeypatch.setattr(layers, "deterministic_path", lambda x: True)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 9, 5, dtype=torch.float64, requires_grad=True)

    def value_and_grad(fn):
        out = fn(x)
        (grad,) = torch.autograd.grad((out**2).sum() + out.sum(), x)
        return out, grad

    cases = [
        (
            lambda t: layers.resize_trilinear(t, (14, 18, 10)),
            lambda t: F.interpolate(t, (14, 18, 10), mode="trilinear"),
        ),
        (lambda t: layers.resize_trilinear(t, (16, 4, 31)), lambda t: F.interpolate(t, (16, 4, 31), mode="trilinear")),
        *[(layers.AdaptiveAvgPool3d(b), lambda t, b=b: F.adaptive_avg_pool3d(t, b)) for b in (1, 2, 3, 6)],
        (layers.MaxPool3d(3, stride=2, padding=1), lambda t: F.max_pool3d(t, 3, 2, 1)),
    ]
    for ours, native in cases:
        for a, b in zip(value_and_grad(ours), value_and_grad(native)):
            torch.testing.assert_close(a, b)
    # the networks themselves, on the deterministic paths
    for name in ("linknet3d", "pspnet3d"):
        torch.manual_seed(0)
        net = build_model(name, preset=None, **TINY[name], full_resolution=True).eval()
        shape = (1, 4, 64, 64, 64) if name == "linknet3d" else (1, 4, 20, 17, 16)
        inp = torch.randn(shape)
        with torch.no_grad():
            forced = net(inp)
        monkeypatch.setattr(layers, "deterministic_path", lambda t: False)
        with torch.no_grad():
            native = net(inp)
        monkeypatch.setattr(layers, "deterministic_path", lambda t: True)
        torch.testing.assert_close(forced, native, rtol=1e-4, atol=1e-5)
