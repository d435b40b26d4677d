"""Spatial Transformer Networks: a localisation net, a grid generator and a sampler.

A spatial transformer (Jaderberg, Simonyan, Zisserman, Kavukcuoglu, *Spatial Transformer
Networks*, NeurIPS 2015, Sec. 3) warps its input by a transformation it predicts from that
input: the **localisation net** regresses parameters ``theta`` (Sec. 3.1), the **grid generator**
turns them into a sampling grid (Sec. 3.2) and the **sampler** reads the input there with a
bilinear kernel (Sec. 3.3). Everything is differentiable, so the module is trained by the
loss of the network it sits in, with no supervision of ``theta``.

Convention: ``theta`` maps *output* coordinates to *input* coordinates (backward warping), in
normalised coordinates with ``align_corners=False`` (see :mod:`corrlib.geometry`). The families
(:data:`STN_KINDS`, the paper's Aff / Proj / TPS):

* ``"affine"``: 6 parameters, the rows of the ``2 x 3`` matrix; identity ``(1, 0, 0, 0, 1, 0)``.
* ``"projective"``: 8 parameters ``h11 .. h32`` of a homography with ``h33 = 1``; identity
  ``(1, 0, 0, 0, 1, 0, 0, 0)``.
* ``"tps"``: ``2 K`` parameters, the offsets (x, y) of the *input* points of ``K`` control points
  placed on a regular lattice over ``[-1, 1]^2`` of the output (:func:`tps_lattice`; the paper
  uses 16 points, a 4x4 lattice); identity all zeros. The TPS grid is linear in those points, so
  the module precomputes the basis once (:func:`tps_basis`) and a grid costs one matrix product.

The final layer of every localisation net starts at the identity transform (zero weights, bias =
identity parameters; the paper's Appendix A), so an untrained transformer passes its input
through unchanged. A consequence worth knowing: at that initialisation only the last layer
receives a gradient (the zero weights block it); after the first update the rest follow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from corrlib._check import check_choice, check_int, check_shape
from corrlib.geometry import (
    _DEFAULT_LATTICE,
    _size2,
    affine_grid,
    homography_grid,
    pixel_grid,
    pixel_to_normalized,
    tps_basis,
    tps_grid,
    tps_lattice,
)

__all__ = [
    "PHOTOMETRIC_NORMS",
    "STCNN",
    "STN_KINDS",
    "DigitCNN",
    "LocalisationNet",
    "PairAligner",
    "SpatialTransformer",
    "align_pair",
    "digit_cnn",
    "identity_params",
    "n_params",
    "photometric_loss",
    "spatial_transform",
    "st_cnn",
    "tps_basis",
    "tps_lattice",
    "transform_grid",
]

#: Transformation families of a spatial transformer (the paper's Aff, Proj and TPS).
STN_KINDS = ("affine", "projective", "tps")
#: Norms of :func:`photometric_loss`.
PHOTOMETRIC_NORMS = ("l2", "l1")


# --------------------------------------------------------------------------------------------
# parameters and grids
# --------------------------------------------------------------------------------------------


def n_params(kind: str, *, tps_lattice_size: int = _DEFAULT_LATTICE) -> int:
    """Number of parameters of ``kind``: 6 (affine), 8 (projective) or ``2 k^2`` (tps)."""
    check_choice(kind, "kind", STN_KINDS)
    return {"affine": 6, "projective": 8}.get(kind, 2 * tps_lattice_size**2)


def identity_params(kind: str, *, tps_lattice_size: int = _DEFAULT_LATTICE) -> torch.Tensor:
    """The parameters ``(P,)`` of the identity transform of ``kind``.

    Example:
        >>> identity_params("projective")
        tensor([1., 0., 0., 0., 1., 0., 0., 0.])
    """
    check_choice(kind, "kind", STN_KINDS)
    if kind == "tps":
        return torch.zeros(n_params(kind, tps_lattice_size=tps_lattice_size))
    return torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0] + [0.0, 0.0] * (kind == "projective"))


def _check_params(params: torch.Tensor, kind: str, ctrl: torch.Tensor | None) -> int:
    check_choice(kind, "kind", STN_KINDS)
    if kind == "tps":
        if ctrl is None:
            raise ValueError(
                "Argument ctrl (K, 2) is required for kind 'tps' (e.g. tps_lattice(4))."
            )
        k = check_shape(ctrl, ("K", 2), "ctrl")["K"]
        return check_shape(params, ("B", 2 * k), "params")["B"]
    return check_shape(params, ("B", n_params(kind)), "params")["B"]


def transform_grid(
    params: torch.Tensor, kind: str, size, *, ctrl: torch.Tensor | None = None
) -> torch.Tensor:
    """The grid generator: parameters ``(B, P)`` -> sampling grid ``(B, H, W, 2)``.

    ``kind`` in :data:`STN_KINDS`; ``size`` the output ``(H, W)`` (or an int); ``ctrl (K, 2)`` the
    TPS control points (``params`` then holds their ``2 K`` offsets, flattened (x, y) per point).
    Grids are normalised coordinates of the input, ``align_corners=False``, built with
    :func:`corrlib.geometry.affine_grid`, :func:`~corrlib.geometry.homography_grid` and
    :func:`~corrlib.geometry.tps_grid` (the slow, exact reference: :class:`SpatialTransformer`
    uses :func:`tps_basis` instead).

    Example:
        >>> grid = transform_grid(identity_params("affine")[None], "affine", (2, 2))
        >>> grid[0, 0, 0]  # pixel (0, 0) of a 2x2 output reads normalised (-0.5, -0.5)
        tensor([-0.5000, -0.5000])
    """
    b = _check_params(params, kind, ctrl)
    size = _size2(size)
    if kind == "affine":
        return affine_grid(params.reshape(b, 2, 3), size)
    if kind == "projective":
        h = torch.cat((params, params.new_ones(b, 1)), dim=1).reshape(b, 3, 3)
        return homography_grid(h, size)
    c = ctrl.to(params).expand(b, -1, -1).contiguous()
    return tps_grid(c, c + params.reshape(b, -1, 2), size)


def spatial_transform(
    x: torch.Tensor, params: torch.Tensor, kind: str, size, *, ctrl: torch.Tensor | None = None
) -> torch.Tensor:
    """Warp ``x (B, C, Hi, Wi)`` by ``params (B, P)`` of ``kind`` into ``(B, C, H, W)``.

    The sampler of the paper (Sec. 3.3): bilinear, zero outside the input. See
    :func:`transform_grid` for the parameters.

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> theta = torch.tensor([[1.0, 0.0, 0.5, 0.0, 1.0, 0.0]])  # read 1 px to the right
        >>> spatial_transform(x, theta, "affine", (4, 4))[0, 0, 0]
        tensor([1., 2., 3., 0.])
    """
    b = check_shape(x, ("B", "C", "Hi", "Wi"), "x")["B"]
    check_shape(params, (b, "P"), "params")
    grid = transform_grid(params, kind, size, ctrl=ctrl)
    return F.grid_sample(
        x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )


# --------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------


def _conv_pool_size(size: int, kernels) -> int:
    for k in kernels:
        size = (size - k + 1) // 2
    return size


class LocalisationNet(nn.Module):
    """CNN regressing transformation parameters: ``x (B, C, S, S)`` -> ``(B, P)``.

    conv 5x5 -> max-pool 2 -> ReLU -> conv 5x5 -> max-pool 2 -> ReLU -> FC -> ReLU -> FC (our
    CPU-sized reading of the paper's ST-CNN localisation net: two conv layers with 20 filters and
    a 50-unit FC layer). The last layer starts at ``identity``: zero weights, bias = identity.
    """

    def __init__(
        self,
        identity: torch.Tensor,
        *,
        in_channels: int = 1,
        in_size: int = 28,
        channels=(20, 20),
        hidden: int = 50,
    ):
        super().__init__()
        check_shape(identity, ("P",), "identity")
        check_int(in_channels, "in_channels", 1)
        check_int(hidden, "hidden", 1)
        side = _conv_pool_size(check_int(in_size, "in_size", 1), (5, 5))
        if side < 1:
            raise ValueError(
                f"Argument in_size must be >= 16 for two 5x5 conv + 2x2 pool stages, got {in_size}."
            )
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 5), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.Flatten(), nn.Linear(c2 * side * side, hidden), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.head = nn.Linear(hidden, identity.numel())
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SpatialTransformer(nn.Module):
    """A spatial transformer: ``forward(x (B, C, S, S)) -> (warped (B, C, H, W), params (B, P))``.

    Args:
        kind: one of :data:`STN_KINDS`; out_size: output ``(H, W)`` or an int.
        in_channels, in_size: the input the localisation net expects (square, ``S = in_size``).
        tps_lattice_size: ``k`` of the ``k x k`` TPS control lattice (16 points for ``k = 4``).
        loc_channels, loc_hidden: the localisation net's widths.
        loc_in_channels: channels the localisation net reads (default ``in_channels``); set it
            and pass ``loc_input`` to :meth:`forward` to predict the warp from another tensor
            (e.g. a concatenated pair, :class:`PairAligner`).

    Example:
        >>> st = SpatialTransformer("tps", 28)
        >>> x = torch.rand(2, 1, 28, 28)
        >>> warped, params = st(x)
        >>> warped.shape, params.shape, torch.allclose(warped, x, atol=1e-5)  # identity at init
        (torch.Size([2, 1, 28, 28]), torch.Size([2, 32]), True)
    """

    def __init__(
        self,
        kind: str,
        out_size,
        *,
        in_channels: int = 1,
        in_size: int = 28,
        tps_lattice_size: int = _DEFAULT_LATTICE,
        loc_channels=(20, 20),
        loc_hidden: int = 50,
        loc_in_channels: int | None = None,
    ):
        super().__init__()
        self.kind = check_choice(kind, "kind", STN_KINDS)
        self.out_size = _size2(out_size)
        self.in_size = check_int(in_size, "in_size", 1)
        identity = identity_params(
            kind, tps_lattice_size=check_int(tps_lattice_size, "tps_lattice_size", 2)
        )
        self.register_buffer("identity", identity, persistent=False)
        self.loc = LocalisationNet(
            identity,
            in_channels=loc_in_channels or in_channels,
            in_size=in_size,
            channels=loc_channels,
            hidden=loc_hidden,
        )
        if kind == "tps":
            ctrl = tps_lattice(tps_lattice_size, dtype=torch.float64)
            self.register_buffer("ctrl", ctrl.float(), persistent=False)
            self.register_buffer(
                "tps_basis", tps_basis(ctrl, self.out_size).float(), persistent=False
            )
        base = pixel_to_normalized(pixel_grid(self.out_size, dtype=torch.float64), self.out_size)
        self.register_buffer("base_grid", base.float(), persistent=False)  # (H, W, 2) identity grid

    @property
    def identity_params(self) -> torch.Tensor:
        """``(P,)`` parameters of the identity transform."""
        return self.identity

    def grid(self, params: torch.Tensor) -> torch.Tensor:
        """Sampling grid ``(B, H, W, 2)`` of ``params (B, P)`` (same as :func:`transform_grid`)."""
        b = check_shape(params, ("B", self.identity.numel()), "params")["B"]
        if self.kind == "tps":
            # identity grid + the spline of the offsets: exact identity at zero offsets
            offsets = params.reshape(b, -1, 2)
            flat = torch.einsum("pk,bkc->bpc", self.tps_basis, offsets)
            return self.base_grid + flat.reshape(b, *self.out_size, 2)
        return transform_grid(params, self.kind, self.out_size)

    def forward(
        self, x: torch.Tensor, loc_input: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = check_shape(x, ("B", "C", "H", "W"), "x")["B"]
        s = self.in_size
        if loc_input is None:
            check_shape(x, (b, "C", s, s), "x")
        else:
            check_shape(loc_input, (b, "C", s, s), "loc_input")
        params = self.loc(x if loc_input is None else loc_input)
        grid = self.grid(params)
        warped = F.grid_sample(
            x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return warped, params


class DigitCNN(nn.Module):
    """The paper's CNN baseline for distorted MNIST: ``x (B, C, S, S)`` -> logits
    ``(B, n_classes)``.

    conv 9x9 -> ReLU -> max-pool 2 -> conv 7x7 -> ReLU -> max-pool 2 -> FC (three weight layers and
    two max-pooling layers, Sec. 4.1 and Appendix A; the filter counts are ours, sized for a CPU).
    Input ``S >= 36`` gives a >= 2x2 map before the FC; 28 gives 2x2 and 42 gives 5x5.
    """

    def __init__(
        self, *, in_channels: int = 1, in_size: int = 28, channels=(32, 32), n_classes: int = 10
    ):
        super().__init__()
        side = _conv_pool_size(check_int(in_size, "in_size", 1), (9, 7))
        if side < 1:
            raise ValueError(
                "Argument in_size must be >= 26 for the 9x9 and 7x7 conv + pool stages, got "
                f"{in_size}."
            )
        c1, c2 = channels
        self.in_size = in_size
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c1, 9), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 7), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * side * side, check_int(n_classes, "n_classes", 2)),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, ("B", "C", self.in_size, self.in_size), "x")
        return self.net(x)


class STCNN(nn.Module):
    """A :class:`SpatialTransformer` in front of a :class:`DigitCNN`: ``x (B, 1, S, S)`` -> logits.

    The transformer maps the ``in_size`` input to an ``out_size`` image the CNN classifies (an
    RTS digit on a 42x42 canvas can be zoomed into a 28x28 output). :meth:`transform` returns
    the transformed images and parameters, for figures.
    """

    def __init__(
        self,
        kind: str,
        *,
        in_size: int = 28,
        out_size: int = 28,
        cnn_channels=(32, 32),
        loc_channels=(20, 20),
        loc_hidden: int = 50,
        tps_lattice_size: int = _DEFAULT_LATTICE,
    ):
        super().__init__()
        self.kind = check_choice(kind, "kind", STN_KINDS)
        self.st = SpatialTransformer(
            kind,
            out_size,
            in_size=in_size,
            tps_lattice_size=tps_lattice_size,
            loc_channels=loc_channels,
            loc_hidden=loc_hidden,
        )
        self.cnn = DigitCNN(in_size=out_size, channels=cnn_channels)

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(warped (B, 1, out, out), params (B, P))``."""
        return self.st(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn(self.st(x)[0])


def digit_cnn(*, in_size: int = 28, channels=(32, 32)) -> DigitCNN:
    """The CNN baseline (:class:`DigitCNN`) for ``in_size`` x ``in_size`` digits."""
    return DigitCNN(in_size=in_size, channels=channels)


def st_cnn(
    kind: str,
    *,
    in_size: int = 28,
    out_size: int = 28,
    cnn_channels=(32, 32),
    loc_channels=(20, 20),
    loc_hidden: int = 50,
    tps_lattice_size: int = _DEFAULT_LATTICE,
) -> STCNN:
    """ST-CNN of ``kind`` (:data:`STN_KINDS`): a spatial transformer, then :class:`DigitCNN`.

    Example:
        >>> st_cnn("affine", in_size=42)(torch.rand(2, 1, 42, 42)).shape
        torch.Size([2, 10])
    """
    return STCNN(
        kind,
        in_size=in_size,
        out_size=out_size,
        cnn_channels=cnn_channels,
        loc_channels=loc_channels,
        loc_hidden=loc_hidden,
        tps_lattice_size=tps_lattice_size,
    )


# --------------------------------------------------------------------------------------------
# aligning one image to another: the link to correspondence
# --------------------------------------------------------------------------------------------


class PairAligner(nn.Module):
    """A transformer that aligns ``src`` to ``trg``: ``forward(src, trg) -> (warped_src, params)``.

    The localisation net reads the pair concatenated along channels (``2 C`` channels) and
    predicts the transform that warps ``src (B, C, S, S)`` onto ``trg (B, C, S, S)``; trained by a
    photometric loss (:func:`photometric_loss`) between the warped ``src`` and ``trg``, it learns
    geometric matching without any correspondence labels (the idea Rocco et al., CVPR 2017
    develop into a full matching architecture). ``params`` map ``trg`` coordinates to ``src``
    coordinates (backward warping: ``warped_src(p) = src(T(p))``).
    """

    def __init__(
        self,
        kind: str = "affine",
        size: int = 28,
        *,
        in_channels: int = 1,
        tps_lattice_size: int = _DEFAULT_LATTICE,
        loc_channels=(20, 20),
        loc_hidden: int = 50,
    ):
        super().__init__()
        self.kind = check_choice(kind, "kind", STN_KINDS)
        self.size = check_int(size, "size", 16)
        self.st = SpatialTransformer(
            kind, size, in_channels=in_channels, in_size=size, tps_lattice_size=tps_lattice_size,
            loc_channels=loc_channels, loc_hidden=loc_hidden, loc_in_channels=2 * in_channels,
        )  # fmt: skip

    def forward(self, src: torch.Tensor, trg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_shape(src, ("B", "C", self.size, self.size), "src")
        check_shape(trg, tuple(src.shape), "trg")
        return self.st(src, loc_input=torch.cat((src, trg), dim=1))


def photometric_loss(warped: torch.Tensor, trg: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """Mean ``(warped - trg)^2`` (``"l2"``) or ``|warped - trg|`` (``"l1"``) over ``(B, C, H, W)``.

    Example:
        >>> photometric_loss(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), "l1")
        tensor(1.)
    """
    check_shape(warped, ("B", "C", "H", "W"), "warped")
    check_shape(trg, tuple(warped.shape), "trg")
    check_choice(norm, "norm", PHOTOMETRIC_NORMS)
    diff = warped - trg
    return (diff * diff).mean() if norm == "l2" else diff.abs().mean()


def align_pair(
    src: torch.Tensor, trg: torch.Tensor, kind: str = "affine", *, model: PairAligner | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp ``src (B, C, S, S)`` onto ``trg (B, C, S, S)`` with a :class:`PairAligner` of ``kind``.

    Returns ``(warped_src (B, C, S, S), params (B, P))``, run without gradients in eval mode.
    ``model=None`` builds an untrained aligner, which is the identity (``warped_src == src``):
    train one first (``corrlib.recipes.stn.train_pair_aligner``) and pass it as ``model``.

    Example:
        >>> src, trg = torch.rand(1, 1, 28, 28), torch.rand(1, 1, 28, 28)
        >>> warped, params = align_pair(src, trg, "affine")
        >>> torch.allclose(warped, src, atol=1e-5), params.shape
        (True, torch.Size([1, 6]))
    """
    dims = check_shape(src, ("B", "C", "S", "S"), "src")
    check_shape(trg, tuple(src.shape), "trg")
    check_choice(kind, "kind", STN_KINDS)
    if model is None:
        model = PairAligner(kind, dims["S"], in_channels=dims["C"]).to(src.device)
    elif model.kind != kind:
        raise ValueError(f"Argument model is a '{model.kind}' aligner but kind is '{kind}'.")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(src, trg)
    finally:
        model.train(was_training)
