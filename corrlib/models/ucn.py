"""Universal Correspondence Network (UCN): dense metric features, contrastive loss, hard negatives.

UCN (Choy, Gwak, Savarese, Chandraker, *Universal Correspondence Network*, NeurIPS 2016) is a
fully convolutional network whose L2-normalised features are compared by Euclidean distance: a
point and its true match should be close, any other point at least a margin away. Its pieces:

* a feature extractor (the *trunk*): any module mapping ``(B, 3, H, W)`` images in ``[0, 1]`` to
  ``(B, C, h, w)`` features with a known stride; the default, :class:`UCNTrunk`, is a small
  VGG-like network defined here (the paper uses an ImageNet-pretrained GoogLeNet);
* the convolutional spatial transformer, :class:`ConvSpatialTransformer`: at every location a
  small conv predicts an affine transform of a local ``k x k`` sampling pattern; the features are
  resampled there and combined by a ``k x k`` convolution of stride ``k`` (paper, Sec. 3.4);
* a 1x1 adaptation layer and channel-wise L2 normalisation;
* :func:`correspondence_contrastive_loss` (paper, Eq. 1) on positives from the ground-truth
  correspondences and negatives that are random (:func:`random_negatives`) or mined on the fly
  as nearest neighbours in feature space (paper Sec. 3.3), by one of two rules
  (:data:`MINING_RULES`, :func:`mine_negatives`): ``"hardest-outside"``
  (:func:`mine_hard_negatives`, FCGF-style: the nearest target cell among those farther than the
  radius from the true match, so every point gets a negative; what chapter 03 trains with at
  every preset) or ``"nn-if-far"`` (UCN's rule as the re-implementation notes describe it: the
  nearest neighbour over all target cells, a negative only if it lies farther than the radius,
  else that point has no negative this step; the paper PDF was not read).

Convention: feature *cells* are ``(x, y)`` on the feature grid (0-based, cell centres at
integers); :meth:`UCN.feature_grid` places them in image pixels
(:class:`corrlib.matching.FeatureGrid`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from corrlib._check import check_choice, check_int, check_shape
from corrlib.checkpoint import (
    check_eval_settings,
    finite_metrics,
    load_state_strict,
    read_model_file,
    save_checkpoint,
)
from corrlib.correlation import l2_normalize
from corrlib.geometry import pixel_grid, pixel_to_normalized
from corrlib.matching import FeatureGrid, sample_descriptors
from corrlib.models.backbones import Backbone, backbone

__all__ = [
    "DEFAULT_TRUNK_WIDTHS",
    "MINING_RULES",
    "UCN",
    "UCN_FORMAT",
    "ConvSpatialTransformer",
    "CorrespondenceContrastiveLoss",
    "UCNTrunk",
    "correspondence_contrastive_loss",
    "export_ucn",
    "load_ucn",
    "local_affine_grid",
    "mine_hard_negatives",
    "mine_negatives",
    "random_negatives",
    "sample_local_patches",
]

#: Channels of the stages of the default trunk (stride ``2 ** (len(widths) - 1)``).
DEFAULT_TRUNK_WIDTHS = (32, 64, 96)

#: Hard-negative mining rules of :func:`mine_negatives` (the first is the default).
MINING_RULES = ("hardest-outside", "nn-if-far")

#: Identity of the per-location affine parameters ``(a11, a12, tx, a21, a22, ty)``.
_IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


# ------------------------------------------------------------ convolutional spatial transformer


def local_affine_grid(theta: torch.Tensor, kernel_size: int, dilation: int = 1) -> torch.Tensor:
    """Sampling grid of a ``k x k`` pattern transformed by one affine map per location.

    ``theta (B, 6, h, w)``: per location ``(a11, a12, tx, a21, a22, ty)``, the rows of
    ``[[a11, a12, tx], [a21, a22, ty]]``; offsets and translation are in feature cells. Pattern
    element ``(i, j)`` (row ``i``, column ``j``, ``r = (k - 1) / 2``) of location ``p = (x, y)``
    is sampled at ``p + A @ (dilation * (j - r, i - r)) + t``.

    Returns ``(B, k*h, k*w, 2)`` normalised ``(x, y)`` (``align_corners=False``, for
    :func:`torch.nn.functional.grid_sample` on the ``(h, w)`` map): element ``(i, j)`` of
    location ``(x, y)`` sits at row ``y*k + i``, column ``x*k + j``. The identity ``theta``
    reproduces the taps of a plain ``k x k`` convolution with that ``dilation``.

    Example:
        >>> theta = torch.tensor([1.0, 0, 0, 0, 1, 0]).reshape(1, 6, 1, 1).expand(1, 6, 2, 2)
        >>> local_affine_grid(theta, 3).shape
        torch.Size([1, 6, 6, 2])
    """
    b, h, w = check_shape(theta, ("B", 6, "h", "w"), "theta").values()
    k = check_int(kernel_size, "kernel_size", 1)
    d = check_int(dilation, "dilation", 1)
    r = (k - 1) / 2
    steps = (torch.arange(k, device=theta.device, dtype=theta.dtype) - r) * d
    oy, ox = torch.meshgrid(steps, steps, indexing="ij")  # (k, k): row i, column j
    a = theta.permute(0, 2, 3, 1).reshape(b, h, w, 1, 1, 2, 3)
    ox, oy = ox.reshape(1, 1, 1, k, k), oy.reshape(1, 1, 1, k, k)
    dx = a[..., 0, 0] * ox + a[..., 0, 1] * oy + a[..., 0, 2]  # (B, h, w, k, k)
    dy = a[..., 1, 0] * ox + a[..., 1, 1] * oy + a[..., 1, 2]
    base = pixel_grid((h, w), device=theta.device, dtype=theta.dtype).reshape(1, h, w, 1, 1, 2)
    pos = base + torch.stack((dx, dy), dim=-1)  # (B, h, w, k, k, 2) in cells
    pos = pos.permute(0, 1, 3, 2, 4, 5).reshape(b, h * k, w * k, 2)  # rows y*k+i, columns x*k+j
    return pixel_to_normalized(pos, (h, w))


def sample_local_patches(
    feat: torch.Tensor, theta: torch.Tensor, kernel_size: int, dilation: int = 1
) -> torch.Tensor:
    """Resample ``feat (B, C, h, w)`` at the transformed patterns of :func:`local_affine_grid`.

    ``theta (B, 6, h, w)`` as there. Returns ``(B, C, k*h, k*w)``: the ``k x k`` block at rows
    ``y*k .. y*k+k-1``, columns ``x*k .. x*k+k-1`` is the transformed patch of location
    ``(x, y)``. Bilinear sampling; outside the map the features are zero (as a zero-padded
    convolution sees them).

    Example:
        >>> feat = torch.arange(9.0).reshape(1, 1, 3, 3)
        >>> theta = torch.tensor([1.0, 0, 0, 0, 1, 0]).reshape(1, 6, 1, 1).expand(1, 6, 3, 3)
        >>> patches = sample_local_patches(feat, theta, 3)
        >>> patches[0, 0, 3:6, 3:6].round()  # centre: its 3x3 neighbourhood
        tensor([[0., 1., 2.],
                [3., 4., 5.],
                [6., 7., 8.]])
    """
    b, _, h, w = check_shape(feat, ("B", "C", "h", "w"), "feat").values()
    check_shape(theta, (b, 6, h, w), "theta")
    grid = local_affine_grid(theta, kernel_size, dilation).to(feat.dtype)
    return F.grid_sample(feat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class ConvSpatialTransformer(nn.Module):
    """UCN's convolutional spatial transformer: a per-location affine patch normalisation.

    A ``loc_kernel x loc_kernel`` convolution (the localisation network) predicts
    ``theta (B, 6, h, w)``, initialised to the identity (zero weights, identity bias); the input
    is resampled at the transformed ``k x k`` patterns (:func:`sample_local_patches`, giving
    ``(B, C, k*h, k*w)``) and a ``k x k`` convolution of stride ``k`` turns each patch into one
    output vector, ``(B, out_channels, h, w)``. At the identity this is exactly a zero-padded
    ``k x k`` convolution (``padding = dilation * (k - 1) / 2``) with the same weights. ``k`` must
    be odd. Choy et al., *Universal Correspondence Network*, NeurIPS 2016, Sec. 3.4.

    ``forward(x)`` returns the output; the last ``theta`` is kept in ``self.last_theta``
    (detached) for inspection.

    Example:
        >>> st = ConvSpatialTransformer(8, 16, kernel_size=3)
        >>> st(torch.rand(2, 8, 5, 7)).shape
        torch.Size([2, 16, 5, 7])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        loc_kernel: int = 3,
    ):
        super().__init__()
        for name, v in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("dilation", dilation),
        ):
            check_int(v, name, 1)
        for name, v in (("kernel_size", kernel_size), ("loc_kernel", loc_kernel)):
            if check_int(v, name, 1) % 2 == 0:
                raise ValueError(f"Argument {name} must be odd, got {v}.")
        self.kernel_size, self.dilation = kernel_size, dilation
        self.loc = nn.Conv2d(in_channels, 6, loc_kernel, padding=loc_kernel // 2)
        nn.init.zeros_(self.loc.weight)
        with torch.no_grad():
            self.loc.bias.copy_(torch.tensor(_IDENTITY_THETA))
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=kernel_size)
        self.last_theta: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.loc(x)
        self.last_theta = theta.detach()
        return self.conv(sample_local_patches(x, theta, self.kernel_size, self.dilation))


# ------------------------------------------------------------------------------------ network


class UCNTrunk(nn.Module):
    """The default feature extractor: a small fully convolutional VGG-like network.

    Stages of two ``3x3`` conv + BatchNorm + ReLU layers with ``widths`` channels, separated by
    ``2x2`` max pooling: stride ``2 ** (len(widths) - 1)``. Images ``(B, 3, H, W)`` in ``[0, 1]``
    are standardised inside; the output is ``(B, widths[-1], H // stride, W // stride)`` and cell
    ``(x, y)`` is centred on pixel ``(stride - 1) / 2 + stride * (x, y)`` (pooling windows start at
    the top-left pixel; 3x3 convolutions keep centres).

    Example:
        >>> trunk = UCNTrunk((8, 16))
        >>> trunk(torch.rand(1, 3, 32, 40)).shape, trunk.stride, trunk.out_channels
        (torch.Size([1, 16, 16, 20]), 2, 16)
    """

    def __init__(self, widths: Sequence[int] = DEFAULT_TRUNK_WIDTHS, convs_per_stage: int = 2):
        super().__init__()
        widths = tuple(widths)
        if not widths:
            raise ValueError("Argument widths must hold at least one stage width, got ().")
        for i, c in enumerate(widths):
            check_int(c, f"widths[{i}]", 1)
        check_int(convs_per_stage, "convs_per_stage", 1)
        layers: list[nn.Module] = []
        cin = 3
        for s, c in enumerate(widths):
            if s > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(convs_per_stage):
                layers += [
                    nn.Conv2d(cin, c, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(inplace=True),
                ]
                cin = c
        self.body = nn.Sequential(*layers)
        self.widths, self.convs_per_stage = widths, convs_per_stage
        self.stride = 2 ** (len(widths) - 1)
        self.out_channels = widths[-1]
        self.register_buffer(
            "mean", torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1), persistent=False
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body((images - self.mean) / self.std)


def _probe_trunk(trunk: nn.Module) -> tuple[int, int]:
    """``(channels, stride)`` of a trunk from one forward pass on a 128x128 black image."""
    was_training = trunk.training
    trunk.eval()
    try:
        p = next(trunk.parameters(), None)
        x = torch.zeros(1, 3, 128, 128, device=p.device if p is not None else None)
        with torch.no_grad():
            out = _trunk_features(trunk, x)
    finally:
        trunk.train(was_training)
    return out.shape[1], max(1, round(128 / out.shape[-1]))


def _trunk_features(trunk: nn.Module, images: torch.Tensor) -> torch.Tensor:
    out = trunk(images)
    if isinstance(out, dict):  # a backbone returning {tap: map}: exactly one map is usable here
        if len(out) != 1:
            raise ValueError(
                f"The trunk returned {len(out)} feature maps ({list(out)}); UCN needs one "
                "(B, C, h, w) map: build the backbone with a single tap or with concat=True."
            )
        out = next(iter(out.values()))
    check_shape(out, ("B", "C", "h", "w"), "trunk output")
    return out


class UCN(nn.Module):
    """Universal Correspondence Network: trunk -> [conv spatial transformer] -> 1x1 -> L2 norm.

    Args:
        trunk: feature extractor mapping ``(B, 3, H, W)`` in ``[0, 1]`` to ``(B, C, h, w)``
            (``None``: ``UCNTrunk(trunk_widths)``; a one-tap :class:`~corrlib.models.backbones.
            Backbone`, e.g. the paper's GoogLeNet up to ``inception4a``, is recorded in
            ``config`` and exported with its weights). Its channels and stride are read from
            ``out_channels``/``stride`` attributes, else from ``channels``/``stride`` below, else
            from one probing forward pass. A trunk returning a dict must return one map.
        dim: descriptor dimension ``D``.
        use_st: use :class:`ConvSpatialTransformer`; without it the same place holds a plain
            ``k x k`` convolution (what the transformer is at its identity initialisation), so
            the ablation changes only the per-location transform.
        st_kernel, st_dilation: the ``k`` and dilation of the transformer's sampling pattern.
        trunk_widths: widths of the default trunk (ignored when ``trunk`` is given).
        channels, stride: a custom trunk's output channels and stride, if it lacks attributes.
        variant: a label recorded with the model (the chapter-03 ablation row it trains), or None.

    ``forward(images (B, 3, H, W)) -> (features (B, D, h, w) unit-norm per cell, stride)``.
    ``config`` holds the keyword arguments that rebuild a default-trunk or backbone-trunk model
    (``None`` for any other custom trunk).

    Example:
        >>> model = UCN(dim=16, trunk_widths=(8, 16))
        >>> feat, stride = model(torch.rand(2, 3, 32, 32))
        >>> feat.shape, stride, torch.allclose(feat.norm(dim=1), torch.ones(2, 16, 16))
        (torch.Size([2, 16, 16, 16]), 2, True)
    """

    def __init__(
        self,
        trunk: nn.Module | None = None,
        dim: int = 64,
        use_st: bool = True,
        *,
        st_kernel: int = 3,
        st_dilation: int = 1,
        trunk_widths: Sequence[int] = DEFAULT_TRUNK_WIDTHS,
        channels: int | None = None,
        stride: int | None = None,
        variant: str | None = None,
    ):
        super().__init__()
        self.variant = variant
        #: How the chapter that trained this network evaluated it (``{"max_side": 320}``); set by
        #: :func:`load_ucn` from the exported file, read by the ``ucn`` method as its default.
        self.eval_settings: dict = {}
        check_int(dim, "dim", 1)
        if st_kernel % 2 == 0:
            raise ValueError(f"Argument st_kernel must be odd, got {st_kernel}.")
        self.config = None
        if trunk is None:
            trunk = UCNTrunk(trunk_widths)
            self.config = {
                "dim": dim,
                "use_st": bool(use_st),
                "st_kernel": st_kernel,
                "st_dilation": st_dilation,
                "trunk_widths": list(trunk.widths),
            }
        elif isinstance(trunk, Backbone) and len(trunk.taps) == 1 and not trunk.concat:
            # a corrlib backbone with one tap (the paper's GoogLeNet up to inception4a): its
            # settings are recorded, so an exported model is rebuilt from the file
            tap = trunk.taps[0]
            channels, stride = channels or trunk.channels[tap], stride or trunk.strides[tap]
            self.config = {
                "dim": dim,
                "use_st": bool(use_st),
                "st_kernel": st_kernel,
                "st_dilation": st_dilation,
                "trunk": {"arch": trunk.arch, "tap": tap},
            }
        elif not isinstance(trunk, nn.Module):
            raise TypeError(
                f"Argument trunk must be a torch.nn.Module or None, got {type(trunk).__name__}."
            )
        c = channels or getattr(trunk, "out_channels", None)
        s = stride or getattr(trunk, "stride", None)
        if c is None or s is None:
            pc, ps = _probe_trunk(trunk)
            c, s = c or pc, s or ps
        self.trunk, self.channels, self.stride = trunk, int(c), int(s)
        self.dim, self.use_st = dim, bool(use_st)
        if self.use_st:
            self.st = ConvSpatialTransformer(c, c, st_kernel, st_dilation)
        else:
            self.st = nn.Conv2d(
                c, c, st_kernel, padding=st_dilation * (st_kernel // 2), dilation=st_dilation
            )
        self.adapt = nn.Conv2d(c, dim, 1)
        head = self.st.conv if self.use_st else self.st
        for conv in (head, self.adapt):  # zero biases: an untrained head keeps the trunk's contrast
            nn.init.zeros_(conv.bias)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, int]:
        check_shape(images, ("B", 3, "H", "W"), "images")
        feat = _trunk_features(self.trunk, images)
        feat = self.adapt(F.relu(self.st(feat)))
        return l2_normalize(feat), self.stride

    def feature_grid(self, image_size: tuple[int, int]) -> FeatureGrid:
        """Where the cells of an image of ``image_size=(H, W)`` lie: a :class:`FeatureGrid`.

        Cell ``(x, y)`` is pixel ``(s - 1) / 2 + s * (x, y)`` with ``s = stride``: exact for the
        default trunk (and for any trunk whose windows start at the top-left pixel); for
        ``H, W`` divisible by ``s`` it equals ``FeatureGrid.for_map((H // s, W // s), (H, W))``.

        Example:
            >>> UCN(dim=8, trunk_widths=(8, 8, 8)).feature_grid((128, 96))
            FeatureGrid(origin=(1.5, 1.5), step=(4.0, 4.0))
        """
        h, w = image_size
        if min(h, w) < self.stride:
            raise ValueError(
                f"Argument image_size must be at least the stride {self.stride} on each side, got "
                f"{tuple(image_size)}."
            )
        s = float(self.stride)
        return FeatureGrid(((s - 1) / 2, (s - 1) / 2), (s, s))

    @classmethod
    def from_checkpoint(cls, path) -> UCN:
        """Rebuild a UCN saved by :func:`export_ucn` (default trunk), strict load, eval mode."""
        return load_ucn(path)


#: ``format`` tag of files written by :func:`export_ucn`.
UCN_FORMAT = "corrlib.ucn/1"


def _trunk_weights_source(trunk: nn.Module) -> str:
    """What an exported trunk's weights are: its source, and whether training moved them."""
    source = str(getattr(trunk, "weights_source", "trained with the model"))
    trainable = any(p.requires_grad for p in trunk.parameters())
    if trainable and "fine-tuned" not in source and hasattr(trunk, "weights_source"):
        return f"{source}, fine-tuned with the model"
    return source


def export_ucn(
    path, model: UCN, metrics: dict | None = None, eval_settings: dict | None = None
) -> Path:
    """Save a trained UCN (default trunk) with the settings that rebuild it (:func:`load_ucn`).

    Args:
        path: the file to write (atomically).
        model: a :class:`UCN` with the default trunk (``model.config`` not None).
        metrics: numbers recorded beside the weights.
        eval_settings: how the chapter evaluates it (``{"max_side": 320}``; None:
            ``model.eval_settings``); the ``ucn`` method uses them as its defaults, so
            ``corrlib eval --method ucn --checkpoint FILE`` reproduces the chapter's number.

    Returns:
        The path written. The file holds tensors, numbers and strings only (``weights_only``).
    """
    if not isinstance(model, UCN) or model.config is None:
        raise ValueError(
            "export_ucn saves a UCN with the default trunk or a one-tap corrlib Backbone; another "
            "custom trunk cannot be rebuilt from a file."
        )
    state = {
        "format": UCN_FORMAT,
        "config": dict(model.config),
        "weights_source": _trunk_weights_source(model.trunk),
        "variant": model.variant,
        "model": model.state_dict(),
        "metrics": finite_metrics(metrics),
        "eval": check_eval_settings(
            model.eval_settings if eval_settings is None else eval_settings
        ),
    }
    return save_checkpoint(path, state)


def load_ucn(path) -> UCN:
    """Rebuild and load (strict) a UCN saved by :func:`export_ucn`, in eval mode."""
    state = read_model_file(path, UCN_FORMAT, "an exported UCN")
    config = dict(state["config"])
    try:
        trunk_cfg = config.pop("trunk", None)
        trunk = None
        if trunk_cfg is not None:  # weights come from the file (strict load below)
            trunk = backbone(trunk_cfg["arch"], taps=(trunk_cfg["tap"],), weights="none")
        model = UCN(trunk, **config, variant=state.get("variant"))
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(
            f"{path}: its settings {state['config']!r} do not build a UCN ({e})."
        ) from e
    load_state_strict(model, state["model"], path)
    if isinstance(model.trunk, Backbone):
        model.trunk.weights_source = str(state.get("weights_source", "unknown"))
    model.eval_settings = check_eval_settings(state.get("eval"), path)
    return model.eval()


# ----------------------------------------------------------------------------------------- loss


def correspondence_contrastive_loss(
    f_src: torch.Tensor,
    f_trg: torch.Tensor,
    pos_src_cells: torch.Tensor,
    pos_trg_cells: torch.Tensor,
    neg_src_cells: torch.Tensor,
    neg_trg_cells: torch.Tensor,
    margin: float = 1.0,
    *,
    neg_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """UCN's correspondence contrastive loss (Choy et al., NeurIPS 2016, Eq. 1).

    With ``N`` pairs ``(x_i, x'_i)``, ``s_i = 1`` for a true correspondence and ``0`` otherwise,
    and ``d_i = ||F_src(x_i) - F_trg(x'_i)||_2``::

        L = 1 / (2N) * sum_i [ s_i d_i^2 + (1 - s_i) max(0, m - d_i)^2 ]

    ``f_src (B, D, Hs, Ws)``, ``f_trg (B, D, Ht, Wt)``; ``pos_src_cells``/``pos_trg_cells``
    ``(B, P, 2)`` and ``neg_src_cells``/``neg_trg_cells`` ``(B, Q, 2)``: ``(x, y)`` fractional cells
    of the maps, where descriptors are sampled bilinearly
    (:func:`corrlib.matching.sample_descriptors`, not renormalised); ``N = B * (P + Q)``.
    ``margin`` is ``m`` (with unit-norm features distances lie in ``[0, 2]``). ``neg_valid``
    ``(B, Q)`` bool (None: all): only the negatives marked True enter the sum, and ``N`` counts
    the pairs actually used, ``N = B * P + neg_valid.sum()`` (the mean over used pairs; the
    second output of :func:`mine_negatives` with ``rule="nn-if-far"``, where a point whose
    nearest neighbour lies inside the radius has no negative). Returns a scalar; ``N = 0``
    gives a zero attached to the graph.

    Example:
        >>> f = torch.tensor([[1.0, 0.0]]).T.reshape(1, 2, 1, 1)  # one cell, feature (1, 0)
        >>> # one cell, feature (0, 1): d = sqrt 2
        >>> g = torch.tensor([[0.0, 1.0]]).T.reshape(1, 2, 1, 1)
        >>> c = torch.zeros(1, 1, 2)
        >>> correspondence_contrastive_loss(f, g, c, c, c[:, :0], c[:, :0], margin=2.0)  # (1/2) * 2
        tensor(1.)
    """
    b, d, _, _ = check_shape(f_src, ("B", "D", "Hs", "Ws"), "f_src").values()
    check_shape(f_trg, (b, d, "Ht", "Wt"), "f_trg")
    p = check_shape(pos_src_cells, (b, "P", 2), "pos_src_cells")["P"]
    check_shape(pos_trg_cells, (b, p, 2), "pos_trg_cells")
    q = check_shape(neg_src_cells, (b, "Q", 2), "neg_src_cells")["Q"]
    check_shape(neg_trg_cells, (b, q, 2), "neg_trg_cells")
    if neg_valid is not None:
        check_shape(neg_valid, (b, q), "neg_valid")
        if neg_valid.dtype != torch.bool:
            raise TypeError(f"Argument neg_valid must be a bool tensor, got {neg_valid.dtype}.")
    if margin <= 0:
        raise ValueError(f"Argument margin must be positive, got {margin}.")
    n = b * (p + q) if neg_valid is None else b * p + int(neg_valid.sum())
    if n == 0:
        return (f_src.sum() + f_trg.sum()) * 0.0
    total = f_src.new_zeros(())
    if p:
        a = sample_descriptors(f_src, pos_src_cells.to(f_src.dtype))
        c = sample_descriptors(f_trg, pos_trg_cells.to(f_trg.dtype))
        total = total + (a - c).pow(2).sum(-1).sum()
    if q:
        a = sample_descriptors(f_src, neg_src_cells.to(f_src.dtype))
        c = sample_descriptors(f_trg, neg_trg_cells.to(f_trg.dtype))
        dist = (a - c).pow(2).sum(-1).clamp_min(1e-12).sqrt()  # clamp: finite gradient at d = 0
        hinge = (margin - dist).clamp_min(0).pow(2)
        if neg_valid is not None:
            hinge = hinge.masked_fill(~neg_valid.to(hinge.device), 0.0)
        total = total + hinge.sum()
    return total / (2 * n)


class CorrespondenceContrastiveLoss(nn.Module):
    """Module form of :func:`correspondence_contrastive_loss` with a fixed ``margin``."""

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = margin

    def forward(
        self,
        f_src,
        f_trg,
        pos_src_cells,
        pos_trg_cells,
        neg_src_cells,
        neg_trg_cells,
        neg_valid=None,
    ) -> torch.Tensor:
        return correspondence_contrastive_loss(
            f_src,
            f_trg,
            pos_src_cells,
            pos_trg_cells,
            neg_src_cells,
            neg_trg_cells,
            self.margin,
            neg_valid=neg_valid,
        )


# ------------------------------------------------------------------------------------ negatives


def _cell_table(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """``(h*w, 2)`` integer cells (x, y), row-major (index ``y * w + x``)."""
    return pixel_grid((h, w), device=like.device, dtype=like.dtype).reshape(-1, 2)


def _far_mask(trg_true_cells: torch.Tensor, cells: torch.Tensor, radius: float) -> torch.Tensor:
    """``(B, N, h*w)`` bool: target cell farther than ``radius`` from each true match."""
    d2 = (trg_true_cells[:, :, None, :] - cells[None, None]).pow(2).sum(-1)
    far = d2 > radius * radius
    if far.numel() and not far.any(-1).all():
        bad = (~far.any(-1)).nonzero()[0].tolist()
        raise ValueError(
            f"Argument radius={radius} leaves no target cell farther than it from the true match "
            f"{trg_true_cells[bad[0], bad[1]].tolist()} (batch {bad[0]}, point {bad[1]}); use a "
            "smaller radius."
        )
    return far


@torch.no_grad()
def mine_hard_negatives(
    f_src: torch.Tensor,
    f_trg: torch.Tensor,
    src_cells: torch.Tensor,
    trg_true_cells: torch.Tensor,
    radius: float,
) -> torch.Tensor:
    """Hardest negative of each source point: its feature-space nearest neighbour in the target
    among the target cells farther than ``radius`` from its true match (UCN's on-the-fly mining).

    ``f_src (B, D, Hs, Ws)``, ``f_trg (B, D, Ht, Wt)``; ``src_cells``, ``trg_true_cells``
    ``(B, N, 2)`` ``(x, y)`` fractional cells (the source descriptor is sampled bilinearly).
    ``radius`` is in **target feature cells** (Euclidean; convert pixels with the grid step,
    ``radius_px / grid.step``): a candidate cell ``c`` is allowed iff
    ``||c - trg_true_cells|| > radius``. Distances are squared Euclidean between descriptors
    (for unit-norm features the same ranking as cosine); ties go to the first cell in row-major
    order. Runs under ``torch.no_grad()`` on the current features. Returns ``(B, N, 2)`` integer
    cells (in ``f_trg``'s dtype). Raises ``ValueError`` if some point has no allowed cell.
    Choy et al., *Universal Correspondence Network*, NeurIPS 2016, Sec. 3.3.

    Example:
        >>> f = torch.eye(3).reshape(1, 3, 1, 3)  # three cells with orthogonal codes
        >>> g = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1]]).T.reshape(1, 3, 1, 3)
        >>> src = torch.tensor([[[0.0, 0.0]]])
        >>> mine_hard_negatives(f, g, src, src, radius=0.5)  # cell 1 looks like the source point
        tensor([[[1., 0.]]])
    """
    cells, d2 = _mining_distances(f_src, f_trg, src_cells, trg_true_cells, radius)
    if d2 is None:
        return cells
    far = _far_mask(trg_true_cells.to(cells.dtype), cells, radius)
    idx = d2.masked_fill(~far, float("inf")).argmin(dim=-1)  # (B, N)
    return cells[idx]


def _mining_distances(f_src, f_trg, src_cells, trg_true_cells, radius):
    """Checked inputs -> ``(cells (T, 2), d2 (B, N, T))``; ``(empty (B, 0, 2), None)`` if N = 0."""
    b, d, _, _ = check_shape(f_src, ("B", "D", "Hs", "Ws"), "f_src").values()
    check_shape(f_trg, (b, d, "Ht", "Wt"), "f_trg")
    n = check_shape(src_cells, (b, "N", 2), "src_cells")["N"]
    check_shape(trg_true_cells, (b, n, 2), "trg_true_cells")
    if not radius >= 0:
        raise ValueError(f"Argument radius must be >= 0, got {radius}.")
    ht, wt = f_trg.shape[-2:]
    cells = _cell_table(ht, wt, f_trg)
    if n == 0:
        return f_trg.new_zeros(b, 0, 2), None
    desc = sample_descriptors(f_src.detach(), src_cells.to(f_src.dtype))  # (B, N, D)
    trg = f_trg.detach().flatten(2).transpose(1, 2)  # (B, T, D)
    d2 = (
        desc.pow(2).sum(-1, keepdim=True)
        - 2 * desc @ trg.transpose(1, 2)
        + trg.pow(2).sum(-1)[:, None]
    )
    return cells, d2


@torch.no_grad()
def mine_negatives(
    f_src: torch.Tensor,
    f_trg: torch.Tensor,
    src_cells: torch.Tensor,
    trg_true_cells: torch.Tensor,
    radius: float,
    rule: str = "hardest-outside",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mined negatives of each source point by ``rule`` (:data:`MINING_RULES`), with a mask.

    Inputs, ``radius`` (target feature cells), distances and ties as
    :func:`mine_hard_negatives`. ``rule``:

    * ``"hardest-outside"`` (default; chapter 03 at every preset): the nearest target cell among
      those farther than ``radius`` from the true match (:func:`mine_hard_negatives`); every
      point gets a negative, so ``valid`` is all True. Raises ``ValueError`` if some point has
      no allowed cell.
    * ``"nn-if-far"`` (UCN's rule, Choy et al., NeurIPS 2016, Sec. 3.3, as the
      re-implementation notes state it: "if the nearest neighbour in feature space is more than
      16 pixels away it is considered to be negative"; the paper PDF was not read): the
      feature-space nearest neighbour over **all** target cells; it is a negative iff
      ``||cell - trg_true_cells|| > radius``, otherwise ``valid`` is False (the point is already
      matched correctly and gets no negative; its ``cells`` entry is that nearest neighbour).

    Returns ``(cells (B, N, 2)`` integer cells in ``f_trg``'s dtype, ``valid (B, N)`` bool``)``;
    pass ``valid`` as ``neg_valid`` of :func:`correspondence_contrastive_loss`.

    Example:
        >>> f = torch.eye(3).reshape(1, 3, 1, 3)
        >>> g = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1]]).T.reshape(1, 3, 1, 3)
        >>> src = torch.tensor([[[0.0, 0.0]]])
        >>> mine_negatives(f, g, src, src, radius=0.5, rule="nn-if-far")  # NN is the true cell
        (tensor([[[0., 0.]]]), tensor([[False]]))
        >>> mine_negatives(f, g, src, src, radius=0.5)
        (tensor([[[1., 0.]]]), tensor([[True]]))
    """
    check_choice(rule, "rule", MINING_RULES)
    if rule == "hardest-outside":
        cells = mine_hard_negatives(f_src, f_trg, src_cells, trg_true_cells, radius)
        return cells, torch.ones(cells.shape[:2], dtype=torch.bool, device=cells.device)
    table, d2 = _mining_distances(f_src, f_trg, src_cells, trg_true_cells, radius)
    if d2 is None:
        return table, torch.zeros(table.shape[:2], dtype=torch.bool, device=table.device)
    cells = table[d2.argmin(dim=-1)]  # (B, N, 2): nearest neighbour over every target cell
    true = trg_true_cells.to(device=cells.device, dtype=cells.dtype)
    valid = (cells - true).pow(2).sum(-1) > radius * radius
    return cells, valid


def random_negatives(
    trg_true_cells: torch.Tensor,
    map_size: tuple[int, int],
    radius: float,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random negatives for the ablation: a uniform target cell farther than ``radius`` (cells).

    ``trg_true_cells (B, N, 2)`` ``(x, y)`` cells of the true matches in a target map of
    ``map_size=(h, w)`` cells; each negative is drawn uniformly among the integer cells ``c``
    with ``||c - trg_true_cells|| > radius`` (same rule as :func:`mine_hard_negatives`) by
    rejection sampling with ``generator`` (on the CPU; after 32 rounds the few points left are
    drawn exactly from their allowed cells). Returns ``(B, N, 2)`` integer cells in
    ``trg_true_cells``' dtype. Raises ``ValueError`` if some point has no allowed cell.

    Example:
        >>> true = torch.tensor([[[0.0, 0.0]]])
        >>> random_negatives(true, (1, 2), radius=0.5)  # the only cell farther than 0.5
        tensor([[[1., 0.]]])
    """
    b, n = check_shape(trg_true_cells, ("B", "N", 2), "trg_true_cells").values()
    h, w = map_size
    if min(h, w) <= 0:
        raise ValueError(f"Argument map_size must be positive, got {tuple(map_size)}.")
    if not radius >= 0:
        raise ValueError(f"Argument radius must be >= 0, got {radius}.")
    dtype = (
        trg_true_cells.dtype if trg_true_cells.is_floating_point() else torch.get_default_dtype()
    )
    true = trg_true_cells.detach().cpu().to(dtype)
    cells = _cell_table(h, w, true)
    out = torch.zeros(b, n, 2, dtype=dtype)
    if n == 0:
        return out.to(trg_true_cells.device)
    corners = true.new_tensor([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]])
    far_corner = (
        (true[:, :, None] - corners).pow(2).sum(-1).amax(-1)
    )  # the farthest cell is a corner
    if (far_corner <= radius * radius).any():
        _far_mask(true, cells, radius)  # raises with the offending point
    todo = torch.ones(b, n, dtype=torch.bool)
    for _ in range(32):
        where = todo.nonzero()  # (K, 2)
        if len(where) == 0:
            break
        cand = cells[torch.randint(h * w, (len(where),), generator=generator)]
        ok = (cand - true[todo]).pow(2).sum(-1) > radius * radius
        out[where[ok, 0], where[ok, 1]] = cand[ok]
        todo[where[ok, 0], where[ok, 1]] = False
    if todo.any():  # rare: points whose allowed cells are few
        far = _far_mask(true[todo][None], cells, radius)[0]  # (K, T)
        out[todo] = cells[torch.multinomial(far.double(), 1, generator=generator)[:, 0]]
    return out.to(trg_true_cells.device)
