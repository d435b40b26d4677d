"""SCNet's parts: the Hough vote against its explicit kernel, bins, gradients, loss, transfer."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from corrlib.models.scnet import (
    SCNet,
    export_scnet,
    hough_bins,
    hough_kernel,
    hough_vote,
    load_scnet,
    proposal_ground_truth,
    rectified_cosine,
    scnet_hinge_loss,
    transfer_by_proposals,
    warp_boxes_tps,
)


def _boxes(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size * 0.6
    wh = 10 + torch.rand(n, 2, generator=g, dtype=torch.float64) * size * 0.35
    return torch.cat([xy, xy + wh], 1)


def test_vote_equals_explicit_kernel_sum():
    g = torch.Generator().manual_seed(0)
    a, b = _boxes(20, 224, g), _boxes(20, 224, g)
    # boxes of b = boxes of a shifted: many matches share a bin
    b[:10] = a[:10] + 12.0
    f = torch.rand(20, 20, generator=g, dtype=torch.float64)
    bins, valid, n = hough_bins(a, b, (224, 224), (224, 224))
    got = hough_vote(f, bins, valid, n)
    k = hough_kernel(bins, valid)
    weight = (f - 0.4).clamp(min=0).reshape(-1) * valid.reshape(-1)
    want = torch.where(valid.reshape(-1), k @ weight + 0.01, torch.full_like(weight, 0.01))
    assert_close(got.reshape(-1), want)
    # the shifted copies share one translation bin with each other (same scale: one bin)
    same = bins[torch.arange(10), torch.arange(10)]
    assert valid[torch.arange(10), torch.arange(10)].all()
    assert (same == same[0]).sum() >= 5


def test_bin_count_for_224_is_18_18_40():
    a = torch.tensor([[10.0, 10.0, 50.0, 60.0]])
    _, _, n = hough_bins(a, a, (224, 224), (224, 224))
    assert n == 18 * 18 * 40


def test_aspect_filter():
    a = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    b = torch.tensor([[0.0, 0.0, 40.0, 41.0], [0.0, 0.0, 80.0, 40.0], [0.0, 0.0, 79.0, 40.0]])
    _, valid, _ = hough_bins(a, b, (224, 224), (224, 224))
    # aspect ratio changed by <2: valid; by exactly 2: invalid (strict, as the code)
    assert valid.tolist() == [[True, False, True]]


def test_vote_gradcheck():
    g = torch.Generator().manual_seed(1)
    a, b = _boxes(6, 100, g), _boxes(7, 100, g)
    b[:4] = a[:4] + 5
    bins, valid, n = hough_bins(a, b, (100, 100), (100, 100))
    # scores away from the 0.4 kink, so finite differences see a smooth function
    f = (0.45 + 0.5 * torch.rand(6, 7, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: s * hough_vote(s, bins, valid, n), (f,))


def test_rectified_cosine():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[-1.0, 0.0], [0.6, 0.8]])
    assert_close(rectified_cosine(a, b), torch.tensor([[0.0, 0.6], [0.0, 0.8]]))
    assert_close(rectified_cosine(a, b, rectify=False), torch.tensor([[-1.0, 0.6], [0.0, 0.8]]))


def test_hinge_loss_counts_and_value():
    iou = torch.tensor(
        [
            [0.9, 0.6, 0.1, 0.0, 0.3],  # 2 positives, negatives among cols 2, 3
            [0.1, 0.0, 0.0, 0.55, 0.2],  # 1 positive, negatives among 0, 1, 2, 4
            [0.9, 0.9, 0.9, 0.9, 0.9],  # inactive row
        ]
    )
    scores = torch.tensor(
        [[0.8, 0.5, 0.3, 0.7, 0.9], [0.2, 0.6, 0.1, 0.4, 0.05], [1.0, 1.0, 1.0, 1.0, 1.0]]
    )
    active = torch.tensor([True, True, False])
    loss, logs = scnet_hinge_loss(scores, iou, active)
    assert logs["positives"] == 3 and logs["negatives"] == 3
    # positives (0,0) (0,1) (1,3); hardest negatives (0,3) (0,2) and (1,1)
    want = ((0.2 + 0.5 + 0.6) + (1.7 + 1.3 + 1.6)) / (2 * 3)
    assert loss.item() == pytest.approx(want)
    # the paper's thresholds 0.6/0.4: (0,1) at 0.6 and (1,3) at 0.55 are no longer positive
    _, logs = scnet_hinge_loss(scores, iou, active, iou_pos=0.6, iou_neg=0.4)
    assert logs["positives"] == 1


def test_hinge_loss_random_negatives_and_empty():
    iou = torch.tensor([[0.9, 0.0, 0.0, 0.0]])
    scores = torch.tensor([[0.5, 0.1, 0.2, 0.3]], requires_grad=True)
    g = torch.Generator().manual_seed(0)
    loss, logs = scnet_hinge_loss(
        scores, iou, torch.tensor([True]), negatives="random", generator=g
    )
    assert logs["negatives"] == 1
    loss.backward()
    assert scores.grad[0, 0] < 0
    loss, logs = scnet_hinge_loss(scores, iou * 0, torch.tensor([True]))
    assert logs["positives"] == 0 and loss.item() == 0.0


def test_transfer_by_proposals_uses_most_confident_containing_box():
    boxes_a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 20.0]])
    boxes_b = torch.tensor([[100.0, 100.0, 110.0, 110.0], [50.0, 50.0, 90.0, 90.0]])
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.5]])
    pts = torch.tensor([[5.0, 5.0], [15.0, 15.0], [40.0, 40.0]])
    out = transfer_by_proposals(pts, boxes_a, boxes_b, scores)
    # (5, 5): box 0 (conf 0.9) -> box b0; (15, 15): only box 1 -> box b1; (40, 40): nearest
    # centre is box 1's (10, 10)
    assert_close(out[0], torch.tensor([105.0, 105.0]))
    assert_close(out[1], torch.tensor([80.0, 80.0]))
    assert_close(out[2], torch.tensor([130.0, 130.0]))


def test_warp_boxes_tps_reproduces_a_translation():
    kps_a = torch.tensor([[10.0, 10.0], [80.0, 12.0], [40.0, 70.0], [90.0, 90.0], [20.0, 60.0]])
    boxes = torch.tensor([[5.0, 5.0, 50.0, 40.0]])  # holds keypoint (10, 10)
    out = warp_boxes_tps(boxes, kps_a, kps_a + torch.tensor([7.0, 3.0]), (200, 200))
    assert_close(out, torch.tensor([[12.0, 8.0, 57.0, 43.0]]))
    gt = proposal_ground_truth(
        boxes,
        torch.tensor([[12.0, 8.0, 57.0, 43.0], [0.0, 0.0, 5.0, 5.0]]),
        kps_a,
        kps_a + torch.tensor([7.0, 3.0]),
        torch.tensor([0.0, 0.0, 100.0, 100.0]),
        (200, 200),
    )
    assert_close(gt["iou"], torch.tensor([[1.0, 0.0]]))
    assert gt["active"].tolist() == [True]


@pytest.mark.parametrize("variant", ["A", "AG", "AG+"])
def test_scnet_forward_export_roundtrip(tmp_path, variant):
    torch.manual_seed(0)
    m = SCNet(variant, trunk="hog", tap="hog", pool=2, dim=8, input_size=(64, 64)).eval()
    x = torch.rand(1, 3, 64, 64)
    fm = m.feature_map(x)
    assert fm.shape == (1, 36, 8, 8)
    boxes = torch.tensor([[0.0, 0.0, 30.0, 30.0], [10.0, 5.0, 60.0, 50.0], [20, 20, 40, 40.0]])
    out = m(fm, fm, boxes, boxes)
    assert out["score"].shape == (3, 3)
    if variant == "A":
        assert_close(out["score"], out["appearance"])
    m.eval_settings = {"proposals": "ss", "n_proposals": 50}
    path = export_scnet(tmp_path / "m.pt", m, metrics={"pck": 0.5})
    m2 = load_scnet(path)
    assert m2.variant == variant and m2.eval_settings["n_proposals"] == 50
    assert_close(m2(fm, fm, boxes, boxes)["score"], out["score"])


def test_agplus_freeze_appearance_trains_geometry_only():
    m = SCNet("AG+", trunk="hog", tap="hog", pool=2, dim=8, agplus_mode="freeze_appearance")
    assert not m.appearance.weight.requires_grad and m.geometry.weight.requires_grad
    assert_close(m.appearance.weight, m.geometry.weight)  # one random FC, copied (the code)


def test_load_scnet_refuses_other_files(tmp_path):
    torch.save({"format": "something else"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"x\.pt"):
        load_scnet(tmp_path / "x.pt")


def test_warp_boxes_falls_back_when_tps_is_undefined():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    line = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])  # collinear: no TPS
    out = warp_boxes_tps(boxes, line, line * 2 + 5, (100, 100))
    assert_close(out, torch.tensor([[5.0, 5.0, 25.0, 25.0]]))
    one = torch.tensor([[4.0, 4.0]])
    assert_close(warp_boxes_tps(boxes, one, one + 3, (100, 100)), boxes + 3)
