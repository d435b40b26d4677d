"""Tests of SFNet (chapter 06): dense-flow losses, the two-level correlation, argmax modes,
flows."""

from __future__ import annotations

import pytest
import torch

from corrlib.checkpoint import load_checkpoint, save_checkpoint
from corrlib.losses import (
    flow_consistency_loss,
    flow_smoothness_loss,
    mask_consistency_loss,
    warp_by_flow,
)
from corrlib.models import backbones
from corrlib.models.sfnet import (
    LOSS_WEIGHTS,
    OFFLINE_GRID_STRIDE,
    OFFLINE_TAPS,
    SFNET_FORMAT,
    SFNet,
    export_sfnet,
    flow_cells_to_normalized,
    load_sfnet,
    mask_to_grid,
    sfnet,
    sfnet_loss,
)


def _box_mask(h=12, w=12, x0=3, x1=8, y0=2, y1=9):
    m = torch.zeros(1, 1, h, w)
    m[..., y0:y1, x0:x1] = 1
    return m


def _const_flow(dx, dy, h=12, w=12):
    f = torch.zeros(1, 2, h, w)
    f[:, 0], f[:, 1] = dx, dy
    return f


# ----------------------------------------------------------------------------------- losses


def test_warp_by_flow_reads_shifted_and_zero_outside():
    field = torch.arange(12.0).reshape(1, 1, 1, 12).expand(1, 1, 3, 12).contiguous()
    out = warp_by_flow(field, _const_flow(2.0, 0.0, 3, 12))
    assert torch.allclose(out[0, 0, 1, :10], field[0, 0, 1, 2:])
    assert torch.all(out[0, 0, 1, 11] == 0)  # reads past the border: zero, not replicated


def test_mask_consistency_is_zero_for_the_true_shift_and_positive_otherwise():
    ms = _box_mask(x0=3, x1=7)
    mt = _box_mask(x0=5, x1=9)  # the object moved 2 cells right
    exact = mask_consistency_loss(_const_flow(2.0, 0), _const_flow(-2.0, 0), ms, mt)
    wrong = mask_consistency_loss(_const_flow(0.0, 0), _const_flow(0.0, 0), ms, mt)
    assert exact.item() < 1e-6 and wrong.item() > 0.02


def test_mask_consistency_gradient_reaches_the_flow_only():
    flow_st = _const_flow(0.5, 0.0).requires_grad_(True)
    ms, mt = _box_mask(x0=3, x1=7), _box_mask(x0=5, x1=9).requires_grad_(True)
    mask_consistency_loss(flow_st, _const_flow(0.0, 0.0), ms, mt).backward()
    assert flow_st.grad is not None and flow_st.grad.abs().sum() > 0
    assert mt.grad is None  # masks are targets


def test_flow_consistency_zero_for_inverse_flows_on_the_foreground():
    ms, mt = _box_mask(), _box_mask()
    ok = flow_consistency_loss(_const_flow(1.0, -1.0), _const_flow(-1.0, 1.0), ms, mt)
    bad = flow_consistency_loss(_const_flow(1.0, -1.0), _const_flow(1.0, -1.0), ms, mt)
    # a cycle error of (2, -2) on every foreground cell: |.|^2 = 8, times n / (n + 1),
    # both directions
    n = ms.sum().item()
    assert ok.item() < 1e-9 and bad.item() == pytest.approx(2 * 8 * n / (n + 1), rel=1e-5)


def test_flow_consistency_composes_a_zoom_and_its_inverse():
    """A zoom and its exact inverse cancel after the lookup, at any residual scale."""
    n, c = 20, 9.5
    xs = torch.arange(n, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"))[None]  # (1, 2, n, n) cells (x, y)
    f_st, f_ts = 0.25 * (grid - c), -0.2 * (grid - c)  # q = c + 1.25 (p - c) and back
    m = torch.zeros(1, 1, n, n)
    m[..., 5:15, 5:15] = 1  # lands inside the grid after the zoom
    assert flow_consistency_loss(f_st, f_ts, m, m, scale=(0.1, 0.1)).item() < 1e-10
    assert flow_consistency_loss(f_st, 0.5 * f_ts, m, m, scale=(0.1, 0.1)).item() > 1e-4
    # the same flows through sfnet_loss's units: exact inverse flows give a zero flow term
    assert flow_consistency_loss(f_st, f_ts, m, m, scale=(2 / n, 2 / n)).item() < 1e-10


def test_smoothness_sees_a_one_cell_zigzag():
    flow = torch.zeros(1, 2, 12, 12)
    flow[:, 0, :, ::2] = 1.0  # alternates 1, 0, 1, 0 along x: central differences would say 0
    m = _box_mask()
    assert flow_smoothness_loss(flow, m).item() > 0.9


def test_smoothness_is_the_slope_of_a_linear_flow():
    flow = torch.zeros(1, 2, 12, 12)
    flow[:, 0] = 0.25 * torch.arange(
        12.0
    )  # dF_x/dx = 0.25 everywhere (one-sided at the borders too)
    m = _box_mask()
    n = m.sum().item()
    assert flow_smoothness_loss(flow, m).item() == pytest.approx(0.25 * n / (n + 1), rel=1e-5)
    assert flow_smoothness_loss(_const_flow(3.0, 1.0), m).item() == 0.0


def test_dense_losses_check_shapes():
    with pytest.raises(ValueError, match="mask_s"):
        mask_consistency_loss(
            _const_flow(0, 0), _const_flow(0, 0), torch.zeros(1, 1, 5, 5), _box_mask()
        )
    with pytest.raises(ValueError, match="flow"):
        flow_smoothness_loss(torch.zeros(1, 3, 12, 12), _box_mask())


# ------------------------------------------------------------------------------------ model


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return SFNet(
        backbones.backbone("resnet18", weights="none", taps=("layer3", "layer4")), blocks=0
    )


def _one_hot_features(h, w, shift=(0, 0)):
    """Each cell's feature is the one-hot code of its position; ``shift`` rolls the map (x, y)."""
    f = torch.eye(h * w).reshape(1, h * w, h, w)
    return torch.roll(f, shifts=(shift[1], shift[0]), dims=(2, 3))


@pytest.mark.parametrize("argmax", ["kernel", "soft", "hard"])
def test_flows_recover_a_shift_in_both_directions(net, argmax):
    h = w = 8
    fa = {t: _one_hot_features(h, w) for t in net.taps}
    fb = {t: _one_hot_features(h, w, shift=(2, 1)) for t in net.taps}  # content moves +2 x, +1 y
    out = net.forward_features(fa, fb, (h * 16, w * 16), argmax=argmax)
    assert (
        out.flow_st.shape == (1, 2, h, w)
        and out.corr_st.shape == (1, h * w, h, w)
        and out.corr_ts.shape == (1, h * w, h, w)
    )
    inner = (
        slice(None),
        slice(None),
        slice(1, 6),
        slice(1, 5),
    )  # cells whose content stays in the frame
    assert torch.allclose(out.flow_st[:, 0][inner[:1] + inner[2:]], torch.tensor(2.0), atol=1e-3)
    assert torch.allclose(out.flow_st[:, 1][inner[:1] + inner[2:]], torch.tensor(1.0), atol=1e-3)
    assert torch.allclose(
        out.flow_ts[:, :, 3:7, 3:7], torch.tensor([-2.0, -1.0]).view(1, 2, 1, 1), atol=1e-3
    )
    px = out.flow_pixels("st", (h * 16, w * 16))
    assert px.shape == (1, 2, 128, 128) and torch.allclose(
        px[0, :, 40, 40], torch.tensor([32.0, 16.0]), atol=1e-2
    )


@pytest.mark.parametrize("argmax", ["kernel", "soft", "hard"])
def test_chunked_flows_equal_the_full_path_within_the_byte_budget(net, argmax, monkeypatch):
    h = w = 8
    gen = torch.Generator().manual_seed(3)
    noise = {t: 0.2 * torch.rand(2, h * w, h, w, generator=gen) for t in net.taps}
    fa = {t: _one_hot_features(h, w).expand(2, -1, -1, -1) + noise[t] for t in net.taps}
    fb = {t: _one_hot_features(h, w, shift=(2, 1)).expand(2, -1, -1, -1) for t in net.taps}
    full = net.forward_features(fa, fb, (h * 16, w * 16), argmax=argmax)
    blocks = []
    match = net.match

    def recording(corr, mode=None):
        blocks.append(tuple(corr.shape))
        return match(corr, mode)

    monkeypatch.setattr(net, "match", recording)
    budget = 2 * 5 * h * w * 4  # 5 source cells of 2 images x 64 float32 scores
    with torch.no_grad():
        chunked = net.forward_features(fa, fb, (h * 16, w * 16), argmax=argmax, max_bytes=budget)
    assert chunked.corr_st is None and chunked.corr_ts is None
    # one pair at a time (2), both directions (2), 64 = 6 blocks of 10 + 4 rows of 64 scores
    assert len(blocks) == 2 * 2 * 7 and all(b[0] == 1 and b[1] <= 10 for b in blocks)
    torch.testing.assert_close(chunked.flow_st, full.flow_st, atol=1e-4, rtol=0)
    torch.testing.assert_close(chunked.flow_ts, full.flow_ts, atol=1e-4, rtol=0)
    # the forward flow alone: half the blocks, the same flow, and no reverse to read by mistake
    blocks.clear()
    with torch.no_grad():
        forward = net.forward_features(
            fa, fb, (h * 16, w * 16), argmax=argmax, max_bytes=budget, reverse=False
        )
    assert len(blocks) == 2 * 7 and forward.flow_ts is None
    torch.testing.assert_close(forward.flow_st, chunked.flow_st, atol=0, rtol=0)
    with pytest.raises(ValueError, match="reverse=True"):
        forward.flow_pixels("ts")
    monkeypatch.setattr(net, "match", match)
    one_way = net.forward_features(fa, fb, (h * 16, w * 16), argmax=argmax, reverse=False)
    assert one_way.corr_ts is None and one_way.flow_ts is None
    torch.testing.assert_close(one_way.flow_st, full.flow_st, atol=0, rtol=0)
    torch.testing.assert_close(one_way.corr_st, full.corr_st, atol=0, rtol=0)
    with pytest.raises(ValueError, match="reverse=True"):
        sfnet_loss(one_way, torch.ones(2, h * 16, w * 16), torch.ones(2, h * 16, w * 16))


def test_kernel_soft_argmax_ignores_a_distant_second_peak(net):
    corr = torch.zeros(1, 1, 24, 24)
    corr[0, 0, 4, 4], corr[0, 0, 20, 20] = 1.0, 0.98
    soft = net.match(corr, "soft")[0, 0]
    kernel = net.match(corr, "kernel")[0, 0]
    assert (
        torch.allclose(kernel, torch.tensor([4.0, 4.0]), atol=0.05) and soft[0] > 6
    )  # soft is pulled away from the peak


def test_correlation_is_relu_product_and_each_map_unit_norm(net):
    torch.manual_seed(1)
    fa = {t: torch.randn(2, 5, 4, 4) for t in net.taps}
    fb = {t: torch.randn(2, 5, 4, 4) for t in net.taps}
    out = net.forward_features(fa, fb, (64, 64))
    assert torch.all(out.corr_st >= 0)
    norms = out.corr_st.flatten(2).norm(dim=-1)
    assert torch.allclose(norms[norms > 0], torch.ones_like(norms[norms > 0]), atol=1e-4)


def test_trunk_frozen_adaptation_trains_and_train_keeps_trunk_in_eval():
    torch.manual_seed(0)
    model = SFNet(
        backbones.backbone("resnet18", weights="none", taps=("layer3", "layer4")), blocks=1
    ).train()
    assert not model.trunk.training and all(not p.requires_grad for p in model.trunk.parameters())
    x = torch.rand(2, 3, 64, 64)
    mask = torch.zeros(2, 64, 64)
    mask[:, 16:48, 16:48] = 1
    loss, terms = sfnet_loss(model(x, x.flip(-1)), mask, mask.flip(-1))
    loss.backward()
    assert set(terms) == {"mask", "flow", "smooth"}
    assert all(p.grad is not None for p in model.adapt.parameters())


def test_grid_size_error_names_the_fix(net):
    with pytest.raises(ValueError, match=r"multiple of 32 \(the grid stride 16"):
        net(torch.rand(1, 3, 70, 64), torch.rand(1, 3, 70, 64))


def test_sfnet_loss_weights_drop_terms_and_reject_unknown(net):
    torch.manual_seed(0)
    out = net(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    mask = torch.ones(1, 64, 64)
    full, terms = sfnet_loss(out, mask, mask)
    only_mask, _ = sfnet_loss(out, mask, mask, {"mask": 1.0, "flow": 0.0, "smooth": 0.0})
    assert full.item() == pytest.approx(
        sum(LOSS_WEIGHTS[k] * v for k, v in terms.items()), rel=1e-5
    )
    assert only_mask.item() == pytest.approx(terms["mask"], rel=1e-5)
    with pytest.raises(ValueError, match="weights"):
        sfnet_loss(out, mask, mask, {"masks": 1.0})


def test_mask_to_grid_and_normalised_units():
    m = torch.zeros(1, 32, 32)
    m[:, :2, :2] = 1  # 4 of a cell's 64 pixels: 6 %, below 0.1
    m[:, 8:16, 8:16] = 1
    g = mask_to_grid(m, (4, 4))
    assert g.shape == (1, 1, 4, 4) and g[0, 0, 0, 0] == 0 and g[0, 0, 1, 1] == 1
    assert mask_to_grid(m, (4, 4), threshold=None)[0, 0, 0, 0] == pytest.approx(4 / 64)
    f = flow_cells_to_normalized(torch.ones(1, 2, 3, 3), (20, 10))
    assert torch.allclose(f[0, :, 0, 0], torch.tensor([0.2, 0.1]))


@pytest.mark.skipif(
    backbones.imagenet_weights_path("resnet101").is_file(),
    reason="ImageNet weights are cached: no fallback",
)
def test_builder_falls_back_loudly_to_the_offline_trunk():
    with pytest.warns(UserWarning, match="OFFLINE FALLBACK"):
        model = sfnet(arch="resnet101", trunk_weights="auto")
    assert (
        model.trunk.arch == "offline"
        and model.taps == OFFLINE_TAPS
        and model.grid_stride == OFFLINE_GRID_STRIDE
    )
    assert "fallback for resnet101" in model.trunk.weights_source


# ------------------------------------------------------------------------------------ model files


def _offline_sfnet(**kwargs):
    torch.manual_seed(0)
    model = sfnet(
        arch="offline",
        trunk_weights=kwargs.pop("trunk_weights", "offline"),
        kernels=(3, 3),
        blocks=1,
        **kwargs,
    )
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.train()(
            x, x.flip(-1)
        )  # moves the adaptation layers' batch-norm statistics off their init
        for p in model.adapt.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_constructor_records_variant_and_image_size():
    model = sfnet(
        arch="offline",
        trunk_weights="offline",
        kernels=(3, 3),
        blocks=1,
        image_size=(64, 96),
        variant="full",
    )
    assert (
        model.variant == "full" and model.image_size == (64, 96) and model.trunk.arch == "offline"
    )
    assert model.config["variant"] == "full" and model.config["image_size"] == (64, 96)
    assert sfnet(arch="offline", trunk_weights="offline", kernels=(3, 3), blocks=1).variant is None


def test_export_from_checkpoint_round_trip(tmp_path):
    model = _offline_sfnet(image_size=(64, 64), variant="no-flow-loss", argmax="soft", sigma=4.0)
    path = export_sfnet(tmp_path / "sfnet.pt", model, metrics={"pck@0.1": 0.4, "bad": float("nan")})
    state = load_checkpoint(path)
    assert (
        state["format"] == SFNET_FORMAT
        and state["trunk_arch"] == "offline"
        and state["trunk_weights"] == "offline"
    )
    assert "trunk" not in state and state["metrics"] == {
        "pck@0.1": 0.4
    }  # a frozen offline trunk is rebuilt, not saved
    loaded = SFNet.from_checkpoint(path)
    assert isinstance(loaded, SFNet) and not loaded.training
    assert (
        loaded.variant == "no-flow-loss"
        and loaded.image_size == (64, 64)
        and loaded.trunk.arch == "offline"
    )
    assert (
        loaded.taps == model.taps
        and loaded.config == model.config
        and loaded.argmax == "soft"
        and loaded.sigma == 4.0
    )
    for (k, p), (k2, q) in zip(model.adapt.state_dict().items(), loaded.adapt.state_dict().items()):
        assert k == k2 and torch.equal(p, q), k
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = model(x, x.flip(-1)), loaded(x, x.flip(-1))
    assert torch.equal(a.flow_st, b.flow_st) and torch.equal(a.corr_st, b.corr_st)
    built = sfnet(weights=path)  # the builder's weights= is a trained SFNet file
    assert built.variant == "no-flow-loss" and built.image_size == (64, 64) and not built.training
    assert load_sfnet(path).config == model.config


def test_export_saves_a_random_trunk_with_the_model(tmp_path):
    model = _offline_sfnet(trunk_weights="none")
    assert model.trunk.weights_source.startswith("random")
    path = export_sfnet(tmp_path / "random.pt", model)
    state = load_checkpoint(path)
    assert "trunk" in state and state["trunk_weights"] == "none"
    loaded = SFNet.from_checkpoint(path)
    assert loaded.variant is None and loaded.image_size is None
    for k, v in model.trunk.state_dict().items():
        assert torch.equal(v, loaded.trunk.state_dict()[k]), k


def test_load_refuses_wrong_shapes_and_other_files(tmp_path):
    path = export_sfnet(tmp_path / "sfnet.pt", _offline_sfnet())
    state = load_checkpoint(path)
    key = next(k for k in state["adapt"] if k.endswith("conv.weight"))
    state["adapt"][key] = torch.zeros(2, 2, 3, 3)
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match=r"sfnet\.pt: the saved adaptation weights do not fit"):
        SFNet.from_checkpoint(path)
    save_checkpoint(tmp_path / "ucn.pt", {"format": "corrlib.ucn/1", "model": {}})
    with pytest.raises(
        ValueError, match=r"ucn\.pt is not an exported SFNet \(format 'corrlib.ucn/1'"
    ):
        load_sfnet(tmp_path / "ucn.pt")
    with pytest.raises(TypeError, match="SFNet"):
        export_sfnet(tmp_path / "x.pt", torch.nn.Linear(2, 2))
