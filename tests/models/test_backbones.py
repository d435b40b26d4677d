"""Tests of corrlib.models.backbones (taps, frozen weights, weight sources, offline fallback) and
of the ``backbone-*`` methods of corrlib.eval.

Shapes of the large torchvision models are checked on the ``meta`` device (no memory, no
initialisation), so every test stays fast; nothing here touches the network.
"""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from corrlib import eval as ev
from corrlib.methods import BackboneMethod
from corrlib.models import backbones as bbs
from corrlib.models.backbones import (
    BACKBONES,
    DEFAULT_TAPS,
    TAPS,
    Backbone,
    OfflineWeights,
    PretrainedWeightsNotFoundError,
    backbone,
    load_offline_weights,
)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A torch hub cache without any file; downloads fail as they do offline."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "hub"


# ---------------------------------------------------------------------------------- taps


@pytest.mark.parametrize("name", BACKBONES)
def test_every_tap_has_its_stride_and_channels(name):
    taps = tuple(TAPS[name])
    with torch.device("meta"):  # shapes only: no initialisation, no memory
        bb = backbone(name, weights="none", taps=taps)
        out = bb(torch.empty(2, 3, 64, 96))
    assert bb.taps == taps and list(out) == list(taps)
    for tap, (stride, channels) in TAPS[name].items():
        assert bb.strides[tap] == stride and bb.channels[tap] == channels
        assert out[tap].shape == (2, channels, 64 // stride, 96 // stride)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vgg16", {"conv4_3": (8, 512)}),
        ("resnet18", {"layer3": (16, 256), "layer4": (32, 512)}),
        ("resnet101", {"layer3": (16, 1024), "layer4": (32, 2048)}),
        ("offline", {"block3": (8, 128)}),
    ],
)
def test_default_taps(name, expected):
    with torch.device("meta"):
        bb = backbone(name, weights="none")
    assert bb.taps == DEFAULT_TAPS[name] == tuple(expected)
    assert {t: (bb.strides[t], bb.channels[t]) for t in bb.taps} == expected


def test_real_forward_small_input():
    torch.manual_seed(0)
    bb = backbone("resnet18", weights="none", taps=("layer3", "layer4"))
    out = bb(torch.rand(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "layer3": (1, 256, 4, 4),
        "layer4": (1, 512, 2, 2),
    }
    assert all(torch.isfinite(v).all() for v in out.values())


def test_odd_input_sizes_round_up():
    with torch.device("meta"):
        bb = backbone("resnet18", weights="none", taps=("layer3", "layer4"))
        odd = bb(torch.empty(1, 3, 70, 45))  # h = ceil(H / stride)
    assert odd["layer3"].shape[-2:] == (5, 3) and odd["layer4"].shape[-2:] == (3, 2)
    small = backbone("offline", weights="none")(torch.rand(1, 3, 33, 17))
    assert small["block3"].shape == (1, 128, 5, 3)


def test_only_the_stages_up_to_the_deepest_tap_are_kept():
    with torch.device("meta"):
        bb = backbone("resnet50", weights="none", taps=("layer2",))
    assert list(bb.stages) == ["stem", "layer1", "layer2"]


def test_taps_are_returned_in_forward_order():
    with torch.device("meta"):
        bb = backbone("resnet18", weights="none", taps=["layer4", "layer2"])
    assert bb.taps == ("layer2", "layer4")


def test_imagenet_normalisation_is_inside():
    bb = backbone("offline", weights="none", taps=("block1",))
    grey = torch.tensor(bbs.IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    first = bb.stages["block1"][0]
    out = first((grey - bb.mean) / bb.std)
    torch.testing.assert_close(
        out, first.bias.view(1, -1, 1, 1).expand_as(out)
    )  # zero input to the conv
    assert "mean" not in bb.state_dict()  # not a weight


# ------------------------------------------------------------------------- frozen, concat


def test_batch_norm_frozen_and_no_grads_by_default():
    with torch.device("meta"):
        bb = backbone("resnet34", weights="none")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    assert not bb.trainable and not any(p.requires_grad for p in bb.parameters())
    assert not bb.training


def test_not_trainable_gives_no_graph_and_trainable_gives_grads():
    x = torch.rand(1, 3, 32, 32)
    frozen = backbone("offline", weights="none")
    assert not frozen(x)["block3"].requires_grad
    bb = backbone("offline", weights="none", trainable=True)
    bb(x)["block3"].sum().backward()
    assert all(p.grad is not None for p in bb.parameters())


def test_trainable_resnet_keeps_batch_norm_frozen():
    with torch.device("meta"):
        bb = backbone("resnet18", weights="none", trainable=True)
    assert bb.trainable
    bn = [m for m in bb.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert bn and all(not list(m.parameters()) for m in bn)  # statistics and affine are buffers


@pytest.mark.parametrize(
    ("name", "taps", "channels", "size"),
    [
        ("resnet101", ("layer3", "layer4"), 1024 + 2048, (4, 6)),
        ("vgg16", ("conv3_3", "conv4_3", "conv5_3"), 256 + 512 + 512, (16, 24)),
        ("resnet18", ("layer4",), 512, (2, 3)),
    ],
)
def test_concat_shapes(name, taps, channels, size):
    with torch.device("meta"):
        bb = backbone(name, weights="none", taps=taps, concat=True)
        out = bb(torch.empty(2, 3, 64, 96))
    assert out.shape == (2, channels, *size) and bb.out_channels == channels
    assert bb.out_stride == TAPS[name][taps[0]][0]


def test_concat_upsamples_later_taps():
    bb = backbone("offline", weights="none", taps=("block2", "block3"), concat=True)
    x = torch.rand(1, 3, 32, 32)
    cat = bb(x)
    bb.concat = False
    sep = bb(x)
    torch.testing.assert_close(cat[:, :64], sep["block2"])
    up = torch.nn.functional.interpolate(
        sep["block3"], size=(8, 8), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(cat[:, 64:], up)


# -------------------------------------------------------------------------------- errors


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"Unknown value 'resnet152' for argument name"):
        backbone("resnet152")
    with pytest.raises(ValueError, match=r"Unknown value 'pretrained' for argument weights"):
        backbone("resnet18", weights="pretrained")
    with pytest.raises(ValueError, match=r"Unknown value 'conv4_3' for argument taps.*layer1"):
        backbone("resnet18", weights="none", taps=("conv4_3",))
    with pytest.raises(ValueError, match=r"no ImageNet weights"):
        backbone("offline", weights="imagenet")
    bb = backbone("offline", weights="none")
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, H, W\)"):
        bb(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"float in \[0, 1\].*uint8"):
        bb(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_imagenet_missing_is_a_clear_error(empty_hub):
    with pytest.raises(PretrainedWeightsNotFoundError) as info:
        backbone("resnet101", weights="imagenet")
    msg = str(info.value)
    assert "ImageNet" in msg and "imagenet" in msg.lower()
    assert (
        "resnet101-63fe2227.pth" in msg
        and "https://download.pytorch.org/models/resnet101-63fe2227.pth" in msg
    )
    assert str(empty_hub / "checkpoints") in msg and "URLError" in msg


def test_imagenet_without_download_names_the_cache(empty_hub):
    with pytest.raises(PretrainedWeightsNotFoundError, match=r"allow_download=False") as info:
        backbone("vgg16", weights="imagenet", allow_download=False)
    assert "vgg16-397923af.pth" in str(info.value) and str(empty_hub) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


@pytest.fixture(scope="module")
def resnet18_state():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def _cache(tmp_path, monkeypatch, state):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = bbs.imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(state, path)


def test_imagenet_cached_file_is_used(tmp_path, monkeypatch, resnet18_state, recwarn):
    _cache(tmp_path, monkeypatch, resnet18_state)
    bb = backbone("resnet18", weights="auto", taps=("layer1",))  # cached: no fallback, no warning
    assert bb.weights_source == "imagenet (torchvision ResNet18_Weights.IMAGENET1K_V1)"
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    torch.testing.assert_close(
        bb.stages["layer1"][0].conv1.weight, resnet18_state["layer1.0.conv1.weight"]
    )
    torch.testing.assert_close(bb.stages["stem"][1].running_var, resnet18_state["bn1.running_var"])


def test_imagenet_cached_file_is_loaded_strictly(tmp_path, monkeypatch, resnet18_state):
    _cache(tmp_path, monkeypatch, {**resnet18_state, "extra.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match=r"Unexpected key"):
        backbone("resnet18", weights="imagenet")


# ------------------------------------------------------------------------------ fallback


def test_auto_falls_back_loudly(empty_hub, capsys):
    with pytest.warns(UserWarning, match=r"ImageNet weights for resnet101 are ABSENT") as rec:
        bb = backbone("resnet101", weights="auto")
    msg = str(rec[0].message)
    assert "OFFLINE FALLBACK" in msg and "offline" in msg and "PCK@0.05/0.1/0.15" in msg
    assert bb.arch == bbs.FALLBACK == "offline"
    assert bb.weights_source.startswith("offline fallback: ")
    assert "OFFLINE FALLBACK" in capsys.readouterr().out  # the banner
    out = bb(torch.rand(1, 3, 32, 32))
    assert list(out) == list(bb.taps) == ["block3"]


def test_auto_fallback_keeps_concat(empty_hub):
    with pytest.warns(UserWarning, match=r"OFFLINE FALLBACK"):
        bb = backbone("resnet50", weights="auto", concat=True)
    assert bb(torch.rand(1, 3, 32, 32)).shape == (1, bb.out_channels, 4, 4)


def test_random_weights_are_never_called_pretrained():
    bb = backbone("offline", weights="none")
    assert bb.weights_source == "random init (NOT pretrained)"
    with torch.device("meta"):
        assert backbone("resnet50", weights="none").weights_source == "random init (NOT pretrained)"


# ------------------------------------------------------------------------ offline weights


def test_offline_weights_file_is_small_and_loads_strictly():
    entry = OfflineWeights.SYNTHETIC_UCN_V1
    assert entry.path.is_file() and entry.path.stat().st_size < 3 * 2**20
    net, meta = load_offline_weights()
    assert not net.training
    for key in ("arch", "script", "seed", "steps", "data", "date", "pf_willow", "train_seconds"):
        assert key in meta
    assert "PF-WILLOW" not in meta["data"] and meta["script"] == entry.value.script
    assert meta["pf_willow"]["PCK@0.1"] == pytest.approx(
        entry.value.metrics["pf-willow PCK@0.1"], abs=1e-3
    )
    bb = backbone("offline")
    assert bb.weights_source.startswith("offline fallback: OfflineWeights.SYNTHETIC_UCN_V1")
    torch.testing.assert_close(bb.stages["block1"][0].weight, net.block1[0].weight)


def test_offline_weights_wrong_keys_are_refused(tmp_path):
    from corrlib.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(OfflineWeights.SYNTHETIC_UCN_V1.path)
    state["model"]["block9.weight"] = torch.zeros(1)
    save_checkpoint(tmp_path / "w.pt", state)
    with pytest.raises(RuntimeError, match=r"Unexpected key"):
        load_offline_weights(path=tmp_path / "w.pt")


def test_offline_weights_changed_file_is_detected(tmp_path, monkeypatch):
    monkeypatch.setattr(bbs, "_WEIGHTS_DIR", tmp_path)
    (tmp_path / OfflineWeights.SYNTHETIC_UCN_V1.value.file).write_bytes(b"not the file")
    with pytest.raises(ValueError, match=r"SHA-256"):
        load_offline_weights()


def test_explicit_offline_weights_for_a_torchvision_name():
    bb = backbone("resnet101", weights="offline")
    assert bb.arch == "offline" and bb.weights_source.startswith("offline fallback: ")


# ------------------------------------------------------------------------- eval methods


def test_backbone_methods_are_registered():
    assert {f"backbone-{n}" for n in BACKBONES} <= set(ev.available_methods())


@pytest.fixture(scope="module")
def shifted_photo():
    from skimage import data

    big = torch.from_numpy(data.astronaut()).permute(2, 0, 1)  # (3, 512, 512) uint8
    src, trg = big[:, 40:168, 150:278], big[:, 24:152, 134:262]  # trg = src shifted by (16, 16)
    g = torch.arange(3, 6) * 16.0 + 7.5  # keypoints well inside both crops
    kps = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    return src, trg, kps


def test_backbone_method_recovers_a_translation(shifted_photo):
    src, trg, kps = shifted_photo
    m = ev.get_method("backbone-offline", max_side=128)
    assert m.name == "backbone-offline@128" and m.stride == 8
    pred = m.match(src, trg, kps)
    err = (pred - (kps + 16)).abs().max(dim=1).values
    assert err.median() <= 2.0 and (err <= 4.0).float().mean() >= 0.8


def test_backbone_method_caches_and_maps_to_original_pixels(shifted_photo, monkeypatch):
    src, _, kps = shifted_photo
    m = BackboneMethod(
        "offline", max_side=64, matcher="argmax"
    )  # half size: cells of 16 original pixels
    calls = []
    real = m._describe_image
    monkeypatch.setattr(m, "_describe_image", lambda img: calls.append(1) or real(img))
    for _ in range(3):
        pred = m.match(src, src, kps, src_key="a", trg_key="a")
    assert len(calls) == 1
    feat, grid = m.describe(src, "a")
    assert feat.shape == (128, 8, 8) and grid.step == (16.0, 16.0) and grid.origin == (7.5, 7.5)
    torch.testing.assert_close(
        pred, kps
    )  # keypoints on cell centres match themselves, in original pixels


def test_backbone_method_flow_and_errors(shifted_photo):
    src, trg, _ = shifted_photo
    m = BackboneMethod("offline", max_side=128)
    flow = m.flow(src, trg, src_key="s", trg_key="t")
    assert flow.shape == (2, 128, 128)
    assert flow[:, 40:90, 40:90].median() == pytest.approx(16.0, abs=2.0)
    with pytest.raises(ValueError, match=r"src_img must have 3 channels"):
        m.match(torch.rand(1, 32, 32), torch.rand(3, 32, 32), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"max_side"):
        BackboneMethod("offline", max_side=4)
    with pytest.raises(TypeError, match=r"Backbone"):
        BackboneMethod(model=torch.nn.Conv2d(3, 3, 1))


def test_backbone_method_on_a_custom_model():
    model = Backbone(
        backbone("offline", weights="none").stages,
        ("block2",),
        arch="offline",
        specs=TAPS["offline"],
    )
    m = BackboneMethod(model=model, max_side=32)
    assert m.tap == "block2" and m.stride == 4
    assert m.describe(torch.rand(3, 32, 48))[0].shape == (
        64,
        5,
        8,
    )  # (20, 32) pixels: sides multiples of 4


def test_googlenet_equals_torchvisions_imagenet_forward(tmp_path, monkeypatch):
    """Our GoogLeNet stages, given an ImageNet-format file, compute what torchvision's GoogLeNet
    built as its ImageNet weights are (``transform_input=True``) computes at ``inception4a``."""
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.GoogLeNet(aux_logits=True, transform_input=True, init_weights=True)
    for m in ref.modules():  # non-trivial statistics, so the frozen copies are checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = bbs.imagenet_weights_path("googlenet")
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    bb = backbone("googlenet", weights="imagenet", taps=("inception3b", "inception4a"))
    assert bb.weights_source == "imagenet (torchvision GoogLeNet_Weights.IMAGENET1K_V1)"
    seen = {}
    ref.inception4a.register_forward_hook(lambda m, i, o: seen.setdefault("4a", o))
    ref.inception3b.register_forward_hook(lambda m, i, o: seen.setdefault("3b", o))
    x = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        mean = torch.tensor(bbs.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(bbs.IMAGENET_STD).view(1, 3, 1, 1)
        ref.eval()((x - mean) / std)  # torchvision's input: ImageNet-normalised
        out = bb(x)
    torch.testing.assert_close(out["inception3b"], seen["3b"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["inception4a"], seen["4a"], rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())
