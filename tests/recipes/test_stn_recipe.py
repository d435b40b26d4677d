"""Tests of the chapter-02 recipe: digit data, CNN / ST-CNN training, test error, pair aligner."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from corrlib.recipes import get_config
from corrlib.recipes import stn as recipe
from tests.recipes._seeding import initial_params, same_state

pytestmark = pytest.mark.usefixtures("one_thread", "warm_optimizer")


@pytest.fixture(scope="module")
def cfg():
    cfg = get_config("02_stn", "smoke")
    return cfg.replace(
        n_train=64,
        n_test=40,
        batch_size=16,
        cnn_channels=(8, 8),
        loc_channels=(4, 8),
        loc_hidden=16,
    )


def _write_idx(path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def data(tmp_path_factory, cfg):
    """Fake MNIST (test files only, as offline): bars whose orientation is the class."""
    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    n = 150
    labels = np.arange(n) % 10
    images = np.zeros((n, 28, 28), np.uint8)
    for i, c in enumerate(labels):
        images[i, 4 + c : 10 + c, 6:22] = 255  # a bar whose height is the class
    _write_idx(raw / "t10k-images-idx3-ubyte", images)
    _write_idx(raw / "t10k-labels-idx1-ubyte", labels)
    return recipe.build_digit_data(cfg, root, seed=0)


def test_build_digit_data(data, cfg):
    assert (data.info["n_train"], data.info["n_test"]) == (
        64,
        30,
    )  # 150 split 120 / 30, then the first 64 train
    assert data.info["official_split"] is False and "OFFLINE FALLBACK" in data.info["warning"]
    assert set(data.test_sets) == set(cfg.distortions)
    x, y = data.test_sets["RTS"].tensors()
    assert x.shape == (30, 1, 42, 42) and y.shape == (30,)
    with pytest.raises(ValueError, match=r"Unknown value 'X' for argument cfg\.distortions"):
        recipe.build_digit_data(
            cfg.replace(distortions=("R", "X")),
            data.train.info["source"].removesuffix("/MNIST/raw"),
        )


@pytest.mark.parametrize(
    ("name", "kind"),
    [("cnn", "RTS"), ("st-cnn-affine", "RTS"), ("st-cnn-projective", "P"), ("st-cnn-tps", "E")],
)
def test_train_and_test_error(name, kind, cfg, data):
    model, history, seconds = recipe.train_digit_classifier(
        name, kind, cfg, data, device="cpu", steps=3
    )
    assert not model.training and history[-1]["step"] == 3 and seconds > 0
    assert all(np.isfinite(r["loss"]) for r in history if "loss" in r)
    err = recipe.test_error(model, data, kind)
    assert 0.0 <= err <= 1.0


def test_training_resumes_exactly(cfg, data, tmp_path):
    ckpt = tmp_path / "st.pt"
    full, _, _ = recipe.train_digit_classifier(
        "st-cnn-affine", "R", cfg, data, device="cpu", steps=4
    )
    _, history, _ = recipe.train_digit_classifier(
        "st-cnn-affine", "R", cfg, data, ckpt_path=ckpt, device="cpu", steps=4, stop_after=2
    )
    assert history[-1]["step"] == 2  # interrupted after 2 of 4 steps
    resumed, history, _ = recipe.train_digit_classifier(
        "st-cnn-affine", "R", cfg, data, ckpt_path=ckpt, device="cpu", steps=4
    )
    assert history[-1]["step"] == 4
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_st_cnn_learns_where_cnn_input_is_shifted(cfg, data):
    """A short run on the bar digits: the loss goes down (the ST-CNN trains end to end)."""
    _, history, _ = recipe.train_digit_classifier(
        "st-cnn-affine", "R", cfg.replace(log_every=10), data, device="cpu", steps=40
    )
    assert history[-1]["loss"] < history[0]["loss"]


def test_transformed_examples(cfg, data):
    model = recipe.build_digit_model("st-cnn-affine", "RTS", cfg)
    images = data.test_sets["RTS"].tensors()[0][:5]
    inputs, warped = recipe.transformed_examples(model, images)
    assert inputs.shape == (5, 1, 42, 42) and warped.shape == (5, 1, 28, 28)
    with pytest.raises(ValueError, match="a plain CNN has no transformer"):
        recipe.transformed_examples(recipe.build_digit_model("cnn", "RTS", cfg), images)
    with pytest.raises(ValueError, match="Unknown value 'mlp' for argument model_name"):
        recipe.build_digit_model("mlp", "R", cfg)


def test_test_error_of_a_perfect_and_a_constant_model(data):
    class Oracle(torch.nn.Module):
        def __init__(self, labels):
            super().__init__()
            self.labels, self.i = labels, 0
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            y = self.labels[self.i : self.i + len(x)]
            self.i += len(x)
            return torch.nn.functional.one_hot(y, 10).float()

    labels = data.test_sets["R"].tensors()[1]
    assert recipe.test_error(Oracle(labels), data, "R") == 0.0
    const = Oracle(torch.zeros_like(labels))
    assert recipe.test_error(const, data, "R") == pytest.approx(float((labels != 0).float().mean()))


def test_pair_aligner_smoke(cfg, data):
    src, trg = recipe.synthetic_pair_batch_fn(data.train.images, 4, "projective")(
        0, torch.Generator().manual_seed(0)
    )
    assert src.shape == trg.shape == (4, 1, 28, 28) and not torch.equal(src, trg)
    model, history, _ = recipe.train_pair_aligner(cfg, data, device="cpu", steps=2)
    assert model.kind == "affine" and history[-1]["step"] == 2 and "identity_loss" in history[-1]
    errs = recipe.aligner_errors(model, data, cfg, n=8)
    assert set(errs) == {"identity", "aligned"} and errs["identity"] > 0


@pytest.mark.realdata
def test_smoke_preset_on_real_mnist(data_root):
    cfg = get_config("02_stn", "smoke")
    data = recipe.build_digit_data(cfg, data_root, seed=0)
    assert (data.info["n_train"], data.info["n_test"]) == (cfg.n_train, cfg.n_test)
    model, _, _ = recipe.train_digit_classifier("st-cnn-tps", "E", cfg, data, device="cpu")
    assert 0.0 <= recipe.test_error(model, data, "E") <= 1.0


def test_train_functions_seed_before_building_the_model(monkeypatch, cfg, data):
    for train, args in [
        (recipe.train_digit_classifier, ("st-cnn-affine", "R", cfg, data)),
        (recipe.train_pair_aligner, (cfg, data)),
    ]:
        a = initial_params(monkeypatch, recipe, 11, train, *args, seed=0, device="cpu")
        b = initial_params(monkeypatch, recipe, 22, train, *args, seed=0, device="cpu")
        c = initial_params(monkeypatch, recipe, 11, train, *args, seed=1, device="cpu")
        assert same_state(a, b) and not same_state(a, c), train.__name__
