"""Tests of corrlib.checkpoint: atomic writes, safe loading, model-file tags and strict loading."""

import io

import pytest
import torch
from torch import nn

from corrlib.checkpoint import (
    atomic_open,
    atomic_write_text,
    finite_metrics,
    load_checkpoint,
    load_state_strict,
    read_model_file,
    save_checkpoint,
)


def test_save_is_atomic_when_the_write_crashes(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"w": torch.arange(3.0), "step": 1})
    before = path.read_bytes()
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        raise OSError("simulated crash mid-write")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"w": torch.arange(1000.0), "step": 2})
    assert path.read_bytes() == before
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # the temporary file is gone


def test_atomic_write_text_keeps_the_previous_file_when_the_write_fails(tmp_path):
    path = tmp_path / "sub" / "notes.txt"
    assert atomic_write_text(path, "first\n") == path  # parent folders are created
    assert path.read_text() == "first\n"
    with pytest.raises(RuntimeError, match="interrupted"), atomic_open(path) as f:
        f.write(b"half of the second")
        raise RuntimeError("interrupted")
    assert path.read_text() == "first\n"
    assert [p.name for p in path.parent.iterdir()] == ["notes.txt"]  # no temporary file left
    atomic_write_text(path, "second \u00e9\n")
    assert path.read_text(encoding="utf-8") == "second \u00e9\n"
    assert [p.name for p in path.parent.iterdir()] == ["notes.txt"]


def test_truncated_or_missing_checkpoint_errors(tmp_path):
    path = tmp_path / "ckpt.pt"
    with pytest.raises(FileNotFoundError, match=r"No checkpoint at .*ckpt\.pt"):
        load_checkpoint(path)
    save_checkpoint(path, {"w": torch.randn(100), "step": 3})
    data = path.read_bytes()
    for broken in (data[: len(data) // 2], b""):
        path.write_bytes(broken)
        with pytest.raises(
            ValueError,
            match=r"Checkpoint .*ckpt\.pt cannot be read.*Delete it or restore the previous one",
        ):
            load_checkpoint(path)


def test_read_model_file_checks_the_format_tag(tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", {"format": "corrlib.thing/1", "model": {}})
    assert read_model_file(path, "corrlib.thing/1", "a thing")["format"] == "corrlib.thing/1"
    with pytest.raises(
        ValueError,
        match=(
            r"model\.pt is not an exported widget "
            r"\(format 'corrlib.thing/1', expected 'corrlib.widget/1'\)"
        ),
    ):
        read_model_file(path, "corrlib.widget/1", "an exported widget")
    ckpt = save_checkpoint(tmp_path / "train.pt", {"model": {}, "optimizer": {}, "step": 3})
    with pytest.raises(
        ValueError, match=r"train\.pt is not an exported widget \(format 'a training checkpoint'"
    ):
        read_model_file(ckpt, "corrlib.widget/1", "an exported widget")
    legacy = save_checkpoint(tmp_path / "old.pt", {"arch": "x", "kwargs": {}, "model": {}})
    assert (
        read_model_file(legacy, "corrlib.widget/1", "a widget", legacy_keys=("arch", "kwargs"))[
            "arch"
        ]
        == "x"
    )
    with pytest.raises(ValueError, match=r"old\.pt is not a widget \(format 'no format tag'"):
        read_model_file(legacy, "corrlib.widget/1", "a widget")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        read_model_file(tmp_path / "missing.pt", "corrlib.widget/1", "a widget")


def test_load_state_strict_names_the_file(tmp_path):
    model = nn.Linear(3, 2)
    good = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    load_state_strict(model, good, tmp_path / "m.pt")
    assert torch.equal(model.weight, torch.zeros(2, 3))
    wrong_shape = {"weight": torch.zeros(4, 3), "bias": torch.zeros(4)}
    with pytest.raises(
        ValueError, match=r"m\.pt: the saved model weights do not fit a Linear.*size mismatch"
    ):
        load_state_strict(model, wrong_shape, tmp_path / "m.pt")
    with pytest.raises(
        ValueError, match=r"m\.pt: the saved head weights do not fit a Linear.*Missing key"
    ):
        load_state_strict(model, {"weight": torch.zeros(2, 3)}, tmp_path / "m.pt", "head")


def test_finite_metrics_keeps_finite_numbers_only():
    got = finite_metrics(
        {"pck": 0.5, "n": 3, "nan": float("nan"), "inf": float("inf"), "ok": True, "name": "x"}
    )
    assert got == {"pck": 0.5, "n": 3.0} and type(got["n"]) is float
    assert finite_metrics(None) == {}
