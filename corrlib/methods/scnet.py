"""Chapter 04's region matchers as methods: SCNet-A/AG/AG+ and Proposal Flow's NAM and PHM.

Each image is resized to the model's input size (224 x 224 in the paper, both sides: the
aspect ratio changes, as the SCNet code does), its proposals are computed on the original
image (:func:`corrlib.proposals.make_proposals`) and scaled with it; keypoints move by the most
confident proposal match that contains them (:func:`corrlib.models.scnet.transfer_by_proposals`)
and are returned in original target pixels. Per-image work (proposals, trunk maps, box features)
is cached by image key.
"""

from __future__ import annotations

import torch

from corrlib._check import check_choice, check_int
from corrlib.methods.base import (
    FROM_CHECKPOINT,
    CorrespondenceMethod,
    FeatureCache,
    network_input,
    refuse_max_side,
    register_method,
    require_checkpoint,
    setting_from_checkpoint,
)
from corrlib.models.backbones import backbone
from corrlib.models.scnet import (
    VARIANTS,
    SCNet,
    box_descriptors,
    load_scnet,
    proposal_scores,
    transfer_by_proposals,
)
from corrlib.proposals import PROPOSAL_METHODS, make_proposals, scale_boxes

__all__ = ["ProposalFlowMethod", "ProposalMethod", "SCNetMethod", "input_image", "proposals_of"]

#: Proposals of recently seen images, shared by every method (selective search costs about
#: 0.3 s per image; several methods evaluated on one benchmark reuse it).
_PROPOSALS = FeatureCache(1024)


def input_image(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``img (3, H, W)`` (uint8, or float in ``[0, 1]``) resized to ``size (H', W')`` (both
    sides): chapter 04's network input (:func:`corrlib.methods.base.network_input`)."""
    return network_input(img, size=tuple(size))


def proposals_of(img: torch.Tensor, method: str, n: int, key=None) -> torch.Tensor:
    """:func:`corrlib.proposals.make_proposals` of ``img``, cached under ``key`` (an image
    name; None: not cached). Boxes ``(N, 4)`` in original pixels."""
    if key is None:
        return make_proposals(img, method, n)
    return _PROPOSALS.get(
        (key, tuple(img.shape), method, n), lambda: make_proposals(img, method, n)
    )


class ProposalMethod(CorrespondenceMethod):
    """Shared machinery: resize, proposals, caching, keypoint transfer (subclasses score).

    Args:
        input_size: ``(H, W)`` the images are resized to.
        proposals: a proposal method (:data:`corrlib.proposals.PROPOSAL_METHODS`).
        n_proposals: proposals per image.
        cache_size: images whose per-image work is kept.
    """

    def __init__(self, input_size, proposals: str, n_proposals: int, cache_size: int = 128):
        check_choice(proposals, "proposals", PROPOSAL_METHODS)
        check_int(n_proposals, "n_proposals", 1)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.proposals, self.n_proposals = proposals, n_proposals
        self.cache = FeatureCache(cache_size)

    @property
    def _tag(self) -> str:
        return f"{self.input_size[1]}x{self.input_size[0]}"

    def _describe(self, x: torch.Tensor, boxes: torch.Tensor) -> dict:
        raise NotImplementedError

    def image_state(self, img: torch.Tensor, key=None) -> dict:
        """Per-image work (cached under ``key``): ``{"size": (H, W) original, "boxes": (N, 4)
        proposals in input pixels, ...}`` plus the subclass's features."""

        def compute():
            size = (int(img.shape[-2]), int(img.shape[-1]))
            boxes = proposals_of(img, self.proposals, self.n_proposals, key)
            boxes = scale_boxes(boxes, size, self.input_size)
            x = input_image(img, self.input_size)
            return {"size": size, "boxes": boxes, **self._describe(x, boxes)}

        if key is None:
            return compute()
        return self.cache.get((key, self.input_size, self.proposals, self.n_proposals), compute)

    def _score(self, sa: dict, sb: dict) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def region_matches(self, src_img, trg_img, *, src_key=None, trg_key=None) -> dict:
        """The proposals of both images (input pixels) and the score of every match:
        ``{"boxes_a", "boxes_b", "scores" (Na, Nb), "size_a", "size_b"}`` (original sizes)."""
        sa, sb = self.image_state(src_img, src_key), self.image_state(trg_img, trg_key)
        return {
            "boxes_a": sa["boxes"],
            "boxes_b": sb["boxes"],
            "scores": self._score(sa, sb),
            "size_a": sa["size"],
            "size_b": sb["size"],
        }

    def match(self, src_img, trg_img, src_kps, *, src_key=None, trg_key=None):
        r = self.region_matches(src_img, trg_img, src_key=src_key, trg_key=trg_key)
        (ha, wa), (hb, wb) = r["size_a"], r["size_b"]
        h, w = self.input_size
        pts = src_kps.float() * src_kps.new_tensor([w / wa, h / ha])
        out = transfer_by_proposals(pts, r["boxes_a"], r["boxes_b"], r["scores"])
        return out * out.new_tensor([wb / w, hb / h])


class SCNetMethod(ProposalMethod):
    """A trained SCNet (chapter 04) as a keypoint method.

    Args:
        checkpoint: a file of :func:`corrlib.models.scnet.export_scnet`.
        model: an :class:`~corrlib.models.scnet.SCNet` instead of a file.
        proposals: the proposal method (default: the one recorded by the chapter that trained
            it; else ``"ss"``).
        n_proposals: proposals per image (default: recorded; else 1000, the paper's test
            setting).
        variant: the variant the caller expects (the registered ``scnet-a``/``scnet-ag``/
            ``scnet-ag+`` names pass theirs): a file of another variant is refused.
        cache_size: images whose proposals and box features are kept.
        max_side: refused (the CLI's ``--max-side``): SCNet runs at its trained input size.
    """

    def __init__(
        self,
        checkpoint=None,
        *,
        model: SCNet | None = None,
        proposals=FROM_CHECKPOINT,
        n_proposals=FROM_CHECKPOINT,
        variant: str | None = None,
        cache_size: int = 128,
        max_side: int | None = None,
    ):
        refuse_max_side(max_side, "SCNet")
        if variant is not None:
            check_choice(variant, "variant", VARIANTS)
        if model is None:
            model = load_scnet(
                require_checkpoint(checkpoint, f"scnet-{(variant or 'ag').lower()}", "04_scnet")
            )
        if variant is not None and model.variant != variant:
            where = checkpoint if checkpoint is not None else "the model given"
            raise ValueError(
                f"{where} holds an SCNet-{model.variant}, not an SCNet-{variant}; evaluate it "
                f"with --method scnet-{model.variant.lower()}."
            )
        rec = getattr(model, "eval_settings", {})
        notes = []
        settings = {"proposals": proposals, "n_proposals": n_proposals}
        for k, default in (("proposals", "ss"), ("n_proposals", 1000)):
            if settings[k] == FROM_CHECKPOINT and k not in rec:
                settings[k] = default
                notes.append(f"{k}={default} (default: none recorded)")
            else:
                settings[k], note = setting_from_checkpoint(
                    settings[k], k, rec, checkpoint, "04_scnet"
                )
                notes.append(note)
        super().__init__(
            model.input_size, settings["proposals"], settings["n_proposals"], cache_size
        )
        self.model = model.eval()
        self.name = f"scnet-{model.variant.lower()}@{self._tag}"
        source = checkpoint if checkpoint is not None else "an in-memory model"
        self.description = (
            f"SCNet-{model.variant} from {source} (trunk: {model.weights_source}), "
            + ", ".join(notes)
        )

    def _describe(self, x, boxes):
        dev = self.model.device
        b = boxes.to(dev)
        desc = self.model.describe_boxes(self.model.feature_map(x[None].to(dev)), b)
        return {"desc": desc, "boxes_dev": b}

    def _score(self, sa, sb):
        out = self.model.score(sa["desc"], sb["desc"], sa["boxes_dev"], sb["boxes_dev"])
        return out["score"].float().cpu()


class ProposalFlowMethod(ProposalMethod):
    """Proposal Flow's NAM or PHM on fixed box features (untrained SCNet baselines).

    Ham et al., *Proposal Flow*, CVPR 2016: NAM matches boxes by appearance alone; PHM multiplies
    it by the Hough vote of :func:`corrlib.models.scnet.hough_vote` (SCNet-AG at initialisation,
    with fixed features).

    Args:
        matcher: ``"nam"`` or ``"phm"``.
        features: ``"hog"`` (Proposal Flow's) or ``"trunk"`` (the offline trunk's ``block3``,
            or ``trunk=``'s).
        input_size: ``(H, W)`` the images are resized to.
        proposals: the proposal method.
        n_proposals: proposals per image.
        trunk: a backbone name for ``features="trunk"`` (``"offline"``; ``"vgg16"`` with its
            ImageNet weights when cached, else the offline fallback, announced).
        cache_size: images whose proposals and box features are kept.
        max_side: ``input_size = (max_side, max_side)`` (the CLI's ``--max-side``).
    """

    def __init__(
        self,
        matcher: str = "phm",
        features: str = "hog",
        *,
        input_size=(224, 224),
        proposals: str = "ss",
        n_proposals: int = 1000,
        trunk: str = "offline",
        cache_size: int = 128,
        max_side: int | None = None,
    ):
        check_choice(matcher, "matcher", ("nam", "phm"))
        if max_side is not None:  # the CLI's --max-side: a square input of that side
            check_int(max_side, "max_side", 16)
            input_size = (max_side, max_side)
        check_choice(features, "features", ("hog", "trunk"))
        super().__init__(input_size, proposals, n_proposals, cache_size)
        self.matcher, self.features = matcher, features
        self.trunk = backbone(trunk) if features == "trunk" else None
        self.name = f"{matcher}-{features}@{self._tag}"
        what = "HOG" if features == "hog" else f"trunk ({self.trunk.weights_source})"
        self.description = (
            f"Proposal Flow {matcher.upper()} on {what} box features, {proposals} x "
            f"{n_proposals} proposals at {self._tag}"
        )

    def _describe(self, x, boxes):
        return {"desc": box_descriptors(x, boxes, self.features, trunk=self.trunk)}

    def _score(self, sa, sb):
        return proposal_scores(
            sa["desc"],
            sb["desc"],
            sa["boxes"],
            sb["boxes"],
            self.input_size,
            self.input_size,
            vote=self.matcher == "phm",
        )


for _variant in VARIANTS:
    register_method(
        f"scnet-{_variant.lower()}",
        lambda _v=_variant, **kw: SCNetMethod(**kw, variant=_v),
    )
register_method("nam", lambda **kw: ProposalFlowMethod("nam", **kw))
register_method("phm", lambda **kw: ProposalFlowMethod("phm", **kw))
