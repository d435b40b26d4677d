"""Tests of SFNetMethod's test-time geometries (corrlib's and the authors' padded one)."""

from __future__ import annotations

import pytest
import torch

from corrlib.matching import FeatureGrid
from corrlib.methods import SFNetMethod, get_method
from corrlib.models.sfnet import OFFLINE_GRID_STRIDE, SFNetOutput, sfnet

S, P = 64, OFFLINE_GRID_STRIDE  # padded size 64, one cell of padding: content 48, 8 x 8 grid
G = S // P


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sfnet(arch="offline", trunk_weights="offline", kernels=(3, 3), blocks=1).eval()


def _with_flow(monkeypatch, model, flow_cells):
    """Make the model return ``flow_cells (2, G, G)`` (target cells) as its src->trg flow."""

    def forward_features(fs, ft, image_size, argmax=None, max_bytes=None, reverse=True):
        size = model.grid_size(image_size)
        grid = FeatureGrid.for_map(size, tuple(image_size))
        flow = flow_cells[None].float()
        return SFNetOutput(None, None, flow, flow if reverse else None, grid, grid)

    monkeypatch.setattr(model, "forward_features", forward_features)


def _img(h, w, seed=0):
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed)).byte()


@pytest.mark.parametrize("geometry", ["corrlib", "official"])
def test_zero_flow_maps_keypoints_to_themselves(monkeypatch, model, geometry):
    _with_flow(monkeypatch, model, torch.zeros(2, G, G))
    method = SFNetMethod(model=model, image_size=S, geometry=geometry)
    kps = torch.tensor([[0.0, 0.0], [69.0, 49.0], [12.3, 40.7], [35.0, 2.0]])
    src, trg = _img(50, 70), _img(50, 70, 1)
    assert torch.allclose(method.match(src, trg, kps), kps, atol=1e-4)
    # the dense flow upsamples target positions (border-clamped): exact off the outer pixels
    assert method.flow(src, trg)[:, 1:-1, 1:-1].abs().max() < 1e-4
    # another target size: the same relative position
    moved = method.match(src, _img(100, 35), kps)
    assert torch.allclose(moved, (kps + 0.5) * torch.tensor([0.5, 2.0]) - 0.5, atol=1e-4)


def test_official_geometry_pads_the_content_by_one_cell(monkeypatch, model):
    method = SFNetMethod(model=model, image_size=S, geometry="official")
    assert method.pad == P and method.frame_size == (S - 2 * P,) * 2
    assert "official geometry: 48x48 padded by 8" in method.description
    seen = []
    trunk_features = model.trunk_features
    monkeypatch.setattr(model, "trunk_features", lambda x: seen.append(x) or trunk_features(x))
    method._features(torch.full((3, 30, 20), 255, dtype=torch.uint8))
    (x,) = seen
    assert x.shape == (1, 3, S, S)
    assert (x[..., P : S - P, P : S - P] == 1).all()  # the content, resized to 48 x 48
    x[..., P : S - P, P : S - P] = 0
    assert (x == 0).all()  # the ring of one cell is black padding


def test_official_geometry_drops_the_ring_and_places_cells_at_their_centres(monkeypatch, model):
    # inner cells (padded indices 1..G-2) move by their own column index in cells, so cell i
    # moves i * P pixels; the ring holds a wild value that must never reach a keypoint
    flow = torch.zeros(2, G, G)
    flow[0] = torch.arange(G, dtype=torch.float32)
    flow[:, 0, :] = flow[:, -1, :] = flow[:, :, 0] = flow[:, :, -1] = 100.0
    _with_flow(monkeypatch, model, flow)
    method = SFNetMethod(model=model, image_size=S, geometry="official")
    c = S - 2 * P  # content 48: the original image is the content's size, no rescaling
    src, trg = _img(c, c), _img(c, c, 1)
    # content cell k (padded k + 1) is centred on content pixel P * k + (P - 1) / 2 and moves
    # (k + 1) * P pixels; rows are all alike
    # (k + 1) * P pixels; rows are all alike. Content pixel 4 is cell 0.0625: moves 1.0625 * P
    kps = torch.tensor([[P * 2 + (P - 1) / 2, 20.0], [4.0, 0.0]])
    want = torch.tensor([[P * 2 + (P - 1) / 2 + 3 * P, 20.0], [4.0 + 1.0625 * P, 0.0]])
    assert torch.allclose(method.match(src, trg, kps), want, atol=1e-4)
    # a constant shift of one cell, border keypoints included; an original twice the content
    flow = torch.zeros(2, G, G)
    flow[0, 1:-1, 1:-1] = 1.0
    flow[1, 1:-1, 1:-1] = -0.5
    flow[:, 0, :] = flow[:, -1, :] = flow[:, :, 0] = flow[:, :, -1] = 100.0
    _with_flow(monkeypatch, model, flow)
    src, trg = _img(2 * c, 2 * c), _img(2 * c, 2 * c, 1)
    kps = torch.tensor([[0.0, 0.0], [95.0, 95.0], [40.0, 60.0]])
    # content shift (+8, -4) px is (+16, -8) original px
    got = method.match(src, trg, kps)
    assert torch.allclose(got, kps + torch.tensor([2.0 * P, -1.0 * P]), atol=1e-4)
    dense = method.flow(src, trg)
    assert dense.shape == (2, 2 * c, 2 * c)
    inner = dense[:, 1:-1, 1:-1]
    assert torch.allclose(inner[0], torch.full_like(inner[0], 2.0 * P), atol=1e-4)
    assert torch.allclose(inner[1], torch.full_like(inner[1], -1.0 * P), atol=1e-4)


def test_get_method_accepts_geometry_and_rejects_others(model):
    method = get_method("sfnet", model=model, image_size=S, geometry="official")
    assert isinstance(method, SFNetMethod) and method.geometry == "official"
    assert get_method("sfnet", model=model, image_size=S).geometry == "corrlib"
    assert get_method("sfnet", model=model, image_size=S).frame_size == (S, S)
    with pytest.raises(ValueError, match="Valid values are"):
        SFNetMethod(model=model, image_size=S, geometry="authors")
    with pytest.raises(ValueError, match="at least 3x3"):
        SFNetMethod(model=model, image_size=(16, 64), geometry="official")


def test_official_geometry_runs_end_to_end(model):
    method = SFNetMethod(model=model, image_size=S, geometry="official")
    kps = torch.tensor([[3.0, 4.0], [30.0, 20.0]])
    out = method.match(_img(40, 50), _img(45, 35, 1), kps)
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    assert method.resized_flow(_img(40, 50), _img(45, 35, 1)).shape == (2, S - 2 * P, S - 2 * P)
