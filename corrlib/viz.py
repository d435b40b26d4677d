"""Matplotlib figures for pairs, matches and flow (small, notebook-friendly)."""

from __future__ import annotations

import torch

__all__ = [
    "STYLE",
    "LiveLossPlot",
    "flow_image",
    "plot_box_matches",
    "plot_matches",
    "plot_pair_flow",
    "to_numpy_image",
    "use_style",
]


#: The series' figure style: sizes and fonts that read at JupyterLab's width.
STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
}


def use_style() -> None:
    """Set the series' matplotlib style (:data:`STYLE`) once, in a notebook's set-up cell."""
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)


def to_numpy_image(img: torch.Tensor):
    """``(3, H, W)`` uint8 or float in [0, 1] -> ``(H, W, 3)`` numpy for ``imshow``."""
    img = img.detach().cpu()
    if img.dtype == torch.uint8:
        img = img.float() / 255
    return img.clamp(0, 1).permute(1, 2, 0).numpy()


def _side_by_side(src_img, trg_img, ax, width: float):
    """Draw both images side by side on ``ax`` (None: a new figure ``width`` inches wide);
    returns ``(ax, x offset of the target image)``."""
    import matplotlib.pyplot as plt
    import numpy as np

    a, b = to_numpy_image(src_img), to_numpy_image(trg_img)
    h = max(a.shape[0], b.shape[0])
    canvas = np.ones((h, a.shape[1] + b.shape[1], 3))
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1] :] = b
    if ax is None:
        _, ax = plt.subplots(figsize=(width, width * h / canvas.shape[1] + 0.3))
    ax.imshow(canvas)
    return ax, a.shape[1]


def plot_matches(
    src_img, trg_img, src_kps, trg_kps, pred_kps=None, threshold=None, ax=None, title=None
):
    """Source and target side by side; lines join ``src_kps`` to ``pred_kps`` (or ``trg_kps``).

    With ``pred_kps`` and ``threshold`` (pixels), a match is green when within the threshold of the
    ground truth ``trg_kps`` and red otherwise; ground truth is drawn as hollow circles.
    Keypoints ``(N, 2)`` in pixels (x, y).
    """
    ax, off = _side_by_side(src_img, trg_img, ax, width=6)
    dst = pred_kps if pred_kps is not None else trg_kps
    for i in range(src_kps.shape[0]):
        color = "yellow"
        if pred_kps is not None and threshold is not None:
            ok = float((pred_kps[i] - trg_kps[i]).norm()) <= threshold
            color = "lime" if ok else "red"
        ax.plot(
            [src_kps[i, 0], dst[i, 0] + off], [src_kps[i, 1], dst[i, 1]], "-", color=color, lw=1
        )
        ax.plot(src_kps[i, 0], src_kps[i, 1], "o", ms=3, color=color)
    if pred_kps is not None:
        ax.plot(trg_kps[:, 0] + off, trg_kps[:, 1], "o", mfc="none", mec="white", ms=6, lw=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def flow_image(flow: torch.Tensor, valid: torch.Tensor | None = None):
    """Colour-code a flow ``(2, H, W)`` with :func:`torchvision.utils.flow_to_image`; invalid ->
    grey."""
    from torchvision.utils import flow_to_image

    f = torch.nan_to_num(flow.detach().float().cpu(), nan=0.0)
    if valid is not None:
        f = torch.where(valid.cpu(), f, torch.zeros_like(f))
    img = flow_to_image(f)
    if valid is not None:
        img = torch.where(valid.cpu(), img, torch.full_like(img, 128))
    return img


def plot_pair_flow(src_img, trg_img, flow, valid=None, warped=None, axes=None, titles=None):
    """Row of panels: source, target, flow colour code (and the target warped to the source)."""
    import matplotlib.pyplot as plt

    panels = [src_img, trg_img, flow_image(flow, valid)] + ([warped] if warped is not None else [])
    names = titles or ["source", "target", "flow (colour = direction)", "target warped to source"]
    if axes is None:
        _, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.4))
    for ax, p, t in zip(axes, panels, names):
        ax.imshow(to_numpy_image(p))
        ax.set_title(t, fontsize=8)
        ax.set_axis_off()
    return axes


class LiveLossPlot:
    """A training ``on_log`` callback that redraws the curves of ``keys`` in place (Jupyter).

    Pass it as ``on_log=`` to :class:`corrlib.train.Trainer` (or a recipe's ``train_*``): each
    new history row updates one figure through an IPython display handle; outside IPython the
    figure is kept and drawn by :meth:`show`. A missing key is skipped until it appears.
    """

    def __init__(
        self, keys=("loss",), title: str | None = None, figsize=(4.5, 2.4), logy: bool = False
    ):
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        self.title, self.figsize, self.logy = title, figsize, logy
        self.fig = None
        self._handle = None

    def __call__(self, history: list[dict]) -> None:
        import matplotlib.pyplot as plt

        if self.fig is None:
            self.fig, self.ax = plt.subplots(figsize=self.figsize)
            plt.close(self.fig)  # drawn through the display handle only
        self.ax.clear()
        for key in self.keys:
            rows = [r for r in history if key in r]
            if rows:
                self.ax.plot([r["step"] for r in rows], [r[key] for r in rows], "-", label=key)
        self.ax.set_xlabel("step")
        if self.logy:
            self.ax.set_yscale("log")
        if self.title:
            self.ax.set_title(self.title)
        if self.ax.lines:
            self.ax.legend(fontsize=7)
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:  # pragma: no cover - IPython ships with Jupyter
            return
        if get_ipython() is None:
            return
        if self._handle is None:
            self._handle = display(self.fig, display_id=True)
        else:
            self._handle.update(self.fig)

    def show(self):
        """The figure (for scripts: ``plot.show().savefig(...)``)."""
        return self.fig


def plot_box_matches(src_img, trg_img, boxes_a, boxes_b, *, scores=None, ax=None, title=None):
    """Source and target side by side; box ``i`` of ``boxes_a`` and box ``i`` of ``boxes_b``
    drawn in the same colour (``(N, 4)`` pixels ``x0, y0, x1, y1`` of each image), with the
    match's score written on the target box when ``scores (N,)`` is given."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ax, off = _side_by_side(src_img, trg_img, ax, width=10)
    colors = plt.get_cmap("tab10")
    for i in range(boxes_a.shape[0]):
        c = colors(i % 10)
        for box, dx in ((boxes_a[i], 0), (boxes_b[i], off)):
            x0, y0, x1, y1 = (float(v) for v in box)
            ax.add_patch(Rectangle((x0 + dx, y0), x1 - x0, y1 - y0, fill=False, ec=c, lw=1.8))
        if scores is not None:
            ax.text(
                float(boxes_b[i, 0]) + off + 2,
                float(boxes_b[i, 1]) + 10,
                f"{float(scores[i]):.2f}",
                color="white",
                fontsize=8,
                bbox={"facecolor": c, "alpha": 0.8, "pad": 1, "lw": 0},
            )
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax
