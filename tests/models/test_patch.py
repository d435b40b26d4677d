"""Tests of corrlib.models.patch: shapes, sign conventions, dense vs patch loops, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corrlib.checkpoint import load_checkpoint, save_checkpoint
from corrlib.color import standardize_images
from corrlib.losses import contrastive_hinge, label_hinge, margin_ranking_hinge
from corrlib.models.patch import (
    DEEPCOMPARE_KINDS,
    OUTPUTS,
    PATCH_FORMAT,
    PATCH_MODELS,
    SPP_LEVELS,
    PatchModel,
    deepcompare,
    deepdesc,
    export_patch_model,
    load_patch_model,
    mccnn_accurate,
    mccnn_fast,
    patch_model,
    spatial_pyramid_pool,
)

NAMES = (
    "mccnn-fast",
    "mccnn-accurate",
    "2ch",
    "2ch-deep",
    "siamese",
    "pseudo-siamese",
    "2ch-2stream",
    "siamese-spp",
    "deepdesc",
)
# small variants of every registry model, for the tests that train or back-propagate
SMALL = {
    "mccnn-fast": {"features": 16},
    "mccnn-accurate": {"features": 16, "fc_units": 32},
    **{name: {"patch_size": 32, "width_mult": 0.125} for name in (*DEEPCOMPARE_KINDS, "deepdesc")},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(n: int, p: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, p, p, generator=g), torch.rand(n, 1, p, p, generator=g)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _small(name: str) -> PatchModel:
    torch.manual_seed(0)
    return patch_model(name, **SMALL[name])


def _input_size(model: PatchModel) -> int:
    return model.patch_size or (model.receptive_field if hasattr(model, "receptive_field") else 32)


# --------------------------------------------------------------------------------------------
# registry, shapes, conventions
# --------------------------------------------------------------------------------------------


def test_registry_names_and_unknown_name():
    assert tuple(PATCH_MODELS) == NAMES
    with pytest.raises(
        ValueError, match=r"Unknown value 'sift' for argument name. Valid values are \{mccnn-fast, "
    ):
        patch_model("sift")
    with pytest.raises(
        ValueError,
        match=r"Unknown value '3ch' for argument kind. Valid values are \{2ch, 2ch-deep, ",
    ):
        deepcompare("3ch")


@pytest.mark.parametrize("name", [n for n in NAMES if not n.startswith("mccnn")])
@pytest.mark.parametrize("p", [32, 64])
def test_output_shape_at_32_and_64(name, p):
    model = patch_model(name, patch_size=p)
    assert model.output in OUTPUTS
    with torch.no_grad():
        out = model(*_pair(2, p))
    assert out.shape == (2,) and torch.isfinite(out).all()


@pytest.mark.parametrize("p", [16, 32, 48, 64])
def test_siamese_spp_any_patch_size(p):
    model = deepcompare("siamese-spp", width_mult=0.25)
    assert model.patch_size is None
    with torch.no_grad():
        assert model(*_pair(3, p)).shape == (3,)


def test_spatial_pyramid_pool_layout():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = spatial_pyramid_pool(x, (1, 2))
    # level 1: the max 15; level 2: the max of each 2x2 quadrant, row-major
    assert torch.equal(out, torch.tensor([[15.0, 5.0, 7.0, 13.0, 15.0]]))
    assert spatial_pyramid_pool(torch.zeros(2, 3, 1, 1)).shape == (
        2,
        3 * sum(n * n for n in SPP_LEVELS),
    )


@pytest.mark.parametrize("name", ["mccnn-fast", "mccnn-accurate"])
def test_mccnn_shapes_at_receptive_field_and_dense(name):
    model = patch_model(name)
    assert model.receptive_field == 9
    with torch.no_grad():
        assert model(*_pair(2, 9)).shape == (2,)
        assert model(*_pair(2, 32)).shape == (2,)  # centre-cropped to 9x9
        f = model.features(torch.rand(2, 1, 20, 30))
    assert f.shape == (2, model.n_features, 12, 22)
    if name == "mccnn-accurate":
        assert model.decision(f, f).shape == (2, 12, 22)
    assert mccnn_fast(layers=5, kernel=5).receptive_field == 21


def test_paper_parameter_count_2ch():
    # C(2->96, 7x7), C(96->192, 5x5), C(192->256, 3x3), F(256->256), F(256->1), with biases
    expected = (
        (2 * 96 * 49 + 96) + (96 * 192 * 25 + 192) + (192 * 256 * 9 + 256) + (256 * 256 + 256) + 257
    )
    assert _n_params(deepcompare("2ch", patch_size=64)) == expected == 979_169


@pytest.mark.parametrize(
    ("kind", "p", "in_features"),
    [
        ("2ch", 64, 256),  # 1x1 x 256
        ("2ch", 32, 1024),  # 2x2 x 256
        ("2ch-deep", 64, 768),  # 2x2 x 192
        ("2ch-deep", 32, 768),
        ("siamese", 64, 512),  # two 1x1 x 256
        ("siamese", 32, 2048),
        ("2ch-2stream", 64, 1536),  # two streams of 2x2 x 192
        ("2ch-2stream", 32, 1536),
        ("siamese-spp", 64, 2 * 256 * 21),
    ],
)
def test_decision_input_size(kind, p, in_features):
    assert deepcompare(kind, patch_size=p).decision[0].in_features == in_features


@pytest.mark.parametrize("kind", [k for k in DEEPCOMPARE_KINDS if k != "siamese-spp"])
def test_paper_towers_unpadded_at_64(kind):
    convs = [
        m
        for m in deepcompare(kind, patch_size=64).towers.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    assert all(c.padding == (0, 0) for c in convs)
    padded = [
        m
        for m in deepcompare(kind, patch_size=32).towers.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    assert padded[0].padding == (0, 0) and padded[-1].padding != (0, 0)  # trailing ones padded


def test_2ch_2stream_centre_and_surround_inputs():
    model = deepcompare("2ch-2stream", patch_size=32, width_mult=0.125)
    seen = {}
    for i, tower in enumerate(model.towers):
        tower.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, inp[0]))
    a, b = _pair(2, 32)
    with torch.no_grad():
        model(a, b)
    x = torch.cat([a - a.mean((2, 3), keepdim=True), b - b.mean((2, 3), keepdim=True)], 1)
    assert torch.allclose(seen[0], x[..., 8:24, 8:24])  # central 16x16 at full resolution
    assert torch.allclose(seen[1], F.avg_pool2d(x, 2))  # the whole patch at half resolution


def test_siamese_towers_shared_or_not():
    assert len(deepcompare("siamese", patch_size=32, width_mult=0.125).towers) == 1
    pseudo = deepcompare("pseudo-siamese", patch_size=32, width_mult=0.125)
    assert len(pseudo.towers) == 2
    assert pseudo.towers[0][0].weight.data_ptr() != pseudo.towers[1][0].weight.data_ptr()


@pytest.mark.parametrize("name", NAMES)
def test_match_score_sign_convention(name):
    model = _small(name).eval()
    a, b = _pair(3, _input_size(model))
    with torch.no_grad():
        out, score = model(a, b), model.match_score(a, b)
    expected = -out if model.output == "distance" else out
    assert torch.equal(score, expected)
    assert type(model).output == model.output  # a class attribute


def test_deepdesc_distance_of_descriptors():
    model = deepdesc(patch_size=32, width_mult=0.25)
    a, b = _pair(4, 32)
    with torch.no_grad():
        da, db = model.describe(a), model.describe(b)
        assert da.shape == (4, 128)
        assert torch.allclose(model(a, b), (da - db).norm(dim=1))
        assert torch.equal(model(a, a), torch.zeros(4))  # identical patches: the best score
    assert deepdesc(dim=16, patch_size=64).describe(torch.rand(2, 1, 64, 64)).shape == (2, 16)


@pytest.mark.parametrize("name", ["2ch-2stream", "siamese", "deepdesc"])
def test_patch_mean_subtraction(name):
    # DeepCompare and DeepDesc subtract each patch's mean: a brightness offset changes nothing
    model = _small(name).eval()
    a, b = _pair(2, 32)
    with torch.no_grad():
        assert torch.allclose(model(a, b), model(a - 0.2, b + 0.1), atol=1e-5)


# --------------------------------------------------------------------------------------------
# MC-CNN: dense evaluation against patch loops
# --------------------------------------------------------------------------------------------


def test_mccnn_fast_dense_features_equal_patch_features():
    torch.manual_seed(0)
    model = mccnn_fast(features=8)
    image = torch.rand(1, 1, 20, 30)
    rf = model.receptive_field
    with torch.no_grad():
        dense = model.features(image)  # (1, 8, 12, 22)
        patches = torch.cat(
            [
                image[..., y : y + rf, x : x + rf]
                for y in range(dense.shape[2])
                for x in range(dense.shape[3])
            ]
        )  # (12 * 22, 1, 9, 9), row-major
        loop = model.features(patches).reshape(12, 22, 8).permute(2, 0, 1)
    assert torch.allclose(dense[0], loop, atol=1e-5)
    assert torch.allclose(dense.norm(dim=1), torch.ones(1, 12, 22), atol=1e-5)


def test_mccnn_fast_forward_is_cosine_of_centre_windows():
    torch.manual_seed(0)
    model = mccnn_fast(features=8)
    a, b = _pair(3, 13)
    with torch.no_grad():
        assert torch.allclose(model(a, b), model(a[..., 2:11, 2:11], b[..., 2:11, 2:11]))
        assert torch.allclose(model(a, a), torch.ones(3))


def test_mccnn_accurate_dense_decision_equals_patch_forward():
    torch.manual_seed(0)
    model = mccnn_accurate(features=8, fc_units=16)
    left, right = torch.rand(1, 1, 20, 30), torch.rand(1, 1, 20, 30)
    d, rf = 3, model.receptive_field
    with torch.no_grad():
        fl, fr = model.features(left), model.features(right)  # (1, 8, 12, 22)
        # disparity d: left cell (x, y) against right cell (x - d, y)
        dense = model.decision(fl[..., d:], fr[..., :-d])[0]  # (12, 19)
        for y in range(dense.shape[0]):
            a = torch.cat(
                [left[..., y : y + rf, x + d : x + d + rf] for x in range(dense.shape[1])]
            )
            b = torch.cat([right[..., y : y + rf, x : x + rf] for x in range(dense.shape[1])])
            assert torch.allclose(dense[y], model(a, b), atol=1e-5)


def test_mccnn_errors():
    model = mccnn_accurate(features=8, fc_units=16)
    with pytest.raises(
        ValueError, match=r"Argument image must be at least 9x9 \(the receptive field\)"
    ):
        model.features(torch.rand(1, 1, 8, 30))
    with pytest.raises(ValueError, match=r"Argument a must hold patches of at least 9 pixels"):
        model(*_pair(1, 7))
    with pytest.raises(ValueError, match=r"Argument f_right must have shape \(1, 8, 12, 22\)"):
        model.decision(torch.rand(1, 8, 12, 22), torch.rand(1, 8, 12, 21))
    with pytest.raises(ValueError, match=r"Argument f_left must have shape \(B, 8, H, W\)"):
        model.decision(torch.rand(1, 4, 12, 22), torch.rand(1, 4, 12, 22))
    with pytest.raises(ValueError, match=r"Argument layers must be an int >= 1, got 0"):
        mccnn_fast(layers=0)


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def test_patch_input_errors():
    model = deepcompare("2ch", patch_size=32, width_mult=0.125)
    with pytest.raises(
        ValueError, match=r"Argument a must have shape \(B, 1, 32, 32\) for this DeepCompare"
    ):
        model(*_pair(1, 64))
    with pytest.raises(
        ValueError, match=r"Argument a must have shape \(B, 1, P, P\); dim 1 should be 1"
    ):
        model(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"Argument b must have shape \(2, 1, 32, 32\)"):
        model(torch.rand(2, 1, 32, 32), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"Argument patch_size must be one of \(32, 64\), got 48"):
        deepcompare("2ch", patch_size=48)
    with pytest.raises(ValueError, match=r"Argument width_mult must be a number > 0, got 0"):
        deepdesc(width_mult=0)
    with pytest.raises(ValueError, match=r"Argument a must hold patches of at least 16 pixels"):
        deepcompare("siamese-spp", width_mult=0.125)(*_pair(1, 12))
    with pytest.raises(ValueError, match=r"Argument patches must have shape \(B, 1, 32, 32\)"):
        deepdesc(patch_size=32).describe(torch.rand(1, 1, 64, 64))


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def _training_loss(model: PatchModel, name: str, a, b, label) -> torch.Tensor:
    """Each model's own loss; pairs 0..7 match (``label``), 8..15 do not."""
    out = model(a, b)
    if name == "mccnn-fast":
        return margin_ranking_hinge(out[label], out[~label])
    if name == "mccnn-accurate":
        return F.binary_cross_entropy_with_logits(out, label.float())
    if name == "deepdesc":
        return contrastive_hinge(out, label)
    return label_hinge(out, label)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    model = _small(name)
    a, b = _pair(4, _input_size(model))
    (model(a, b) * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def _adam_step(params, state, lr=1e-2, betas=(0.9, 0.999), eps=1e-8):
    """One Adam step (Kingma & Ba, 2015), written out: ``torch.optim`` imports torch._dynamo
    on first use, which alone takes longer than this whole test."""
    state["t"] = t = state.get("t", 0) + 1
    with torch.no_grad():
        for i, p in enumerate(params):
            m, v = state.setdefault(i, (torch.zeros_like(p), torch.zeros_like(p)))
            m.mul_(betas[0]).add_(p.grad, alpha=1 - betas[0])
            v.mul_(betas[1]).addcmul_(p.grad, p.grad, value=1 - betas[1])
            m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
            p.sub_(lr * m_hat / (v_hat.sqrt() + eps))


@pytest.mark.parametrize("name", NAMES)
def test_overfits_16_random_pairs(name):
    model = _small(name)
    a, b = _pair(16, _input_size(model))
    label = torch.arange(16) < 8
    params, state = list(model.parameters()), {}
    start = _training_loss(model, name, a, b, label).item()
    for _ in range(100):
        loss = _training_loss(model, name, a, b, label)
        if loss.item() < 0.2 * start:
            break
        model.zero_grad()
        loss.backward()
        _adam_step(params, state)
    assert loss.item() < 0.2 * start


# ------------------------------------------------------------------------------------------------
# trained-model files
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_models_record_their_arch_and_config(name):
    model = _small(name)
    assert model.arch == name
    rebuilt = patch_model(name, **model.config)
    assert rebuilt.arch == name and rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_export_load_round_trip(tmp_path):
    model = _small("deepdesc").eval()
    path = export_patch_model(tmp_path / "dd.pt", model, {"fpr95": 0.25, "bad": float("nan")})
    state = load_checkpoint(path)
    assert (
        state["format"] == PATCH_FORMAT
        and state["arch"] == "deepdesc"
        and state["metrics"] == {"fpr95": 0.25}
    )
    loaded = patch_model("deepdesc", weights=path)
    assert loaded.arch == "deepdesc" and loaded.config == model.config and not loaded.training
    assert loaded.config == {"dim": 128, "patch_size": 32, "width_mult": 0.125}
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.describe(x), model.describe(x))
    assert torch.equal(load_patch_model(path).describe(x), model.describe(x))
    with pytest.raises(ValueError, match=r"dd\.pt holds a 'deepdesc' model, not '2ch'"):
        patch_model("2ch", weights=path)
    with pytest.raises(ValueError, match=r"weights= or model settings, not both"):
        patch_model("deepdesc", weights=path, dim=8)


def test_load_accepts_legacy_files_and_refuses_others(tmp_path):
    model = _small("mccnn-fast").eval()
    legacy = save_checkpoint(
        tmp_path / "old.pt",
        {"arch": "mccnn-fast", "kwargs": dict(model.config), "model": model.state_dict()},
    )
    x = torch.rand(2, 1, 9, 9)
    assert torch.equal(load_patch_model(legacy)(x, x), model(x, x))
    save_checkpoint(tmp_path / "other.pt", {"format": "corrlib.ucn/1", "model": {}})
    with pytest.raises(
        ValueError, match=r"other\.pt is not an exported patch network \(format 'corrlib.ucn/1'"
    ):
        load_patch_model(tmp_path / "other.pt")
    with pytest.raises(TypeError, match="PatchModel"):
        export_patch_model(tmp_path / "x.pt", torch.nn.Linear(2, 2))


def test_load_wrong_shape_weights_names_the_file(tmp_path):
    model = _small("deepdesc")
    path = export_patch_model(tmp_path / "dd.pt", model)
    state = load_checkpoint(path)
    key = next(k for k in state["model"] if k.endswith("weight"))
    state["model"][key] = torch.zeros(1, 1)
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match=r"dd\.pt: the saved model weights do not fit a DeepDesc"):
        patch_model("deepdesc", weights=path)
    state["kwargs"]["dim"] = 0
    save_checkpoint(path, state)
    with pytest.raises(
        ValueError, match=r"dd\.pt: its settings .* do not build a 'deepdesc' network"
    ):
        load_patch_model(path)


# --------------------------------------------------------------------------------------------
# MC-CNN's per-image standardisation (input_norm="image")
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", [mccnn_fast, mccnn_accurate])
def test_mccnn_image_norm_dense_features_equal_patches_of_the_standardised_image(builder):
    torch.manual_seed(0)
    model = builder(features=8, input_norm="image").eval()
    assert model.standardized_patches and model.config["input_norm"] == "image"
    left = 0.2 + 0.5 * torch.rand(1, 1, 20, 30)
    right = 0.1 + 0.3 * torch.rand(1, 1, 20, 30)
    sl, sr = standardize_images(left), standardize_images(right)
    with torch.no_grad():
        fl, fr = model.image_features(left), model.image_features(right)  # (1, 8, 20, 30)
        assert fl.shape == (1, 8, 20, 30)
        # interior pixels: the 9x9 window centred on (x, y) of the standardised image
        xs, ys, d = [6, 10, 20], [5, 9, 14], 2
        a = torch.cat([sl[..., y - 4 : y + 5, x - 4 : x + 5] for x, y in zip(xs, ys)])
        b = torch.cat([sr[..., y - 4 : y + 5, x - d - 4 : x - d + 5] for x, y in zip(xs, ys)])
        dense_l = torch.stack([fl[0, :, y, x] for x, y in zip(xs, ys)])[..., None, None]
        dense_r = torch.stack([fr[0, :, y, x - d] for x, y in zip(xs, ys)])[..., None, None]
        if model.output == "similarity":
            dense = (dense_l * dense_r).sum(1).flatten()
        else:
            dense = model.decision(dense_l, dense_r).flatten()
        torch.testing.assert_close(model(a, b), dense, atol=1e-5, rtol=1e-5)
        # the image's own statistics: an affine change of its intensities changes nothing
        torch.testing.assert_close(model.image_features(0.5 * left + 0.1), fl, atol=1e-4, rtol=0)


def test_mccnn_shift_norm_is_unchanged_and_the_norm_is_checked_and_exported(tmp_path):
    torch.manual_seed(0)
    model = mccnn_fast(features=8).eval()
    assert model.input_norm == "shift" and not model.standardized_patches
    image = torch.rand(1, 1, 20, 30)
    with torch.no_grad():
        padded = F.pad(image, (4,) * 4, mode="replicate")
        assert torch.equal(model.image_features(image), model.features(padded))
        # the shift is 0.5, as the committed lab runs were trained with
        want = torch.nn.functional.normalize(model.tower(padded - 0.5), dim=1)
        torch.testing.assert_close(model.features(padded), want)
    with pytest.raises(ValueError, match="input_norm"):
        mccnn_fast(input_norm="standard")
    std = mccnn_accurate(features=8, fc_units=16, input_norm="image")
    loaded = load_patch_model(export_patch_model(tmp_path / "acc.pt", std))
    assert loaded.input_norm == "image" and loaded.standardized_patches
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_features(image), std.eval().image_features(image))
