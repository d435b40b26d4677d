"""Chapter 07's model parts: the multi-scale convolution, its swap into a trunk, the heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from corrlib.models.backbones import backbone
from corrlib.models.msconv import (
    FlowForegroundHead,
    MSConv2d,
    ParametricHead,
    build_head,
    charbonnier,
    export_msconv,
    load_msconv,
    msconv_net,
    sparse_flow_loss,
    swap_convs,
)


def _conv(stride=1, dilation=1, bias=True):
    torch.manual_seed(0)
    return nn.Conv2d(5, 7, 3, stride, padding=dilation, dilation=dilation, bias=bias).double()


@pytest.mark.parametrize("mode", ["dilated", "strided"])
@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), (2, 1), (2, 2), (1, 3)])
def test_one_rate_equals_the_convolution(mode, stride, dilation):
    conv = _conv(stride, dilation)
    layer = MSConv2d.from_conv(conv, (1,), mode=mode)
    x = torch.randn(2, 5, 13, 10, dtype=torch.float64)
    assert_close(layer(x), conv(x))


def test_one_hot_mixture_is_the_dilated_convolution():
    conv = _conv()
    layer = MSConv2d.from_conv(conv, (1, 2, 4))
    with torch.no_grad():
        layer.mix_logits.fill_(-1e4)
        layer.mix_logits[1] = 0.0  # all weight on rate 2
    x = torch.randn(1, 5, 12, 12, dtype=torch.float64)
    want = F.conv2d(x, conv.weight, conv.bias, 1, 2, 2)
    assert_close(layer(x), want)


def test_uniform_mixture_is_the_mean_of_the_rates():
    conv = _conv()
    layer = MSConv2d.from_conv(conv, (1, 3))
    x = torch.randn(1, 5, 9, 9, dtype=torch.float64)
    want = (F.conv2d(x, conv.weight, None, 1, 1, 1) + F.conv2d(x, conv.weight, None, 1, 3, 3)) / 2
    assert_close(layer(x), want + conv.bias.view(1, -1, 1, 1))


@pytest.mark.parametrize("mode", ["dilated", "strided"])
@pytest.mark.parametrize("size", [(8, 8), (11, 7), (16, 5)])
def test_output_size_is_the_convolutions_for_every_rate(mode, size):
    for stride in (1, 2):
        conv = nn.Conv2d(3, 4, 3, stride, 1)
        layer = MSConv2d.from_conv(conv, (1, 2, 4, 8), mode=mode)
        x = torch.randn(1, 3, *size)
        assert layer(x).shape == conv(x).shape


def test_parameter_counts_shared_and_separate():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    n_conv = sum(p.numel() for p in conv.parameters())
    shared = MSConv2d.from_conv(conv, (1, 2, 4))
    separate = MSConv2d.from_conv(conv, (1, 2, 4), shared_weights=False)
    scalar = MSConv2d.from_conv(conv, (1, 2, 4), mixing="scalar")
    assert sum(p.numel() for p in shared.parameters()) == n_conv + 3 * 6
    assert sum(p.numel() for p in separate.parameters()) == 3 * conv.weight.numel() + 6 + 3 * 6
    assert sum(p.numel() for p in scalar.parameters()) == n_conv + 3
    assert shared.mixture_weights().shape == scalar.mixture_weights().shape == (3, 6)


def test_mixings_and_base_weight():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    sig = MSConv2d.from_conv(conv, (1, 2), mixing="sigmoid")
    assert_close(sig.mixture_weights(), torch.full((2, 3), 0.5))
    base = MSConv2d.from_conv(conv, (1, 2, 4), base_weight=0.8)
    assert_close(base.mixture_weights()[:, 0], torch.tensor([0.8, 0.1, 0.1]))
    with pytest.raises(ValueError, match="base_weight needs softmax"):
        MSConv2d.from_conv(conv, (2, 4), base_weight=0.8)
    with pytest.raises(ValueError, match="distinct integers"):
        MSConv2d(2, 3, rates=(1, 1))
    with pytest.raises(ValueError, match="'same' padding"):
        MSConv2d.from_conv(nn.Conv2d(2, 3, 3), (1, 2))


def test_swap_convs_replaces_only_3x3_and_keeps_the_function_at_rate_one():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 1, 2, 2), nn.Conv2d(4, 2, 1)
    )
    x = torch.randn(1, 3, 16, 16)
    before = net(x)
    assert swap_convs(net, (1,)) == ["0", "2"]
    assert isinstance(net[0], MSConv2d) and isinstance(net[3], nn.Conv2d)
    assert net[2].dilation == 2
    assert_close(net(x), before)
    with pytest.raises(ValueError, match="no 3x3"):
        swap_convs(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_single_scale_net_is_the_offline_trunk():
    net = msconv_net("offline", trunk_weights="offline", rates=(1,))
    trunk = backbone("offline", weights="offline")
    x = torch.rand(2, 3, 64, 48)
    assert_close(net(x), F.normalize(trunk(x)["block3"], dim=1, eps=1e-6), atol=1e-5, rtol=1e-5)
    assert net.stride == 8 and net.feature_size((64, 48)) == (8, 6)
    ms = msconv_net("offline", trunk_weights="offline", rates=(1, 2, 4))
    trainable = [n for n, p in ms.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("trunk.stages.block3") for n in trainable)
    assert set(ms.mixture_weights()) == {"0", "2", "4", "6"}
    assert_close(ms.from_prefix(ms.prefix(x)), ms(x))


def test_export_and_load_round_trip(tmp_path):
    net = msconv_net("offline", trunk_weights="none", rates=(1, 2), mode="strided", variant="v")
    net.eval_settings = {"max_side": 96, "image_size": 64}
    head = build_head("flow", net.channels, width=16, top_k=4)
    path = export_msconv(tmp_path / "m.pt", net, head, metrics={"pck": 0.5})
    net2, head2 = load_msconv(path)
    x = torch.rand(2, 3, 64, 64)
    f = net(x)
    assert_close(net2(x), f)
    assert_close(head2(f[:1], f[1:])[0], head(f[:1], f[1:])[0])
    assert net2.variant == "v" and net2.eval_settings == {"max_side": 96, "image_size": 64}
    assert net2.config["mode"] == "strided" and net2.config["rates"] == (1, 2)
    _, none = load_msconv(export_msconv(tmp_path / "f.pt", net))
    assert none is None


def _shifted_features(dx=2, dy=1, n=12, c=32):
    g = torch.Generator().manual_seed(3)
    big = F.normalize(torch.randn(1, c, n + 8, n + 8, generator=g), dim=1)
    src = big[:, :, 4 : 4 + n, 4 : 4 + n]
    trg = big[:, :, 4 - dy : 4 - dy + n, 4 - dx : 4 - dx + n]  # trg(x + dx, y + dy) = src(x, y)
    return src.contiguous(), trg.contiguous()


def test_flow_head_starts_at_the_soft_argmax_flow():
    src, trg = _shifted_features()
    head = FlowForegroundHead(32, width=16, top_k=4, beta=0.01)
    flow, fg = head(src, trg)
    assert flow.shape == (1, 2, 12, 12) and fg.shape == (1, 1, 12, 12)
    inner = flow[0, :, 2:-2, 2:-2]
    assert_close(inner[0], torch.full_like(inner[0], 2.0), atol=0.05, rtol=0)
    assert_close(inner[1], torch.full_like(inner[1], 1.0), atol=0.05, rtol=0)


@pytest.mark.parametrize("kind", ["affine", "tps"])
def test_parametric_head_fits_the_soft_argmax_matches(kind):
    src, trg = _shifted_features()  # a translation by (2, 1) cells
    head = ParametricHead(32, kind, width=8, top_k=4, beta=0.01)
    flow, fg = head(src, trg)
    assert fg is None and flow.shape == (1, 2, 12, 12)
    # uniform weights at start: the (ridge-damped) least-squares warp of the soft-argmax matches
    # (the last column and row have no true match: outliers that pull a least-squares fit)
    from corrlib.geometry import pixel_to_normalized
    from corrlib.models.msconv import _correlation_cues

    flow0, _ = _correlation_cues(src, trg, 4, 0.01)
    cells = torch.stack(torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="xy"), -1)
    cells = cells.reshape(-1, 2)
    q = pixel_to_normalized(cells + flow0[0].flatten(1).T, (12, 12)).double()
    p = pixel_to_normalized(cells, (12, 12)).double()
    if kind == "affine":
        a = torch.cat((p, torch.ones(144, 1, dtype=torch.float64)), 1)
        coef = torch.linalg.lstsq(a, q).solution
        want = (a @ coef - p) * 6  # normalised -> cells: x 12 / 2
        assert_close(flow[0].flatten(1).T.double(), want, atol=0.02, rtol=0)
        d2 = flow[0, :, :, 2:] - 2 * flow[0, :, :, 1:-1] + flow[0, :, :, :-2]
        assert_close(d2, torch.zeros_like(d2), atol=1e-4, rtol=0)  # one affine map
    else:  # a smooth warp that follows the interior's translation
        inner = flow[0, :, 2:-3, 2:-3]
        assert_close(inner[0].mean(), torch.tensor(2.0), atol=0.5, rtol=0)
        assert_close(inner[1].mean(), torch.tensor(1.0), atol=0.5, rtol=0)
    flow.sum().backward()  # differentiable through the fit
    assert head.weight_net[-1].weight.grad is not None


def test_sparse_flow_loss():
    flow = torch.zeros(1, 2, 4, 5)
    flow[0, 0] = 1.0
    src = torch.tensor([[[0.0, 0.0], [3.0, 2.0]]])
    assert float(sparse_flow_loss(flow, src, src + torch.tensor([1.0, 0.0]))) == 0.0
    far = sparse_flow_loss(flow, src, src + torch.tensor([4.0, 0.0]))
    assert_close(far, charbonnier(torch.tensor(3.0)))
    w = torch.tensor([[1.0, 0.0]])
    assert float(sparse_flow_loss(flow, src, src + torch.tensor([1.0, 0.0]), w)) == 0.0
    assert float(sparse_flow_loss(flow, src, src, torch.zeros(1, 2))) == 0.0


def test_strided_mode_keeps_every_rate_aligned():
    # a centre tap on a horizontal ramp: each rate must reproduce the ramp on the plain grid
    conv = nn.Conv2d(1, 1, 3, 1, 1, bias=False).double()
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
    ramp = torch.arange(16, dtype=torch.float64).expand(1, 1, 8, 16).clone()
    for r in (2, 4):
        layer = MSConv2d.from_conv(conv, (r,), mode="strided")
        out = layer(ramp)[0, 0]
        # interior columns (the last coarse cell repeats at the border)
        assert_close(out[:, : 16 - r], ramp[0, 0, :, : 16 - r])


def test_sigmoid_mixing_with_one_rate_is_still_the_trunk():
    x = torch.rand(1, 3, 32, 32)
    soft = msconv_net("offline", trunk_weights="offline", rates=(1,))
    sig = msconv_net("offline", trunk_weights="offline", rates=(1,), mixing="sigmoid")
    assert sig.config["mixing"] == "softmax"
    assert_close(sig(x), soft(x))


def test_sparse_flow_loss_refuses_cells_off_the_grid():
    flow = torch.zeros(1, 2, 4, 5)
    with pytest.raises(ValueError, match="must lie on the 5x4 grid"):
        sparse_flow_loss(flow, torch.tensor([[[5.0, 0.0]]]), torch.zeros(1, 1, 2))


def test_feature_size_probe_leaves_batch_norm_statistics_alone():
    net = msconv_net("resnet18", trunk_weights="none", stage="layer3", rates=(1, 2)).train()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    assert net.feature_size((64, 64)) == (4, 4) and net.training
    after = {k: v for k, v in net.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
