"""Matplotlib figures (corrlib.viz), drawn off-screen with the Agg backend."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torchvision.utils  # noqa: F401  (imported lazily by flow_image: pay for it once here)
from matplotlib.colors import to_rgba

from corrlib.viz import flow_image, plot_matches, plot_pair_flow, to_numpy_image

LIME, RED, YELLOW = to_rgba("lime"), to_rgba("red"), to_rgba("yellow")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _pair():
    g = torch.Generator().manual_seed(0)
    src = torch.rand(3, 20, 30, generator=g)  # float in [0, 1]
    trg = torch.randint(0, 256, (3, 25, 16), dtype=torch.uint8, generator=g)  # taller, narrower
    return src, trg


def _segments(ax):
    """The match lines (solid, no marker) as (colour, xdata, ydata)."""
    return [
        (to_rgba(ln.get_color()), list(ln.get_xdata()), list(ln.get_ydata()))
        for ln in ax.lines
        if ln.get_linestyle() == "-" and ln.get_marker() in ("None", "", None)
    ]


# ------------------------------------------------------------------------------------------------
# to_numpy_image
# ------------------------------------------------------------------------------------------------


def test_to_numpy_image_uint8():
    img = torch.zeros(3, 2, 4, dtype=torch.uint8)
    img[0, 1, 3] = 255
    img[2, 0, 0] = 51
    out = to_numpy_image(img)
    assert isinstance(out, np.ndarray) and out.shape == (2, 4, 3) and out.dtype == np.float32
    assert out[1, 3, 0] == 1.0 and out[0, 0, 2] == pytest.approx(0.2)
    assert out.sum() == pytest.approx(1.2)


def test_to_numpy_image_float_is_clamped():
    img = torch.tensor([-0.5, 0.25, 1.5]).reshape(3, 1, 1).expand(3, 2, 2).clone()
    img.requires_grad_(True)  # detached, not an error
    out = to_numpy_image(img)
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [0.0, 0.25, 1.0]
    assert img.min() == -0.5  # the input is not modified


# ------------------------------------------------------------------------------------------------
# plot_matches
# ------------------------------------------------------------------------------------------------


def test_plot_matches_without_predictions():
    src, trg = _pair()
    src_kps = torch.tensor([[1.0, 2.0], [10.0, 15.0], [29.0, 19.0]])
    trg_kps = torch.tensor([[3.0, 4.0], [5.0, 24.0], [15.0, 0.0]])
    ax = plot_matches(src, trg, src_kps, trg_kps, title="pair 0")
    segs = _segments(ax)
    assert len(segs) == 3 and all(c == YELLOW for c, _, _ in segs)
    # target x is shifted by the source width (30): the images sit side by side
    assert segs[1][1] == [10.0, 5.0 + 30] and segs[1][2] == [15.0, 24.0]
    assert len(ax.lines) == 6  # a line and a dot per keypoint, no ground-truth circles
    canvas = ax.images[0].get_array()
    assert canvas.shape == (25, 46, 3)  # max height, summed width
    assert np.allclose(canvas[20:, :30], 1.0)  # below the shorter source: white padding
    assert ax.get_title() == "pair 0" and not ax.axison


def test_plot_matches_colours_by_threshold():
    src, trg = _pair()
    src_kps = torch.tensor([[1.0, 2.0], [10.0, 15.0], [20.0, 5.0]])
    trg_kps = torch.tensor([[3.0, 4.0], [5.0, 20.0], [8.0, 8.0]])
    pred = trg_kps + torch.tensor([[0.0, 0.0], [6.0, 8.0], [3.0, 4.0]])  # errors 0, 10, 5
    ax = plot_matches(src, trg, src_kps, trg_kps, pred_kps=pred, threshold=5.0)
    segs = _segments(ax)
    assert [c for c, _, _ in segs] == [LIME, RED, LIME]  # error 5 == threshold: correct
    assert segs[1][1] == [10.0, 11.0 + 30] and segs[1][2] == [15.0, 28.0]  # drawn to the prediction
    dots = [ln for ln in ax.lines if ln.get_marker() == "o" and len(ln.get_xdata()) == 1]
    assert [to_rgba(d.get_color()) for d in dots] == [LIME, RED, LIME]
    # the ground truth: one hollow-circle line with every target keypoint, shifted by 30 px
    (gt,) = [ln for ln in ax.lines if ln.get_marker() == "o" and len(ln.get_xdata()) == 3]
    assert list(gt.get_xdata()) == [33.0, 35.0, 38.0] and gt.get_markerfacecolor() == "none"


def test_plot_matches_predictions_without_threshold():
    src, trg = _pair()
    kps = torch.tensor([[1.0, 2.0], [4.0, 4.0]])
    ax = plot_matches(src, trg, kps, kps, pred_kps=kps + 100)
    segs = _segments(ax)
    assert [c for c, _, _ in segs] == [YELLOW, YELLOW]  # no threshold: no verdict
    assert segs[0][1] == [1.0, 101.0 + 30]
    assert len(ax.lines) == 2 * 2 + 1  # plus the ground-truth circles


def test_plot_matches_into_given_axes_and_empty():
    src, trg = _pair()
    fig, axes = plt.subplots(1, 2)
    out = plot_matches(src, trg, torch.zeros(0, 2), torch.zeros(0, 2), ax=axes[1])
    assert out is axes[1] and len(fig.axes) == 2
    assert len(out.lines) == 0 and len(out.images) == 1


# ------------------------------------------------------------------------------------------------
# flow_image
# ------------------------------------------------------------------------------------------------


def test_flow_image_shape_dtype_and_invalid_grey():
    flow = torch.randn(2, 6, 7, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(6, 7, dtype=torch.bool)
    valid[2, 3] = valid[0, 0] = False
    img = flow_image(flow, valid)
    assert img.shape == (3, 6, 7) and img.dtype == torch.uint8
    assert img[:, 2, 3].tolist() == [128, 128, 128] and img[:, 0, 0].tolist() == [128, 128, 128]
    assert not (img[:, valid] == 128).all(0).all()  # valid pixels are colour-coded
    assert torch.equal(flow_image(flow, valid[None]), img)  # (1, H, W) mask works too


def test_flow_image_known_colours():
    flow = torch.zeros(2, 2, 2)
    assert flow_image(flow).eq(255).all()  # zero flow: white
    flow[0, 0, 0] = 1.0  # one pixel moves right: the largest motion gets the saturated colour
    img = flow_image(flow)
    assert img[:, 1, 1].tolist() == [255, 255, 255]
    assert img[:, 0, 0].tolist() != [255, 255, 255]
    # invalid pixels do not take part in the normalisation by the largest motion
    big = flow.clone()
    big[:, 1, 1] = 1000.0
    mask = torch.ones(2, 2, dtype=torch.bool)
    mask[1, 1] = False
    assert torch.equal(flow_image(big, mask)[:, 0, 0], img[:, 0, 0])


def test_flow_image_nan_is_not_propagated():
    flow = torch.ones(2, 3, 3)
    flow[:, 1, 1] = float("nan")
    img = flow_image(flow)
    assert img.dtype == torch.uint8 and img[:, 1, 1].tolist() == [255, 255, 255]  # NaN -> zero flow
    assert torch.equal(img[:, 0, 0], img[:, 2, 2])


# ------------------------------------------------------------------------------------------------
# plot_pair_flow
# ------------------------------------------------------------------------------------------------


def test_plot_pair_flow_three_panels():
    src, _ = _pair()
    axes = plot_pair_flow(src, src, torch.zeros(2, 20, 30))
    assert len(axes) == 3 and len(axes[0].figure.axes) == 3
    assert [ax.get_title() for ax in axes] == ["source", "target", "flow (colour = direction)"]
    assert all(len(ax.images) == 1 for ax in axes)
    assert axes[2].images[0].get_array().shape == (20, 30, 3)


def test_plot_pair_flow_four_panels_with_valid_and_titles():
    src, trg = _pair()
    valid = torch.zeros(20, 30, dtype=torch.bool)
    axes = plot_pair_flow(src, trg, torch.randn(2, 20, 30), valid=valid, warped=src)
    assert len(axes) == 4 and axes[3].get_title() == "target warped to source"
    # every pixel invalid: the flow panel is uniformly grey (128 / 255)
    assert np.allclose(axes[2].images[0].get_array(), 128 / 255)
    titled = plot_pair_flow(src, trg, torch.zeros(2, 20, 30), titles=["a", "b", "c"])
    assert [ax.get_title() for ax in titled] == ["a", "b", "c"]


def test_plot_pair_flow_into_given_axes():
    src, _ = _pair()
    _, axes = plt.subplots(2, 3)
    row = axes[1]
    out = plot_pair_flow(src, src, torch.zeros(2, 20, 30), axes=row)
    assert out is row
    assert [len(ax.images) for ax in axes.flat] == [0, 0, 0, 1, 1, 1]


def test_live_loss_plot_draws_each_key_once_available():
    from corrlib.viz import LiveLossPlot

    plot = LiveLossPlot(keys=("loss", "epe_px"), title="t")
    plot([{"step": 1, "loss": 2.0}])
    assert [ln.get_label() for ln in plot.ax.lines] == ["loss"]
    plot([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "epe_px": 3.0}])
    assert [ln.get_label() for ln in plot.ax.lines] == ["loss", "epe_px"]
    assert list(plot.ax.lines[0].get_xdata()) == [1, 2] and plot.show() is plot.fig


def test_plot_box_matches_draws_one_pair_of_boxes_per_match():
    from corrlib.viz import plot_box_matches

    a, b = torch.rand(3, 20, 30), torch.rand(3, 25, 40)
    boxes = torch.tensor([[1.0, 2.0, 10.0, 12.0], [5.0, 5.0, 20.0, 15.0]])
    ax = plot_box_matches(a, b, boxes, boxes + 3, scores=torch.tensor([0.5, 0.25]), title="t")
    assert len(ax.patches) == 4 and len(ax.texts) == 2 and ax.get_title() == "t"
    plt.close(ax.figure)
