"""RTN's parts: re-extraction, the window, the recurrence, the losses, saving."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from corrlib.correlation import local_correlation
from corrlib.models.rtn import (
    CENTRE,
    RTN,
    GeoUNet,
    constrained_correlation,
    export_rtn,
    identity_field,
    load_rtn,
    neighbourhood_points,
    reextract,
    translation_l1_loss,
    upsample_field,
    weak_classification_loss,
)


@pytest.fixture
def conv():
    torch.manual_seed(0)
    return torch.nn.Conv2d(4, 3, 3)


def test_identity_field_reproduces_the_convolution(conv):
    pre = torch.randn(2, 4, 5, 6)
    out = reextract(pre, identity_field(2, 5, 6), conv)
    ref = F.normalize(F.conv2d(pre, conv.weight, conv.bias, padding=1), dim=1, eps=1e-6)
    assert_close(out, ref)


def test_one_cell_translation_shifts_by_one_cell(conv):
    pre = torch.randn(1, 4, 6, 8)
    right, down = identity_field(1, 6, 8), identity_field(1, 6, 8)
    right[:, 2] = 1.0
    down[:, 5] = 1.0
    ref = reextract(pre, identity_field(1, 6, 8), conv)
    assert_close(reextract(pre, right, conv)[..., :-2], ref[..., 1:-1])
    assert_close(reextract(pre, down, conv)[..., :-2, :], ref[..., 1:-1, :])


def test_neighbourhood_points_follow_the_affine_map():
    field = identity_field(1, 2, 2)
    field[:, 0], field[:, 1], field[:, 2] = 2.0, 0.5, 3.0  # a11, a12, fx
    pts = neighbourhood_points(field)  # (1, 9, 2, 2, 2)
    # k = (v + 1) * 3 + (u + 1): u = 1, v = -1 -> k = 2; cell (x, y) = (1, 0)
    x, y = pts[0, 2, 0, 1].tolist()
    assert (x, y) == (1 + 3.0 + 2.0 * 1 + 0.5 * -1, 0 + 0 + 1.0 * -1)


def test_window_centre_and_correlation_match_local_correlation():
    assert CENTRE == 40
    a, b = torch.randn(2, 5, 7, 6), torch.randn(2, 5, 7, 6)
    c = constrained_correlation(a, b, 4)
    assert c.shape == (2, 81, 7, 6)
    assert_close(c, local_correlation(a, b, 4, normalize=True))
    assert_close(c[:, CENTRE], F.cosine_similarity(a, b, dim=1, eps=1e-6), atol=1e-5, rtol=0)


def test_weak_loss_floor_for_perfect_features():
    corr = -torch.ones(1, 81, 2, 3)
    corr[:, CENTRE] = 1.0
    loss = weak_classification_loss(corr, torch.ones(1, 2, 3, dtype=torch.bool))
    assert loss.item() == pytest.approx(math.log(1 + 80 / math.e**2), rel=1e-5)
    none = weak_classification_loss(corr, torch.zeros(1, 2, 3, dtype=torch.bool))
    assert none.item() == 0.0


def test_translation_l1_loss_is_zero_for_the_true_flow():
    field = identity_field(1, 4, 4)
    field[:, 2], field[:, 5] = 0.5, -0.25  # cells of stride 4: (2, -1) pixels
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0], flow[:, 1] = 2.0, -1.0
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    assert translation_l1_loss(field, 4, flow, valid).item() == 0.0
    assert translation_l1_loss(field, 4, flow + 1, valid).item() == pytest.approx(1.0)


def test_upsample_doubles_translations_and_keeps_a():
    field = identity_field(1, 3, 3)
    field[:, 2], field[:, 1] = 1.5, 0.2
    up = upsample_field(field, (6, 6))
    assert_close(up[:, 2], torch.full((1, 6, 6), 3.0))
    assert_close(up[:, 1], torch.full((1, 6, 6), 0.2))
    assert_close(up[:, 0], torch.ones(1, 6, 6))


def test_geo_unet_starts_at_zero_and_keeps_size():
    net = GeoUNet(81, (8, 16, 16), 3)
    out = net(torch.randn(2, 81, 13, 10))
    assert out.shape == (2, 6, 13, 10) and out.abs().max() == 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = RTN(trunk_weights="offline", widths=(8, 8), geo_kernel=3, input_size=(64, 64)).eval()
    with torch.no_grad():
        m.geo.out.weight.normal_(0, 0.01)
    return m


def test_iterations_change_the_output_only_through_the_recurrence(model):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fs, ft = model.features(x), model.features(x.flip(-1))
    with torch.no_grad():
        zero = model(fs, ft, iterations=0)
        assert (zero["field"] == identity_field(2, 16, 16)).all() and zero["corr"] is None
        out3 = model(fs, ft, iterations=3)
        assert len(out3["fields"]) == 3 and model.schedule(3) == (2, 1)
        out4 = model(fs, ft, iterations=4)
        # the 4th step continues from the 3rd: the first three fields are the same
        assert_close(out4["fields"][2], out3["fields"][2])
        assert model.schedule(7) == (2, 5) and model.schedule(None) == (2, 3)


def test_translation_only_keeps_a_at_identity():
    torch.manual_seed(0)
    m = RTN(
        trunk_weights="offline", widths=(8, 8), geo_kernel=3, input_size=(64, 64), affine=False
    ).eval()
    with torch.no_grad():
        m.geo.out.weight.normal_(0, 0.05)
        x = torch.rand(1, 3, 64, 64)
        field = m(m.features(x), m.features(x.flip(-1)))["field"]
    ident = identity_field(1, 16, 16)
    assert_close(field[:, [0, 1, 3, 4]], ident[:, [0, 1, 3, 4]])
    assert field[:, [2, 5]].abs().max() > 0


def test_window_at_field_equals_the_constrained_correlation_at_identity(model):
    x = torch.rand(1, 3, 64, 64)
    fs, ft = model.features(x), model.features(x.flip(-1))
    ident = identity_field(1, 16, 16)
    conv = model.reextractors["block2"]
    src = reextract(fs["block2"], ident, conv)
    trg = reextract(ft["block2"], ident, conv)
    assert_close(
        model.window_at_field(fs, ft, ident),
        constrained_correlation(src, trg, 4),
        atol=1e-5,
        rtol=1e-5,
    )


def test_export_and_load(model, tmp_path):
    model.eval_settings = {"iterations": 4}
    model.variant = "full"
    path = export_rtn(tmp_path / "m.rtn.pt", model)
    again = load_rtn(path)
    assert again.variant == "full" and again.eval_settings == {"iterations": 4}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a = model(model.features(x), model.features(x.flip(-1)))["field"]
        b = again(again.features(x), again.features(x.flip(-1)))["field"]
    assert_close(a, b)
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt"):
        load_rtn(tmp_path / "bad.pt")


def test_auto_trunk_without_imagenet_falls_back_to_the_offline_taps(tmp_path, monkeypatch):
    """The paper's VGG-16 levels, ImageNet file absent: the documented offline fallback, with its
    taps in the same coarse-to-fine order (it warns loudly; nothing pretends to be ImageNet)."""
    from corrlib.models.rtn import RTN

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.warns(UserWarning):
        model = RTN("vgg16", levels=("conv5_3", "conv4_3"), trunk_weights="auto")
    assert model.levels == ("block3", "block2") and model.config["trunk"] == "offline"
    assert "ImageNet" not in model.trunk.weights_source
    with pytest.raises(ValueError, match="conv5_3"):  # asked of the offline trunk itself: an error
        RTN("offline", levels=("conv5_3",), steps=(2,), trunk_weights="offline")
