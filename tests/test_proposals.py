"""Proposal generators and box helpers."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.testing import assert_close

from corrlib.proposals import (
    active_proposals,
    box_ioa,
    boxes_containing,
    flip_boxes,
    make_proposals,
    remove_boundary_boxes,
    scale_boxes,
    selective_search,
    sliding_boxes,
    uniform_boxes,
)


def _image() -> torch.Tensor:
    from skimage import data

    return torch.from_numpy(data.astronaut()[::4, ::4].copy()).permute(2, 0, 1)  # 128 x 128


@pytest.mark.parametrize("backend", ["opencv", "skimage"])
def test_selective_search_is_deterministic_and_inside(backend):
    pytest.importorskip("cv2") if backend == "opencv" else None
    img = _image()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = selective_search(img, 200, backend=backend)
        b = selective_search(img, 200, backend=backend)
    assert 20 <= a.shape[0] <= 200
    assert torch.equal(a, b)
    assert (a[:, 0] >= 0).all() and (a[:, 2] <= 128).all() and (a[:, 2] > a[:, 0]).all()


def test_selective_search_auto_without_opencv_warns(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_cv2(name, *args, **kwargs):
        if name == "cv2":
            raise ImportError("no cv2 here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cv2)
    with pytest.warns(UserWarning, match="opencv-contrib-python-headless"):
        boxes = selective_search(_image(), 100)
    assert boxes.shape[0] > 0
    with pytest.raises(ImportError, match="pip install opencv-contrib-python-headless"):
        selective_search(_image(), 100, backend="opencv")


def test_uniform_and_sliding_boxes():
    u = uniform_boxes((100, 200), 50, seed=3)
    assert u.shape == (50, 4) and torch.equal(u, uniform_boxes((100, 200), 50, seed=3))
    assert (u[:, 2] <= 200).all() and (u[:, 3] <= 100).all()
    s = sliding_boxes((100, 200), 1000)
    assert (s[:, 2] <= 200 + 1e-4).all() and (s[:, 3] <= 100 + 1e-4).all()
    assert make_proposals(_image(), "sw", 30).shape[0] == 30


def test_remove_boundary_keeps_whole_image_box():
    boxes = torch.tensor([[0.0, 10, 20, 30], [10, 10, 20, 20], [0, 0, 100, 100], [5, 5, 99.5, 50]])
    kept = remove_boundary_boxes(boxes, (100, 100))
    assert kept.tolist() == [[10, 10, 20, 20], [0, 0, 100, 100]]


def test_box_helpers():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 25.0]])
    assert_close(
        box_ioa(boxes, torch.tensor([[0.0, 0.0, 10.0, 20.0]]))[:, 0], torch.tensor([1.0, 0.375])
    )
    inside = boxes_containing(boxes, torch.tensor([[2.0, 2.0], [12.0, 20.0]]))
    assert inside.tolist() == [[True, False], [False, True]]
    active = active_proposals(
        boxes, torch.tensor([0.0, 0.0, 12.0, 12.0]), torch.tensor([[2.0, 2.0]])
    )
    assert active.tolist() == [True, False]
    assert_close(flip_boxes(boxes, 100), torch.tensor([[90.0, 0, 100, 10], [85, 5, 95, 25]]))
    assert_close(scale_boxes(boxes, (10, 20), (20, 10))[0], torch.tensor([0.0, 0, 5, 20]))
