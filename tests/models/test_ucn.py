"""Tests of corrlib.models.ucn: conv spatial transformer, UCN network, contrastive loss,
negatives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from corrlib.checkpoint import load_checkpoint, save_checkpoint
from corrlib.matching import FeatureGrid
from corrlib.models.ucn import (
    UCN,
    UCN_FORMAT,
    ConvSpatialTransformer,
    CorrespondenceContrastiveLoss,
    UCNTrunk,
    correspondence_contrastive_loss,
    export_ucn,
    load_ucn,
    local_affine_grid,
    mine_hard_negatives,
    mine_negatives,
    random_negatives,
    sample_local_patches,
)


def _theta(b, h, w, params=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), dtype=torch.float32):
    return torch.tensor(params, dtype=dtype).reshape(1, 6, 1, 1).expand(b, 6, h, w).clone()


# ------------------------------------------------------------------------ spatial transformer


def test_local_affine_grid_identity_taps_known_answer():
    grid = local_affine_grid(_theta(1, 3, 4), kernel_size=3, dilation=2)
    assert grid.shape == (1, 9, 12, 2)
    # location (x=1, y=2), element (i=0, j=2): offset dilation * (j - 1, i - 1) = (2, -2)
    # -> cell (3, 0)
    cell = ((grid[0, 2 * 3 + 0, 1 * 3 + 2] + 1) * torch.tensor([4.0, 3.0]) - 1) / 2
    assert torch.allclose(cell, torch.tensor([3.0, 0.0]), atol=1e-6)


@pytest.mark.parametrize(("k", "d"), [(3, 1), (3, 2), (5, 1), (1, 1)])
def test_identity_transformer_equals_plain_convolution(k, d):
    torch.manual_seed(0)
    st = ConvSpatialTransformer(4, 6, kernel_size=k, dilation=d)
    x = torch.randn(2, 4, 7, 9)
    ref = F.conv2d(x, st.conv.weight, st.conv.bias, padding=d * (k // 2), dilation=d)
    out = st(x)
    assert out.shape == (2, 6, 7, 9)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    assert torch.allclose(st.last_theta, _theta(2, 7, 9))


def test_transformer_gradients_reach_the_transform_predictor():
    torch.manual_seed(0)
    st = ConvSpatialTransformer(3, 5)
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    st(x).pow(2).sum().backward()
    assert st.loc.weight.grad is not None and st.loc.weight.grad.abs().sum() > 0
    assert st.loc.bias.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_sample_local_patches_translation_and_rotation_known_answers():
    feat = torch.arange(25.0).reshape(1, 1, 5, 5)
    # translation by one cell in x: the centre patch of location (2, 2) is its neighbourhood
    # shifted right
    moved = sample_local_patches(feat, _theta(1, 5, 5, (1, 0, 1, 0, 1, 0)), 3)
    assert torch.allclose(moved[0, 0, 6:9, 6:9], feat[0, 0, 1:4, 2:5], atol=1e-5)
    # a 90 degree rotation of the pattern: offset (ox, oy) -> (-oy, ox) rotates the patch
    rot = sample_local_patches(feat, _theta(1, 5, 5, (0, -1, 0, 1, 0, 0)), 3)
    assert torch.allclose(
        rot[0, 0, 6:9, 6:9], torch.rot90(feat[0, 0, 1:4, 1:4], 1, (0, 1)), atol=1e-5
    )


def test_sample_local_patches_zero_outside_and_gradcheck():
    feat = torch.ones(1, 1, 2, 2)
    out = sample_local_patches(feat, _theta(1, 2, 2), 3)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 1, 1] == 1  # corner tap outside the map reads zero
    g = torch.Generator().manual_seed(0)
    f64 = torch.rand(1, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    th = (
        _theta(1, 3, 3, dtype=torch.float64)
        + 0.13 * torch.rand(1, 6, 3, 3, dtype=torch.float64, generator=g)
    ).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, t: sample_local_patches(a, t, 3), (f64, th))


def test_transformer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Argument kernel_size must be odd, got 4"):
        ConvSpatialTransformer(3, 3, kernel_size=4)
    with pytest.raises(ValueError, match="Argument dilation must be an int >= 1, got 0"):
        ConvSpatialTransformer(3, 3, dilation=0)
    with pytest.raises(ValueError, match=r"Argument theta must have shape \(B, 6, h, w\)"):
        local_affine_grid(torch.zeros(1, 4, 2, 2), 3)
    with pytest.raises(ValueError, match=r"Argument theta must have shape \(1, 6, 3, 3\)"):
        sample_local_patches(torch.zeros(1, 2, 3, 3), torch.zeros(1, 6, 2, 3), 3)


# ------------------------------------------------------------------------------------- network


@pytest.mark.parametrize("use_st", [True, False])
def test_ucn_shapes_stride_and_unit_norm(use_st):
    torch.manual_seed(0)
    model = UCN(dim=12, use_st=use_st, trunk_widths=(8, 8, 16))
    feat, stride = model(torch.rand(2, 3, 32, 24))
    assert feat.shape == (2, 12, 8, 6) and stride == 4
    assert torch.allclose(feat.norm(dim=1), torch.ones(2, 8, 6), atol=1e-5)
    assert isinstance(model.st, ConvSpatialTransformer if use_st else nn.Conv2d)
    assert model.config == {
        "dim": 12,
        "use_st": use_st,
        "st_kernel": 3,
        "st_dilation": 1,
        "trunk_widths": [8, 8, 16],
    }


def test_ucn_without_st_equals_identity_st_with_same_weights():
    torch.manual_seed(0)
    a = UCN(dim=8, use_st=True, trunk_widths=(8, 8)).eval()
    b = UCN(dim=8, use_st=False, trunk_widths=(8, 8)).eval()
    b.trunk.load_state_dict(a.trunk.state_dict())
    b.adapt.load_state_dict(a.adapt.state_dict())
    b.st.load_state_dict(a.st.conv.state_dict())
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(a(x)[0], b(x)[0], atol=1e-5)


def test_ucn_feature_grid_matches_the_trunk_cells():
    model = UCN(dim=8, trunk_widths=(4, 4, 4))
    grid = model.feature_grid((64, 48))
    assert grid == FeatureGrid((1.5, 1.5), (4.0, 4.0))
    assert grid == FeatureGrid.for_map((16, 12), (64, 48))
    with pytest.raises(ValueError, match="at least the stride 4"):
        model.feature_grid((2, 64))


def test_ucn_accepts_a_custom_trunk():
    class Plain(nn.Module):  # no attributes: channels and stride are probed
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 2, stride=2)

        def forward(self, x):
            return {"tap": self.conv(x)}

    model = UCN(Plain(), dim=7)
    assert (model.channels, model.stride, model.config) == (5, 2, None)
    feat, stride = model(torch.rand(1, 3, 20, 20))
    assert feat.shape == (1, 7, 10, 10) and stride == 2
    trunk = UCNTrunk((4, 6))
    assert UCN(trunk, dim=3, channels=6, stride=2).channels == 6

    class Two(nn.Module):
        def forward(self, x):
            return {"a": x, "b": x}

    with pytest.raises(ValueError, match="returned 2 feature maps"):
        UCN(Two(), dim=3, channels=3, stride=1)(torch.rand(1, 3, 4, 4))
    with pytest.raises(TypeError, match=r"Argument trunk must be a torch\.nn\.Module"):
        UCN("resnet", dim=3)


# ---------------------------------------------------------------------------------------- loss


def _cells(*xy):
    return torch.tensor(xy, dtype=torch.float32).reshape(1, -1, 2)


def test_contrastive_loss_known_values():
    f_src = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(
        1, 2, 1, 2
    )  # cells (0,0)=(1,0), (1,0)=(0,1)
    f_trg = torch.tensor([[0.6, 0.8], [1.0, 0.0]]).T.reshape(1, 2, 1, 2)
    pos_s, pos_t = _cells((0, 0)), _cells((1, 0))  # d = 0: contributes 0
    neg_s, neg_t = (
        _cells((0, 0), (1, 0)),
        _cells((0, 0), (0, 0)),
    )  # d = sqrt(0.16+0.64), sqrt(0.36+0.04)
    loss = correspondence_contrastive_loss(f_src, f_trg, pos_s, pos_t, neg_s, neg_t, margin=1.0)
    d1, d2 = math.sqrt(0.8), math.sqrt(0.4)
    expected = ((1 - d1) ** 2 + (1 - d2) ** 2) / (2 * 3)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # positives only: 1/(2N) * sum d^2 with d^2 = |(1,0) - (0.6,0.8)|^2 = 0.8
    only_pos = correspondence_contrastive_loss(
        f_src, f_trg, _cells((0, 0)), _cells((0, 0)), neg_s[:, :0], neg_t[:, :0]
    )
    assert only_pos.item() == pytest.approx(0.8 / 2, rel=1e-5)
    # a negative beyond the margin costs nothing
    far = correspondence_contrastive_loss(
        f_src, f_trg, pos_s[:, :0], pos_t[:, :0], _cells((1, 0)), _cells((1, 0)), margin=1.0
    )
    assert far.item() == 0.0
    module = CorrespondenceContrastiveLoss(margin=1.0)
    assert module(f_src, f_trg, pos_s, pos_t, neg_s, neg_t).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_contrastive_loss_samples_fractional_cells_bilinearly():
    f_src = torch.tensor([[0.0, 2.0]]).reshape(1, 1, 1, 2)
    f_trg = torch.zeros(1, 1, 1, 2)
    loss = correspondence_contrastive_loss(
        f_src, f_trg, _cells((0.5, 0)), _cells((0, 0)), _cells()[:, :0], _cells()[:, :0]
    )
    assert loss.item() == pytest.approx(1.0 / 2)  # descriptor 1.0 at x = 0.5


def test_contrastive_loss_matches_loop_reference_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    f_src = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    f_trg = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    grid = torch.tensor([4.0, 3.0], dtype=torch.float64)
    ps, pt = (torch.rand(2, 3, 2, dtype=torch.float64, generator=g) * grid for _ in range(2))
    ns, nt = (torch.randint(0, 3, (2, 4, 2), generator=g).double() for _ in range(2))
    loss = correspondence_contrastive_loss(f_src, f_trg, ps, pt, ns, nt, margin=3.0)
    ref = 0.0
    for b in range(2):  # pairs drawn one by one, as the equation reads
        for i in range(3):
            x0, y0 = ps[b, i].tolist()
            a = F.grid_sample(
                f_src[b : b + 1],
                torch.tensor(
                    [[[[(2 * x0 + 1) / 5 - 1, (2 * y0 + 1) / 4 - 1]]]], dtype=torch.float64
                ),
                align_corners=False,
            )[0, :, 0, 0]
            x1, y1 = pt[b, i].tolist()
            c = F.grid_sample(
                f_trg[b : b + 1],
                torch.tensor(
                    [[[[(2 * x1 + 1) / 5 - 1, (2 * y1 + 1) / 4 - 1]]]], dtype=torch.float64
                ),
                align_corners=False,
            )[0, :, 0, 0]
            ref += float((a - c).detach().pow(2).sum())
        for j in range(4):
            (x0, y0), (x1, y1) = ns[b, j].long().tolist(), nt[b, j].long().tolist()
            d = float((f_src[b, :, y0, x0] - f_trg[b, :, y1, x1]).detach().norm())
            ref += max(0.0, 3.0 - d) ** 2
    assert loss.item() == pytest.approx(ref / (2 * 2 * 7), rel=1e-9)
    assert torch.autograd.gradcheck(
        lambda a, c: correspondence_contrastive_loss(a, c, ps, pt, ns, nt, 3.0), (f_src, f_trg)
    )


def test_contrastive_loss_empty_and_errors():
    f = torch.rand(1, 4, 3, 3, requires_grad=True)
    empty = torch.zeros(1, 0, 2)
    loss = correspondence_contrastive_loss(f, f, empty, empty, empty, empty)
    loss.backward()
    assert loss.item() == 0.0 and f.grad is not None
    with pytest.raises(ValueError, match=r"Argument pos_trg_cells must have shape \(1, 2, 2\)"):
        correspondence_contrastive_loss(
            f, f, torch.zeros(1, 2, 2), torch.zeros(1, 3, 2), empty, empty
        )
    with pytest.raises(ValueError, match="Argument margin must be positive, got 0"):
        correspondence_contrastive_loss(f, f, empty, empty, empty, empty, margin=0)
    # identical negative features (d = 0) still give a finite gradient
    g = torch.rand(1, 4, 3, 3, requires_grad=True)
    c = _cells((1, 1))
    correspondence_contrastive_loss(g, g, empty, empty, c, c).backward()
    assert torch.isfinite(g.grad).all()


# ----------------------------------------------------------------------------------- negatives


def _mine_loop(f_src, f_trg, src_cells, true_cells, radius):
    """Loop reference: the nearest allowed cell, and the float64 distance to every cell (inf where
    not allowed), ``(B, N, Ht, Wt)``."""
    b, _, h, w = f_trg.shape
    out = torch.zeros(b, src_cells.shape[1], 2)
    dist = torch.full((b, src_cells.shape[1], h, w), math.inf, dtype=torch.float64)
    for bi in range(b):
        for i in range(src_cells.shape[1]):
            x, y = src_cells[bi, i].tolist()
            q = F.grid_sample(
                f_src[bi : bi + 1],
                torch.tensor(
                    [[[[(2 * x + 1) / f_src.shape[-1] - 1, (2 * y + 1) / f_src.shape[-2] - 1]]]]
                ),
                align_corners=False,
            )[0, :, 0, 0]
            best, arg = float("inf"), None
            for cy in range(h):
                for cx in range(w):
                    if math.dist((cx, cy), true_cells[bi, i].tolist()) <= radius:
                        continue
                    d = float((q.double() - f_trg[bi, :, cy, cx].double()).pow(2).sum())
                    dist[bi, i, cy, cx] = d
                    if d < best:
                        best, arg = d, (cx, cy)
            out[bi, i] = torch.tensor(arg, dtype=torch.float32)
    return out, dist


def test_mine_hard_negatives_matches_loop_and_respects_radius():
    g = torch.Generator().manual_seed(0)
    f_src = F.normalize(torch.randn(2, 8, 5, 6, generator=g), dim=1)
    f_trg = F.normalize(torch.randn(2, 8, 4, 7, generator=g), dim=1)
    src = torch.rand(2, 6, 2, generator=g) * torch.tensor([5.0, 4.0])
    true = torch.rand(2, 6, 2, generator=g) * torch.tensor([6.0, 3.0])
    for radius in (0.0, 1.5, 2.5):
        neg = mine_hard_negatives(f_src, f_trg, src, true, radius)
        assert neg.shape == (2, 6, 2)
        assert ((neg - true).norm(dim=-1) > radius).all()
        # mine_hard_negatives ranks float32 |q|^2 - 2 q.t + |t|^2, the loop float64 |q - t|^2: two
        # summation orders, so only a clear winner (float32 error of unit vectors ~1e-6) must agree;
        # a near-tie may go either way but must be as close as the loop's best
        ref, dist = _mine_loop(f_src, f_trg, src, true, radius)
        two = dist.flatten(2).topk(2, dim=-1, largest=False).values
        clear = two[..., 1] - two[..., 0] > 1e-5
        assert clear.float().mean() > 0.9 and torch.equal(neg[clear], ref[clear])
        chosen = dist.flatten(2).gather(
            -1, (neg[..., 1] * dist.shape[-1] + neg[..., 0]).long()[..., None]
        )[..., 0]
        assert (chosen <= two[..., 0] + 1e-5).all()


def test_mine_hard_negatives_radius_zero_excludes_only_the_true_cell():
    f = torch.eye(4).reshape(1, 4, 2, 2).requires_grad_()  # one-hot codes: every other cell ties
    src = torch.tensor([[[1.0, 1.0]]])
    neg = mine_hard_negatives(f, f, src, src, radius=0.0)
    assert torch.equal(neg, torch.tensor([[[0.0, 0.0]]]))  # ties go to the first cell, row-major
    assert not neg.requires_grad


def test_mine_hard_negatives_errors_and_empty():
    f = torch.rand(1, 3, 2, 2)
    assert mine_hard_negatives(f, f, torch.zeros(1, 0, 2), torch.zeros(1, 0, 2), 1.0).shape == (
        1,
        0,
        2,
    )
    with pytest.raises(ValueError, match=r"radius=5.0 leaves no target cell farther than it"):
        mine_hard_negatives(f, f, torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), 5.0)
    with pytest.raises(ValueError, match="Argument radius must be >= 0"):
        mine_hard_negatives(f, f, torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), -1.0)
    with pytest.raises(ValueError, match=r"Argument trg_true_cells must have shape \(1, 1, 2\)"):
        mine_hard_negatives(f, f, torch.zeros(1, 1, 2), torch.zeros(1, 2, 2), 1.0)


def test_random_negatives_outside_radius_uniform_and_deterministic():
    true = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [2.4, 0.3]]]).expand(4, -1, -1)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = random_negatives(true, (3, 4), 1.2, generator=g1)
    b = random_negatives(true, (3, 4), 1.2, generator=g2)
    assert torch.equal(a, b) and a.shape == (4, 3, 2)
    assert ((a - true).norm(dim=-1) > 1.2).all()
    # every allowed cell of point (1, 1) shows up, with about equal frequency
    many = random_negatives(
        torch.tensor([[[1.0, 1.0]]]).expand(1, 3000, -1), (3, 4), 1.2, generator=g1
    )[0]
    cells, counts = torch.unique(many, dim=0, return_counts=True)
    allowed = [(x, y) for y in range(3) for x in range(4) if math.dist((x, y), (1, 1)) > 1.2]
    assert sorted(map(tuple, cells.long().tolist())) == sorted(allowed)
    assert counts.min() > 0.6 * 3000 / len(allowed)


def test_random_negatives_few_allowed_cells_and_errors():
    true = torch.zeros(1, 50, 2)  # in a 5x5 map only the corner (4, 4) is farther than 5.6
    neg = random_negatives(true, (5, 5), 5.6, generator=torch.Generator().manual_seed(0))
    assert (neg == 4).all()
    with pytest.raises(ValueError, match="leaves no target cell farther than it"):
        random_negatives(true, (5, 5), 6.0)
    with pytest.raises(ValueError, match="Argument map_size must be positive"):
        random_negatives(true, (0, 5), 1.0)
    assert random_negatives(torch.zeros(2, 0, 2), (3, 3), 1.0).shape == (2, 0, 2)


# ------------------------------------------------------------------------------------ model files


def test_export_from_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = UCN(
        dim=8, trunk_widths=(8, 16), st_kernel=3, st_dilation=2, variant="hard-negatives+st"
    ).eval()
    assert model.variant == "hard-negatives+st"  # recorded by the constructor
    path = export_ucn(tmp_path / "ucn.pt", model, metrics={"pck": 0.5, "bad": float("inf")})
    state = load_checkpoint(path)
    assert (
        state["format"] == UCN_FORMAT
        and state["variant"] == "hard-negatives+st"
        and state["metrics"] == {"pck": 0.5}
    )
    loaded = UCN.from_checkpoint(path)
    assert isinstance(loaded, UCN) and not loaded.training
    assert loaded.variant == "hard-negatives+st" and loaded.config == model.config and loaded.use_st
    assert loaded.st.dilation == 2 and loaded.stride == model.stride == 2
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded(x)[0], model(x)[0])
    assert load_ucn(path).variant == "hard-negatives+st"
    plain = export_ucn(tmp_path / "plain.pt", UCN(dim=4, trunk_widths=(4,), use_st=False))
    assert UCN.from_checkpoint(plain).variant is None and not UCN.from_checkpoint(plain).use_st


def test_load_refuses_wrong_shapes_and_other_files(tmp_path):
    path = export_ucn(tmp_path / "ucn.pt", UCN(dim=8, trunk_widths=(8, 16)))
    state = load_checkpoint(path)
    state["model"]["adapt.weight"] = torch.zeros(4, 16, 1, 1)  # a head of another dimension
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match=r"ucn\.pt: the saved model weights do not fit a UCN"):
        UCN.from_checkpoint(path)
    state["config"]["dim"] = 0
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match=r"ucn\.pt: its settings .* do not build a UCN"):
        load_ucn(path)
    save_checkpoint(tmp_path / "other.pt", {"format": "corrlib.patch/1", "model": {}})
    with pytest.raises(
        ValueError, match=r"other\.pt is not an exported UCN \(format 'corrlib.patch/1'"
    ):
        UCN.from_checkpoint(tmp_path / "other.pt")


# ------------------------------------------------------------------------- mining rules (D7)


def _row_maps():
    """Source: one cell with code (1, 0, 0). Target: a 1 x 4 row of cells whose codes put the
    feature-space nearest neighbour at x = 1 (0.99 alike), then x = 3 (0.9), x = 0, x = 2."""
    f_src = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)
    codes = torch.tensor([[0.0, 1, 0], [0.99, 0.1, 0], [0, 0, 1], [0.9, 0, 0.4]])
    f_trg = F.normalize(codes, dim=1).T.reshape(1, 3, 1, 4)
    return f_src, f_trg, torch.zeros(1, 1, 2)


def test_mining_rules_differ_when_the_nearest_neighbour_is_inside_the_radius():
    f_src, f_trg, src = _row_maps()
    true = torch.tensor([[[0.0, 0.0]]])  # NN x = 1 is 1 cell from the truth: inside radius 1.5
    cells, valid = mine_negatives(f_src, f_trg, src, true, 1.5, rule="nn-if-far")
    assert cells.tolist() == [[[1.0, 0.0]]] and valid.tolist() == [[False]]  # no negative
    cells, valid = mine_negatives(f_src, f_trg, src, true, 1.5)  # hardest outside: x = 3
    assert cells.tolist() == [[[3.0, 0.0]]] and valid.tolist() == [[True]]
    assert torch.equal(cells, mine_hard_negatives(f_src, f_trg, src, true, 1.5))


def test_mining_rules_agree_when_the_nearest_neighbour_is_outside_the_radius():
    f_src, f_trg, src = _row_maps()
    true = torch.tensor([[[3.0, 0.0]]])  # NN x = 1 is 2 cells from the truth: outside 1.5
    for rule in ("hardest-outside", "nn-if-far"):
        cells, valid = mine_negatives(f_src, f_trg, src, true, 1.5, rule=rule)
        assert cells.tolist() == [[[1.0, 0.0]]] and valid.tolist() == [[True]], rule


def test_mine_negatives_batches_empty_and_errors():
    g = torch.Generator().manual_seed(0)
    f_src = F.normalize(torch.randn(2, 4, 3, 5, generator=g), dim=1)
    f_trg = F.normalize(torch.randn(2, 4, 4, 6, generator=g), dim=1)
    src = torch.rand(2, 7, 2, generator=g) * torch.tensor([4.0, 2.0])
    true = torch.rand(2, 7, 2, generator=g) * torch.tensor([5.0, 3.0])
    cells, valid = mine_negatives(f_src, f_trg, src, true, 1.0, rule="nn-if-far")
    assert cells.shape == (2, 7, 2) and valid.shape == (2, 7) and valid.dtype == torch.bool
    assert torch.equal(valid, (cells - true).norm(dim=-1) > 1.0)
    nn_all, _ = mine_negatives(f_src, f_trg, src, true, 0.0, rule="nn-if-far")
    assert torch.equal(cells, nn_all)  # the nearest neighbour does not depend on the radius
    empty = torch.zeros(2, 0, 2)
    cells, valid = mine_negatives(f_src, f_trg, empty, empty, 1.0, rule="nn-if-far")
    assert cells.shape == (2, 0, 2) and valid.shape == (2, 0)
    with pytest.raises(ValueError, match="Valid values are"):
        mine_negatives(f_src, f_trg, src, true, 1.0, rule="semi-hard")
    # nn-if-far never runs out of cells: a radius covering the map just leaves no negative
    _, valid = mine_negatives(f_src, f_trg, src, true, 100.0, rule="nn-if-far")
    assert not valid.any()
    with pytest.raises(ValueError, match="smaller radius"):
        mine_negatives(f_src, f_trg, src, true, 100.0)


def test_contrastive_loss_counts_only_the_negatives_used():
    f_src = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    f_trg = torch.tensor([[1.0, 0.0], [0.6, 0.8]]).T.reshape(1, 2, 1, 2)
    pos_s, pos_t = torch.zeros(1, 1, 2), torch.zeros(1, 1, 2)  # d = 0
    neg_s = torch.zeros(1, 2, 2)
    neg_t = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # d = sqrt(0.8), then d = 0
    valid = torch.tensor([[True, False]])
    loss = correspondence_contrastive_loss(
        f_src, f_trg, pos_s, pos_t, neg_s, neg_t, 1.0, neg_valid=valid
    )
    expected = (1 - math.sqrt(0.8)) ** 2 / (2 * 2)  # N = 1 positive + 1 negative used
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # equal to dropping the unused pair; an all-True mask is the plain loss
    dropped = correspondence_contrastive_loss(
        f_src, f_trg, pos_s, pos_t, neg_s[:, :1], neg_t[:, :1]
    )
    assert loss.item() == pytest.approx(dropped.item(), rel=1e-6)
    every = torch.ones(1, 2, dtype=torch.bool)
    assert torch.equal(
        correspondence_contrastive_loss(f_src, f_trg, pos_s, pos_t, neg_s, neg_t, neg_valid=every),
        correspondence_contrastive_loss(f_src, f_trg, pos_s, pos_t, neg_s, neg_t),
    )
    module = CorrespondenceContrastiveLoss(1.0)
    assert module(f_src, f_trg, pos_s, pos_t, neg_s, neg_t, valid).item() == pytest.approx(expected)
    none = torch.zeros(1, 2, dtype=torch.bool)  # no negative: the positives' mean alone
    only_pos = correspondence_contrastive_loss(
        f_src, f_trg, pos_s, pos_t, neg_s, neg_t, neg_valid=none
    )
    assert only_pos.item() == 0.0
    with pytest.raises(TypeError, match="bool"):
        correspondence_contrastive_loss(
            f_src, f_trg, pos_s, pos_t, neg_s, neg_t, neg_valid=valid.float()
        )
