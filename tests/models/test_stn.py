"""Spatial transformers (corrlib.models.stn): identity init, known shifts, gradients, shapes,
errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corrlib.geometry import tps_basis, tps_grid, tps_lattice
from corrlib.models import stn

pytestmark = pytest.mark.usefixtures("one_thread", "warm_optimizer")

KINDS = stn.STN_KINDS


def _image(b=2, s=28, seed=0) -> torch.Tensor:
    return torch.rand(b, 1, s, s, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------
# parameters and grids
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "n"), [("affine", 6), ("projective", 8), ("tps", 32)])
def test_n_params_and_identity(kind, n):
    assert stn.n_params(kind) == n
    assert stn.identity_params(kind).shape == (n,)
    assert stn.n_params("tps", tps_lattice_size=3) == 18


@pytest.mark.parametrize("kind", KINDS)
def test_identity_grid_is_the_pixel_grid(kind):
    ctrl = tps_lattice(3) if kind == "tps" else None
    params = stn.identity_params(kind, tps_lattice_size=3)[None]
    grid = stn.transform_grid(params, kind, (5, 7), ctrl=ctrl)
    assert grid.shape == (1, 5, 7, 2)
    xs = (2 * torch.arange(7.0) + 1) / 7 - 1
    ys = (2 * torch.arange(5.0) + 1) / 5 - 1
    assert torch.allclose(grid[0, 2, :, 0], xs, atol=1e-6)
    assert torch.allclose(grid[0, :, 3, 1], ys, atol=1e-6)


def test_tps_basis_matches_geometry_tps_grid():
    ctrl = tps_lattice(4, dtype=torch.float64)
    target = ctrl + 0.1 * torch.randn(
        3, 16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    basis = tps_basis(ctrl, (9, 11))
    fast = (basis @ target).reshape(3, 9, 11, 2)
    slow = tps_grid(ctrl.expand(3, -1, -1).contiguous(), target, (9, 11))
    assert basis.shape == (99, 16)
    assert torch.allclose(fast, slow, atol=1e-10)


def test_module_grid_matches_transform_grid_for_every_kind():
    g = torch.Generator().manual_seed(2)
    for kind in KINDS:
        st = stn.SpatialTransformer(kind, (12, 10), in_size=28)
        params = st.identity_params + 0.05 * torch.randn(3, st.identity_params.numel(), generator=g)
        ctrl = st.ctrl if kind == "tps" else None
        assert torch.allclose(
            st.grid(params), stn.transform_grid(params, kind, (12, 10), ctrl=ctrl), atol=1e-5
        ), kind


# ------------------------------------------------------------------------------------------------
# the spatial transformer
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_identity_initialisation_reproduces_the_input(kind):
    st = stn.SpatialTransformer(kind, 28)
    x = _image()
    warped, params = st(x)
    assert warped.shape == x.shape
    assert torch.allclose(params, st.identity_params.expand(2, -1))
    assert (warped - x).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["affine", "projective"])
def test_known_translation_matches_roll_in_the_interior(kind):
    k, w = 3, 28
    params = stn.identity_params(kind)[None].clone()
    params[0, 2] = 2 * k / w  # read k pixels to the right: out(x) = in(x + k)
    x = _image(1)
    out = stn.spatial_transform(x, params, kind, (w, w))
    expected = torch.roll(x, shifts=-k, dims=-1)
    assert torch.allclose(out[..., : w - k], expected[..., : w - k], atol=1e-5)
    assert out[..., w - k :].abs().max() < 1e-5  # zero padding outside the input


def test_tps_uniform_offset_is_a_translation():
    k, w = 2, 20
    params = torch.zeros(1, 32)
    params[0, 1::2] = 2 * k / w  # every input point moves k px down: out(y) = in(y + k)
    x = _image(1, w)
    st = stn.SpatialTransformer("tps", w, in_size=w)
    out = F.grid_sample(x, st.grid(params), align_corners=False)
    assert torch.allclose(
        out[..., : w - k, :], torch.roll(x, -k, dims=-2)[..., : w - k, :], atol=1e-5
    )


def test_gradients_reach_the_localisation_net():
    torch.manual_seed(0)
    st = stn.SpatialTransformer("affine", 28)
    x = _image(4)
    target = torch.roll(x, 2, dims=-1)
    loss = F.mse_loss(st(x)[0], target)
    loss.backward()
    # at the identity initialisation only the last layer gets a gradient
    # (its zero weights block the rest)
    assert st.loc.head.weight.grad.abs().sum() > 0 and st.loc.head.bias.grad.abs().sum() > 0
    with torch.no_grad():
        for p in st.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    st.zero_grad()
    F.mse_loss(st(x)[0], target).backward()
    first_conv = st.loc.features[0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_out_size_differs_from_in_size():
    st = stn.SpatialTransformer("affine", (20, 24), in_size=42)
    warped, params = st(_image(2, 42))
    assert warped.shape == (2, 1, 20, 24) and params.shape == (2, 6)


def test_unknown_kind_error_message():
    with pytest.raises(
        ValueError,
        match=(
            r"Unknown value 'similarity' for argument kind\. "
            r"Valid values are \{affine, projective, tps\}\."
        ),
    ):
        stn.SpatialTransformer("similarity", 28)
    with pytest.raises(ValueError, match=r"Unknown value 'homography' for argument kind"):
        stn.st_cnn("homography")


def test_bad_inputs_raise_named_errors():
    with pytest.raises(ValueError, match=r"Argument params must have shape \(B, 6\)"):
        stn.transform_grid(torch.zeros(1, 8), "affine", 4)
    with pytest.raises(ValueError, match="Argument ctrl"):
        stn.transform_grid(torch.zeros(1, 8), "tps", 4)
    with pytest.raises(ValueError, match="Argument in_size must be >= 16"):
        stn.SpatialTransformer("affine", 28, in_size=12)
    with pytest.raises(ValueError, match="Argument size"):
        stn.transform_grid(torch.zeros(1, 6), "affine", (4, 0))
    with pytest.raises(ValueError, match=r"Argument x must have shape \(2, C, 28, 28\)"):
        stn.SpatialTransformer("affine", 28)(_image(2, 42))


# ------------------------------------------------------------------------------------------------
# classifiers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("in_size", "kind"), [(28, "affine"), (42, "projective"), (28, "tps")])
def test_classifier_shapes(in_size, kind):
    x = _image(3, in_size)
    assert stn.digit_cnn(in_size=in_size)(x).shape == (3, 10)
    model = stn.st_cnn(kind, in_size=in_size, out_size=28)
    assert model(x).shape == (3, 10)
    warped, params = model.transform(x)
    assert warped.shape == (3, 1, 28, 28) and params.shape == (3, stn.n_params(kind))


def test_st_cnn_at_init_equals_its_cnn_on_the_identity():
    torch.manual_seed(0)
    model = stn.st_cnn("affine").eval()
    x = _image(2)
    assert torch.allclose(model(x), model.cnn(x), atol=1e-5)


def test_cnn_rejects_wrong_input_size():
    with pytest.raises(ValueError, match=r"Argument x must have shape \(B, C, 28, 28\)"):
        stn.digit_cnn()(_image(1, 42))


# ------------------------------------------------------------------------------------------------
# aligning a pair
# ------------------------------------------------------------------------------------------------


def test_align_pair_untrained_is_identity_and_checks_kind():
    src, trg = _image(2, 28, 1), _image(2, 28, 2)
    warped, params = stn.align_pair(src, trg, "tps")
    assert torch.allclose(warped, src, atol=1e-5) and params.shape == (2, 32)
    model = stn.PairAligner("affine", 28)
    with pytest.raises(ValueError, match="is a 'affine' aligner but kind is 'tps'"):
        stn.align_pair(src, trg, "tps", model=model)


def test_pair_aligner_learns_a_shift_with_a_photometric_loss():
    torch.manual_seed(0)
    model = stn.PairAligner("affine", 20, loc_channels=(4, 8), loc_hidden=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    blob = torch.zeros(8, 1, 20, 20)
    blob[:, :, 6:14, 4:16] = 1.0
    src = F.avg_pool2d(blob * torch.rand(8, 1, 1, 1, generator=g).add(0.5), 5, 1, 2)
    trg = torch.roll(src, 2, dims=-1)  # trg(x) = src(x - 2)
    first = None
    for _ in range(30):
        loss = stn.photometric_loss(model(src, trg)[0], trg)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert model(src, trg)[1][:, 2].mean() < 0  # reads to the left: theta_x translation < 0


def test_photometric_loss_norms():
    a, b = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0)
    assert stn.photometric_loss(a, b, "l2").item() == 4.0
    assert stn.photometric_loss(a, b, "l1").item() == 2.0
    with pytest.raises(ValueError, match=r"Unknown value 'l3' for argument norm"):
        stn.photometric_loss(a, b, "l3")
