"""Interactive correspondence explorer for JupyterLab: click a source point, see its matches.

:class:`CorrespondenceExplorer` shows an image pair side by side. A click on the source image (or
the choice of a ground-truth keypoint) sends that point through every method given; the target
shows each method's match (one colour per method, its error to the ground truth in the legend
when the point is an annotated keypoint), the ground-truth match, and the selected method's
*score map* (cosine similarity of the point's descriptor with every target cell) as a heat map.
Dropdowns choose the pair and the method whose score map is shown; a method's name carries its
resolution (``daisy@160``), so a resolution is chosen by choosing the method.

With the ``ipympl`` backend (``%matplotlib widget``; a pip package with a prebuilt JupyterLab
extension, no server extension) a click on the source image queries that point. With the default
inline backend the figure is redrawn into an output widget and points are chosen with the
keypoint slider or :meth:`CorrespondenceExplorer.click`. Descriptors are cached per image by the
methods, so after the first query of a pair a click costs one match per method and one redraw;
:attr:`CorrespondenceExplorer.last_latency_s` holds the click-to-redraw time.

Conventions: pixels, 0-based, ``(x, y)``; images ``(3, H, W)`` uint8 as the datasets give them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch

from corrlib.eval import get_method
from corrlib.methods import CorrespondenceMethod
from corrlib.methods.base import DescriptorMethod
from corrlib.viz import to_numpy_image

__all__ = ["CorrespondenceExplorer"]

#: One colour per method (matplotlib's tab10 without its grey), cycled.
METHOD_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
)
#: A click within this many pixels of an annotated source keypoint selects that keypoint.
SNAP_PX = 6.0


class CorrespondenceExplorer:
    """Click a point on the source image and see where every method sends it.

    Args:
        pairs: a dataset of pairs (``len`` and ``[i]`` giving dicts with ``src_img``,
            ``trg_img`` (3, H, W) and optionally ``src_kps``/``trg_kps`` (N, 2) pixels and
            ``src_name``/``trg_name``), e.g. :class:`corrlib.data.PFWillow`, or a list of them.
        methods: the methods compared: :class:`~corrlib.methods.CorrespondenceMethod` objects,
            registered names (built with defaults) or a ``{label: method}`` mapping.
        pair: the pair shown first.
        heat: the method whose score map is drawn (None: the first that has one).
        figsize: the figure's size in inches.

    Example:
        >>> from corrlib.data import PFWillow
        >>> ex = CorrespondenceExplorer(PFWillow(root), ["identity", get_method("daisy",
        ...     max_side=160)])                                     # doctest: +SKIP
        >>> ex.widget()                                             # doctest: +SKIP
    """

    def __init__(
        self,
        pairs,
        methods,
        *,
        pair: int = 0,
        heat: str | None = None,
        figsize: tuple[float, float] = (11.0, 4.6),
    ):
        if len(pairs) == 0:
            raise ValueError("CorrespondenceExplorer: the pair list is empty.")
        self.pairs = pairs
        self.methods = self._methods(methods)
        with_map = [n for n, m in self.methods.items() if isinstance(m, DescriptorMethod)]
        if heat is not None and heat not in self.methods:
            raise ValueError(f"heat={heat!r} is not one of the methods {list(self.methods)}.")
        self.heat = heat if heat is not None else (with_map[0] if with_map else None)
        self.pair_index = self._check_pair(pair)
        self.figsize = figsize
        self.point: torch.Tensor | None = None
        self.keypoint: int | None = None
        self.matches: dict[str, torch.Tensor] = {}
        self.last_latency_s: float | None = None
        self._item: dict | None = None
        self._fig = None
        self._image = None  # the figure as a PNG image widget (non-interactive backends)
        self._slider = None
        self._readout = None  # the query and every match as text (ipywidgets HTML)

    # -------------------------------------------------------------------------------- state

    @staticmethod
    def _methods(methods) -> dict[str, CorrespondenceMethod]:
        items = methods.items() if isinstance(methods, Mapping) else ((None, m) for m in methods)
        out: dict[str, CorrespondenceMethod] = {}
        for label, m in items:
            m = get_method(m) if isinstance(m, str) else m
            if not isinstance(m, CorrespondenceMethod):
                raise TypeError(
                    f"CorrespondenceExplorer: a method must be a CorrespondenceMethod or a "
                    f"registered name, got {type(m).__name__}."
                )
            out[label or m.name] = m
        if not out:
            raise ValueError("CorrespondenceExplorer: give at least one method.")
        return out

    def _check_pair(self, index: int) -> int:
        if not isinstance(index, int) or not 0 <= index < len(self.pairs):
            raise ValueError(f"pair must be an int in [0, {len(self.pairs) - 1}], got {index!r}.")
        return index

    @property
    def item(self) -> dict:
        """The current pair (loaded once per selection)."""
        if self._item is None:
            self._item = self.pairs[self.pair_index]
        return self._item

    def _keys(self) -> tuple:
        it = self.item
        return it.get("src_name"), it.get("trg_name")

    def select_pair(self, index: int) -> None:
        """Show pair ``index``; the query point is cleared."""
        self.pair_index, self._item = self._check_pair(index), None
        self.point, self.keypoint, self.matches = None, None, {}
        if self._slider is not None:
            n = len(self.item.get("src_kps", ()))
            self._slider.max = max(n - 1, 0)
        self.redraw()

    def query(self, x: float, y: float) -> dict[str, torch.Tensor]:
        """Where each method sends source pixel ``(x, y)``: ``{label: (2,) target pixel}``."""
        it = self.item
        h, w = it["src_img"].shape[-2:]
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            raise ValueError(f"point ({x:g}, {y:g}) lies outside the {w}x{h} (W x H) source.")
        pt = torch.tensor([[float(x), float(y)]])
        sk, tk = self._keys()
        return {
            name: m.match(it["src_img"], it["trg_img"], pt, src_key=sk, trg_key=tk)[0]
            for name, m in self.methods.items()
        }

    def click(self, x: float, y: float) -> dict[str, torch.Tensor]:
        """Query the source point ``(x, y)`` (snapped to an annotated keypoint within
        :data:`SNAP_PX`), redraw, and record the click-to-redraw time in
        :attr:`last_latency_s`. Returns the matches (as :meth:`query`)."""
        t0 = time.perf_counter()
        self.keypoint = None
        kps = self.item.get("src_kps")
        if kps is not None and len(kps):
            d = (kps.float() - torch.tensor([x, y])).norm(dim=1)
            k = int(d.argmin())
            if float(d[k]) <= SNAP_PX:
                self.keypoint = k
                x, y = (float(v) for v in kps[k])
        self.point = torch.tensor([float(x), float(y)])
        self.matches = self.query(x, y)
        self.redraw()
        self.last_latency_s = time.perf_counter() - t0
        return self.matches

    def select_keypoint(self, k: int) -> dict[str, torch.Tensor]:
        """Query annotated source keypoint ``k`` (0-based)."""
        kps = self.item.get("src_kps")
        if kps is None or not 0 <= k < len(kps):
            raise ValueError(f"keypoint {k} does not exist in this pair.")
        return self.click(float(kps[k, 0]), float(kps[k, 1]))

    # ------------------------------------------------------------------------------- drawing

    def figure(self):
        """The matplotlib figure (created on first use): source left, target right."""
        if self._fig is None:
            import matplotlib.pyplot as plt

            # fixed places (no tight_layout): the source must not move when the first click adds
            # the colour bar and the legend, or a second click would land elsewhere
            with plt.ioff():
                self._fig = plt.figure(figsize=self.figsize)
                self._axes = (
                    self._fig.add_axes((0.01, 0.17, 0.44, 0.74)),
                    self._fig.add_axes((0.48, 0.17, 0.40, 0.74)),
                )
                self._cax = self._fig.add_axes((0.90, 0.17, 0.015, 0.74))
            if not _live_backend():
                # not kept by pyplot: a later plt.show() in the notebook must not show it again
                plt.close(self._fig)
            self._colorbar = None
            self._fig.canvas.mpl_connect("button_press_event", self._on_press)
            self.redraw()
        return self._fig

    def _on_press(self, event) -> None:
        if event.inaxes is self._axes[0] and event.xdata is not None:
            self.click(float(event.xdata), float(event.ydata))

    def redraw(self) -> None:
        """Draw the pair, the query point, every method's match and the score map."""
        if self._fig is None:
            return
        it = self.item
        ax_s, ax_t = self._axes
        self._cax.clear()
        self._cax.set_visible(False)
        self._colorbar = None
        ax_s.clear()
        ax_t.clear()
        ax_s.imshow(to_numpy_image(it["src_img"]))
        ax_t.imshow(to_numpy_image(it["trg_img"]))
        src_kps, trg_kps = it.get("src_kps"), it.get("trg_kps")
        if src_kps is not None and len(src_kps):
            ax_s.plot(src_kps[:, 0], src_kps[:, 1], "o", ms=4, mfc="none", mec="w", mew=1.0)
        ax_s.set_title(
            f"source: click a point (pair {self.pair_index} of {len(self.pairs)})", fontsize=10
        )
        title = "target"
        if self.point is not None:
            px, py = (float(v) for v in self.point)
            ax_s.plot(px, py, "+", color="#d62728", ms=16, mew=2.5)
            ax_s.plot(px, py, "o", color="#d62728", ms=10, mfc="none", mew=1.5)
            if self.heat is not None:
                m = self.methods[self.heat]
                sk, tk = self._keys()
                scores, grid = m.score_map(
                    it["src_img"], it["trg_img"], self.point, src_key=sk, trg_key=tk
                )
                h, w = scores.shape
                (ox, oy), (sx, sy) = grid.origin, grid.step
                extent = (ox - sx / 2, ox + sx * (w - 0.5), oy + sy * (h - 0.5), oy - sy / 2)
                im = ax_t.imshow(  # the map's own range: contrast where the peaks are
                    scores.numpy(), cmap="magma", alpha=0.6, extent=extent
                )
                ax_t.set_xlim(-0.5, it["trg_img"].shape[-1] - 0.5)
                ax_t.set_ylim(it["trg_img"].shape[-2] - 0.5, -0.5)
                self._cax.set_visible(True)
                self._colorbar = self._fig.colorbar(im, cax=self._cax)
                self._colorbar.set_label(f"cosine similarity ({self.heat})", fontsize=9)
                title = f"target: score map of {self.heat} and every method's match"
            gt = None
            if self.keypoint is not None and trg_kps is not None:
                gt = trg_kps[self.keypoint].float()
                ax_t.plot(gt[0], gt[1], "*", color="#2ca02c", ms=16, mec="k", label="ground truth")
            for i, (name, p) in enumerate(self.matches.items()):
                err = "" if gt is None else f" ({float((p - gt).norm()):.1f} px off)"
                ax_t.plot(
                    float(p[0]),
                    float(p[1]),
                    "X",
                    color=METHOD_COLOURS[i % len(METHOD_COLOURS)],
                    ms=10,
                    mec="w",
                    label=f"{name}{err}",
                )
            ax_t.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.04), ncol=2)
        ax_t.set_title(title, fontsize=10)
        for ax in (ax_s, ax_t):
            ax.set_xticks([])
            ax.set_yticks([])
        self._fig.canvas.draw_idle()
        if self._image is not None:
            # the figure as PNG bytes in an Image widget: an Output widget cleared with
            # clear_output(wait=True) and given a figure stalls headless runs (papermill/nbclient
            # then waits for the cell until its timeout; measured with nbclient 0.11)
            import io

            buf = io.BytesIO()
            self._fig.savefig(buf, format="png", dpi=self._fig.dpi)
            self._image.value = buf.getvalue()
        if self._readout is not None:
            self._readout.value = self.readout()

    def readout(self) -> str:
        """The query point and every method's match as one line of text (pixels, ``(x, y)``),
        shown under the figure: the numbers behind the markers, for reading them off (and
        for the browser test, which checks them after a click)."""
        if self.point is None:
            return "query: none yet (click a point on the source image)"
        parts = [f"query ({float(self.point[0]):.1f}, {float(self.point[1]):.1f})"]
        parts += [f"{n} ({float(p[0]):.1f}, {float(p[1]):.1f})" for n, p in self.matches.items()]
        return " &rarr; ".join(parts[:1]) + " &rarr; " + " &middot; ".join(parts[1:])

    def widget(self):
        """The explorer as an ipywidgets box: pair and score-map dropdowns, a keypoint slider,
        and the figure (the live canvas with ``%matplotlib widget``, else a redrawn image)."""
        import ipywidgets as w

        fig = self.figure()
        live = _live_backend()
        pair = w.Dropdown(
            options=[(self._pair_label(i), i) for i in range(len(self.pairs))],
            value=self.pair_index,
            description="pair",
        )
        heat = w.Dropdown(
            options=[n for n, m in self.methods.items() if isinstance(m, DescriptorMethod)],
            value=self.heat,
            description="score map",
        )
        n_kps = len(self.item.get("src_kps", ()))
        self._slider = w.IntSlider(value=0, min=0, max=max(n_kps - 1, 0), description="keypoint")
        pair.observe(lambda c: self.select_pair(c["new"]), names="value")
        heat.observe(lambda c: self._set_heat(c["new"]), names="value")
        self._slider.observe(lambda c: self.select_keypoint(c["new"]), names="value")
        if live:
            canvas = fig.canvas
        else:
            self._image = w.Image(format="png")
            canvas = self._image
            self.redraw()
        self._readout = w.HTML(value=self.readout())
        self._readout.add_class("corrlib-explorer-readout")
        return w.VBox([w.HBox([pair, heat]), self._slider, canvas, self._readout])

    def _set_heat(self, name: str) -> None:
        self.heat = name
        self.redraw()

    def _pair_label(self, i: int) -> str:
        names = getattr(self.pairs, "pairs", None)
        try:
            p = names[i]
            return f"{i}: {p.src_name} -> {p.trg_name}"
        except (TypeError, IndexError, AttributeError):
            return str(i)


def _live_backend() -> bool:
    """True under ipympl (``%matplotlib widget``): the figure is a live, clickable canvas."""
    import matplotlib

    backend = matplotlib.get_backend().lower()
    return "ipympl" in backend or backend.endswith("widget")
