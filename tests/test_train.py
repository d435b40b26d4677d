"""Tests of the training loop: schedules, history, exact resume (stop, crash, SIGKILL), atomic
checkpoints."""

import csv
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from corrlib.checkpoint import load_checkpoint, save_checkpoint
from corrlib.train import (
    TrainConfig,
    Trainer,
    batches_from_dataset,
    history_to_csv,
    history_to_json,
    lr_at,
    pick_device,
    plot_history,
    seed_everything,
    train_or_load,
)

REPO = Path(__file__).resolve().parents[1]
W_TRUE = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])  # (4, 1)

pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed: int = 0) -> nn.Module:
    """A tiny regressor with dropout, so the global RNG matters to the result."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))


def batch_fn(step, generator):
    x = torch.randn(32, 4, generator=generator)  # (B, 4)
    y = x @ W_TRUE + 0.1 * torch.randn(32, 1, generator=generator)  # (B, 1)
    return {"x": x, "y": y}


def loss_fn(model, batch):
    pred = model(batch["x"])
    return nn.functional.mse_loss(pred, batch["y"]), {
        "mae": (pred - batch["y"]).abs().mean().item()
    }


def config(**kw) -> TrainConfig:
    base = {
        "steps": 20,
        "lr": 1e-2,
        "optimizer": "adam",
        "schedule": "cosine",
        "log_every": 5,
        "device": "cpu",
    }
    return TrainConfig(**{**base, **kw})


def reference_run(cfg, **kw):
    """An uninterrupted run without checkpoints: (model, history)."""
    model = make_model()
    history = Trainer(model, loss_fn, batch_fn, cfg, progress=False, **kw).fit()
    return model, history


def same_params(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def no_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.fixture(scope="module", autouse=True)
def torch_lazy_imports():
    """Pay once, outside the tests, what torch imports on the first optimizer step (about 1.5 s)."""
    import torch._dynamo  # noqa: F401


def disturb_global_rng():
    """What a notebook does between two cells: draw from every global RNG."""
    torch.rand(100), np.random.rand(7), random.random()  # noqa: NPY002


# --------------------------------------------------------------------------- loop and history


def test_loss_decreases():
    _, history = reference_run(config(steps=150, lr=2e-2, log_every=25, schedule="constant"))
    assert [r["step"] for r in history] == [25, 50, 75, 100, 125, 150]
    assert history[-1]["loss"] < 0.2 * history[0]["loss"]


def test_history_rows_keys_and_validation():
    losses, seen = [], []

    def recording_loss(model, batch):
        loss, logs = loss_fn(model, batch)
        losses.append(loss.item())
        return loss, logs

    def val_fn(model):
        assert not model.training and not torch.is_grad_enabled()
        return {"mse": 1.5}

    model = make_model()
    cfg = config(steps=12, log_every=5, val_every=4)
    history = Trainer(
        model,
        recording_loss,
        batch_fn,
        cfg,
        val_fn=val_fn,
        progress=False,
        on_log=lambda h: seen.append(len(h)),
    ).fit()
    # training rows at 5, 10 and a partial one at the end (12); validation at 4, 8 and 12 (merged)
    assert [r["step"] for r in history] == [4, 5, 8, 10, 12]
    assert list(history[1]) == ["step", "loss", "lr", "seconds", "mae"]
    assert set(history[0]) == {"step", "seconds", "val_mse"}
    assert set(history[-1]) == {"step", "loss", "lr", "seconds", "mae", "val_mse"}
    assert history[1]["loss"] == pytest.approx(sum(losses[:5]) / 5)
    assert history[-1]["loss"] == pytest.approx(sum(losses[10:]) / 2)
    assert history[1]["lr"] == lr_at(cfg, 4)
    assert seen == [1, 2, 3, 4, 5, 5]  # one call per new row, one for the merged validation
    assert model.training


def test_lr_schedules():
    cos = config(steps=100, lr=1.0, schedule="cosine")
    lrs = [lr_at(cos, k) for k in range(100)]
    assert lrs[0] == 1.0 and lrs[-1] < 1e-3 and all(a > b for a, b in itertools.pairwise(lrs))
    step = config(steps=30, lr=1.0, schedule="step", step_size=10, gamma=0.5)
    assert [lr_at(step, k) for k in range(30)] == [1.0] * 10 + [0.5] * 10 + [0.25] * 10
    warm = config(steps=20, lr=1.0, schedule="cosine", warmup_steps=4)
    assert [lr_at(warm, k) for k in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_at(warm, 19) < 0.01


def test_history_lr_follows_schedule():
    cfg = config(steps=12, log_every=1, warmup_steps=3, lr=0.1)
    model = make_model()
    trainer = Trainer(model, loss_fn, batch_fn, cfg, progress=False)
    history = trainer.fit()
    assert [r["lr"] for r in history] == [lr_at(cfg, k) for k in range(12)]
    assert trainer.optimizer.param_groups[0]["lr"] == lr_at(cfg, 11)


def test_progress_bar_shows_loss(capsys):
    Trainer(make_model(), loss_fn, batch_fn, config(steps=5), progress=True).fit()
    err = capsys.readouterr().err
    assert "train" in err and "loss=" in err


def test_nested_batch_and_bare_loss():
    def nested_batch(step, g):
        b = batch_fn(step, g)
        return {"inputs": [b["x"]], "targets": (b["y"], "tag")}

    def bare_loss(model, batch):
        assert batch["targets"][1] == "tag" and isinstance(batch["targets"], tuple)
        return nn.functional.mse_loss(model(batch["inputs"][0]), batch["targets"][0])

    history = Trainer(make_model(), bare_loss, nested_batch, config(steps=5), progress=False).fit()
    assert list(history[0]) == ["step", "loss", "lr", "seconds"]


def test_finished_run_returns_immediately(tmp_path):
    path = tmp_path / "ckpt.pt"
    history = Trainer(
        make_model(), loss_fn, batch_fn, config(steps=5), ckpt_path=path, progress=False
    ).fit()

    def never(model, batch):
        raise AssertionError("loss_fn called on a finished run")

    again = Trainer(
        make_model(seed=1), never, batch_fn, config(steps=5), ckpt_path=path, progress=False
    ).fit()
    assert again == history


def test_non_finite_loss_raises():
    def nan_loss(model, batch):
        return model(batch["x"]).sum() * float("nan"), {}

    with pytest.raises(FloatingPointError, match="nan at step 0"):
        Trainer(make_model(), nan_loss, batch_fn, config(), progress=False).fit()


def test_reserved_log_key_raises():
    def bad_logs(model, batch):
        return loss_fn(model, batch)[0], {"lr": 1.0}

    with pytest.raises(ValueError, match=r"keys \['lr'\]"):
        Trainer(make_model(), bad_logs, batch_fn, config(), progress=False).fit()


# ------------------------------------------------------------------------------ exact resume


def test_resume_after_stop_after_is_exact(tmp_path):
    cfg = config(steps=20, log_every=3)
    model_a, history_a = reference_run(cfg)
    path = tmp_path / "run" / "ckpt.pt"
    first = Trainer(make_model(), loss_fn, batch_fn, cfg, ckpt_path=path, progress=False)
    first.fit(stop_after=7)
    state = load_checkpoint(path)
    assert first.step == 7 and state["step"] == 7 and state["finished"] is False
    disturb_global_rng()
    model_b = make_model(seed=123)  # a new instance, initialised differently
    history_b = Trainer(model_b, loss_fn, batch_fn, cfg, ckpt_path=path, progress=False).fit()
    assert same_params(model_a, model_b)
    assert no_seconds(history_a) == no_seconds(history_b)
    assert load_checkpoint(path)["finished"] is True


def test_resume_after_crash_is_exact(tmp_path):
    cfg = config(steps=20, log_every=2, ckpt_every=3)
    model_a, history_a = reference_run(cfg)
    calls = [0]

    def crashing_loss(model, batch):
        calls[0] += 1
        if calls[0] == 9:  # step 8: the last checkpoint is the one of step 6
            raise RuntimeError("simulated crash")
        return loss_fn(model, batch)

    path = tmp_path / "ckpt.pt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(make_model(), crashing_loss, batch_fn, cfg, ckpt_path=path, progress=False).fit()
    assert load_checkpoint(path)["step"] == 6
    disturb_global_rng()
    model_b = make_model(seed=5)
    history_b = Trainer(model_b, loss_fn, batch_fn, cfg, ckpt_path=path, progress=False).fit()
    assert same_params(model_a, model_b)
    assert no_seconds(history_a) == no_seconds(history_b)


def test_resume_in_memory_without_checkpoint_is_exact():
    cfg = config(steps=15)
    model_a, _ = reference_run(cfg)
    model_b = make_model()
    trainer = Trainer(model_b, loss_fn, batch_fn, cfg, progress=False)
    trainer.fit(stop_after=4)
    disturb_global_rng()
    trainer.fit(stop_after=6)
    trainer.fit()
    assert trainer.step == 15 and same_params(model_a, model_b)


def test_batch_generator_depends_only_on_seed_and_step(tmp_path):
    def seeds_of(cfg, splits):
        seen = {}

        def recording_batch(step, generator):
            seen[step] = torch.randint(2**30, (1,), generator=generator).item()
            return batch_fn(step, generator)

        trainer = Trainer(make_model(), loss_fn, recording_batch, cfg, progress=False)
        for n in splits:
            trainer.fit(stop_after=n)
        return [seen[k] for k in range(cfg.steps)]

    whole = seeds_of(config(steps=10), [10])
    assert seeds_of(config(steps=10), [3, 4, 3]) == whole and len(set(whole)) == 10
    assert seeds_of(config(steps=10, seed=1), [10]) != whole


def test_resume_with_other_config(tmp_path):
    path = tmp_path / "ckpt.pt"
    Trainer(make_model(), loss_fn, batch_fn, config(), ckpt_path=path, progress=False).fit(
        stop_after=2
    )
    with pytest.raises(ValueError) as info:
        Trainer(
            make_model(), loss_fn, batch_fn, config(optimizer="sgd"), ckpt_path=path, progress=False
        ).fit()
    assert str(info.value) == (
        f"Checkpoint {path} was written by another run, so it is neither resumed nor reused: "
        "config.optimizer: recorded 'adam', requested 'sgd'. Delete the file, pass another "
        "ckpt_path, or pass the same settings. (Not compared: log_every, ckpt_every, device.)"
    )
    assert load_checkpoint(path)["step"] == 2  # left as it was


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"seed": 1}, r"config\.seed: recorded 0, requested 1"),
        ({"lr": 0.5}, r"config\.lr: recorded 0\.01, requested 0\.5"),
        ({"steps": 30}, r"config\.steps: recorded 20, requested 30"),
        ({"schedule": "constant"}, r"config\.schedule: recorded 'cosine', requested 'constant'"),
        ({"grad_clip": 1.0}, r"config\.grad_clip: recorded None, requested 1\.0"),
        ({"val_every": 5}, r"config\.val_every: recorded 0, requested 5"),
        ({"amp": True}, r"config\.amp: recorded False, requested True"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, kw, field):
    path = tmp_path / "ckpt.pt"
    Trainer(make_model(), loss_fn, batch_fn, config(), ckpt_path=path, progress=False).fit(
        stop_after=2
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # amp=True on the CPU
        trainer = Trainer(
            make_model(), loss_fn, batch_fn, config(**kw), ckpt_path=path, progress=False
        )
    with pytest.raises(ValueError, match=rf"Checkpoint {re.escape(str(path))} .*{field}\. Delete"):
        trainer.fit()
    assert trainer.step == 0 and load_checkpoint(path)["step"] == 2


def test_resume_ignores_log_and_ckpt_every_and_stays_exact(tmp_path):
    cfg = config(steps=12, log_every=4)
    model_a, _ = reference_run(cfg)
    path = tmp_path / "ckpt.pt"
    Trainer(make_model(), loss_fn, batch_fn, cfg, ckpt_path=path, progress=False).fit(stop_after=5)
    model_b = make_model(seed=4)
    other = config(steps=12, log_every=3, ckpt_every=2)
    Trainer(model_b, loss_fn, batch_fn, other, ckpt_path=path, progress=False).fit()
    assert same_params(model_a, model_b)
    if pick_device("auto").type == "cpu":  # "auto" is the CPU here: the device is not compared
        again = make_model()
        Trainer(
            again,
            loss_fn,
            batch_fn,
            config(steps=12, device="auto"),
            ckpt_path=path,
            progress=False,
        ).fit()
        assert same_params(model_a, again)


def test_finished_checkpoint_of_another_run_is_an_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    Trainer(make_model(), loss_fn, batch_fn, config(steps=8), ckpt_path=path, progress=False).fit()

    def never(model, batch):
        raise AssertionError("trained instead of raising")

    with pytest.raises(ValueError, match=r"config\.seed: recorded 0, requested 1\. Delete"):
        Trainer(
            make_model(seed=1),
            never,
            batch_fn,
            config(steps=8, seed=1),
            ckpt_path=path,
            progress=False,
        ).fit()
    # fewer steps than the finished checkpoint holds: never a longer-trained model
    with pytest.raises(
        ValueError,
        match=r"config\.steps: recorded 8, requested 5; it has done 8 steps, more than the 5 "
        r"requested\.",
    ):
        Trainer(
            make_model(), never, batch_fn, config(steps=5), ckpt_path=path, progress=False
        ).fit()


def test_older_checkpoint_without_new_entries_still_resumes(tmp_path):
    """A checkpoint without ``model_info`` or a config field (an older file) is compared on what
    it records; a missing field counts as its default."""
    cfg = config(steps=10)
    model_a, _ = reference_run(cfg)
    path = tmp_path / "ckpt.pt"
    Trainer(make_model(), loss_fn, batch_fn, cfg, ckpt_path=path, progress=False).fit(stop_after=4)
    state = load_checkpoint(path)
    del state["model_info"], state["config"]["amp"], state["config"]["val_every"]
    save_checkpoint(path, state)
    model_b = make_model(seed=2)
    Trainer(model_b, loss_fn, batch_fn, cfg, ckpt_path=path, progress=False).fit()
    assert same_params(model_a, model_b)


class Tagged(nn.Module):
    """A model with ``arch`` and ``config`` attributes, as corrlib's networks have."""

    def __init__(self, width=8, arch="a"):
        super().__init__()
        self.arch, self.config = arch, {"width": width, "sizes": (1, 2)}
        self.net = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 1))

    def forward(self, x):
        return self.net(x)


def test_checkpoint_records_the_model_and_refuses_another(tmp_path):
    path = tmp_path / "ckpt.pt"
    cfg = config(steps=6)
    Trainer(Tagged(), loss_fn, batch_fn, cfg, ckpt_path=path, progress=False).fit(stop_after=2)
    info = load_checkpoint(path)["model_info"]
    assert info == {"class": "Tagged", "arch": "a", "config": {"width": 8, "sizes": [1, 2]}}
    with pytest.raises(
        ValueError,
        match=r"model arch: recorded 'a', requested 'b'; model config\['width'\]: recorded 8, "
        r"requested 16\. Delete",
    ):
        Trainer(Tagged(16, "b"), loss_fn, batch_fn, cfg, ckpt_path=path, progress=False).fit()
    with pytest.raises(ValueError, match=r"model class: recorded 'Tagged', requested 'Sequential'"):
        Trainer(make_model(), loss_fn, batch_fn, cfg, ckpt_path=path, progress=False).fit()
    resumed = Trainer(Tagged(), loss_fn, batch_fn, cfg, ckpt_path=path, progress=False)
    resumed.fit()
    assert resumed.step == 6


def test_wrong_shape_checkpoint_names_the_file_and_the_mismatch(tmp_path):
    path = tmp_path / "ckpt.pt"
    cfg = config(steps=6)
    Trainer(make_model(), loss_fn, batch_fn, cfg, ckpt_path=path, progress=False).fit(stop_after=2)
    wider = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))
    with pytest.raises(
        ValueError,
        match=rf"Checkpoint {re.escape(str(path))}: its model weights do not fit this Sequential "
        r"\(another architecture or size\): .*size mismatch for 0\.weight.*Delete the file",
    ):
        Trainer(wider, loss_fn, batch_fn, cfg, ckpt_path=path, progress=False).fit()
    # the same for a file without model_info (older checkpoints): the load itself says it
    state = load_checkpoint(path)
    del state["model_info"]
    save_checkpoint(path, state)
    shallow = nn.Sequential(nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"do not fit this Sequential.*Unexpected key"):
        Trainer(shallow, loss_fn, batch_fn, cfg, ckpt_path=path, progress=False).fit()
    frozen = make_model()
    frozen[0].requires_grad_(False)  # the same weights, but fewer trainable parameters
    state["model_info"] = {"class": "Sequential"}
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match=r"saved optimizer state does not fit .*Delete the file"):
        Trainer(frozen, loss_fn, batch_fn, cfg, ckpt_path=path, progress=False).fit()


def test_two_trainings_with_another_lr_on_one_path(tmp_path):
    """Reliability review, concurrency: run B (lr 0.1) on run A's (lr 0.01) checkpoint path used to
    resume A's partial run into a hybrid; now B stops with an error and A's file is kept."""
    path = tmp_path / "shared.ckpt"
    cfg_a, cfg_b = config(steps=12, lr=0.01), config(steps=12, lr=0.1)
    model_ref, _ = reference_run(cfg_a)
    Trainer(make_model(), loss_fn, batch_fn, cfg_a, ckpt_path=path, progress=False).fit(
        stop_after=4
    )
    with pytest.raises(ValueError, match=r"config\.lr: recorded 0\.01, requested 0\.1\. Delete"):
        Trainer(make_model(), loss_fn, batch_fn, cfg_b, ckpt_path=path, progress=False).fit()
    state = load_checkpoint(path)
    assert state["step"] == 4 and state["config"]["lr"] == 0.01 and not state["finished"]
    model_a = make_model(seed=7)
    Trainer(model_a, loss_fn, batch_fn, cfg_a, ckpt_path=path, progress=False).fit()
    assert same_params(model_ref, model_a)  # A itself still resumes exactly


KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads({threads})  # the parent's: float sums may depend on the thread count
from corrlib.train import Trainer
from tests.test_train import batch_fn, config, loss_fn, make_model

def slow_loss(model, batch):
    time.sleep(0.1)
    return loss_fn(model, batch)

Trainer(
    make_model(), slow_loss, batch_fn, config(**{cfg!r}), ckpt_path=sys.argv[1], progress=False
).fit()
"""


def test_resume_after_sigkill_is_exact(tmp_path):
    cfg = {"steps": 60, "log_every": 4, "ckpt_every": 1}
    script = tmp_path / "train_script.py"
    script.write_text(KILL_SCRIPT.format(repo=str(REPO), cfg=cfg, threads=torch.get_num_threads()))
    path = tmp_path / "ckpt.pt"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if path.is_file() and load_checkpoint(path)["step"] >= 3:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        rc = proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert rc == -signal.SIGKILL, (
        f"the script was not killed (rc {rc}): {proc.stderr.read().decode()[-2000:]}"
    )
    killed_at = load_checkpoint(path)["step"]
    assert 3 <= killed_at < 60
    model_a, history_a = reference_run(config(**cfg))
    model_b = make_model(seed=9)
    history_b = Trainer(
        model_b, loss_fn, batch_fn, config(**cfg), ckpt_path=path, progress=False
    ).fit()
    assert same_params(model_a, model_b)
    assert no_seconds(history_a) == no_seconds(history_b)
    assert not list(tmp_path.glob("ckpt.pt.tmp-*"))  # a temp file of a killed save is removed


# ------------------------------------------------------------------------------- checkpoints


def test_trainer_save_crash_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    trainer = Trainer(
        make_model(), loss_fn, batch_fn, config(steps=10), ckpt_path=path, progress=False
    )
    trainer.fit(stop_after=3)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(stop_after=2)
    assert load_checkpoint(path)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    path = tmp_path / "ckpt.pt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # exited and reaped: its pid is free
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [
            f"ckpt.pt.tmp-{dead.pid}",  # a killed save: removed
            f"ckpt.pt.tmp-{live.pid}",  # another process saving right now: kept
            "ckpt.pt.tmp-notapid",
            f"other.pt.tmp-{dead.pid}",  # another checkpoint's: not ours to judge
        ]
        for name in names:
            (tmp_path / name).write_bytes(b"PK half")
        Trainer(
            make_model(), loss_fn, batch_fn, config(steps=3), ckpt_path=path, progress=False
        ).fit()
        left = sorted(p.name for p in tmp_path.iterdir())
    finally:
        live.kill()
        live.wait()
    if os.name == "posix":
        assert left == sorted(["ckpt.pt", *names[1:]])
    assert load_checkpoint(path)["finished"] is True


class Opaque:
    """A pickled object: ``weights_only`` loading must refuse it."""


def test_checkpoint_holds_no_pickled_objects(tmp_path):
    path = tmp_path / "ckpt.pt"
    val = {"val_fn": lambda m: {"mse": 1.0}}
    Trainer(
        make_model(),
        loss_fn,
        batch_fn,
        config(steps=6, val_every=3),
        ckpt_path=path,
        progress=False,
        **val,
    ).fit()
    state = torch.load(path, weights_only=True)  # raises on any pickled object
    assert state["finished"] is True and state["step"] == 6
    assert isinstance(state["rng"]["torch"], torch.Tensor) and isinstance(
        state["rng"]["numpy"]["keys"], torch.Tensor
    )
    assert all(type(v) in (int, float) for row in state["history"] for v in row.values())
    with pytest.raises(TypeError, match=r"state\['a'\]\[0\] is a float64"):
        save_checkpoint(path, {"a": [np.float64(1.0)]})
    torch.save({"obj": Opaque()}, path)
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------- train_or_load


def test_train_or_load(tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    calls = []

    def trainer_for(model):
        def train():
            calls.append(1)
            return Trainer(
                model, loss_fn, batch_fn, config(steps=8), ckpt_path=path, progress=False
            ).fit()

        return train

    model_1 = make_model()
    history_1, trained = train_or_load(model_1, path, trainer_for(model_1), config=config(steps=8))
    assert trained and len(calls) == 1 and "no checkpoint" in capsys.readouterr().out
    model_2 = make_model(seed=1)
    history_2, trained = train_or_load(model_2, path, trainer_for(model_2), config=config(steps=8))
    assert (
        not trained and len(calls) == 1 and "loaded finished checkpoint" in capsys.readouterr().out
    )
    assert same_params(model_1, model_2) and history_2 == history_1 and not model_2.training
    model_3 = make_model()  # the same initialisation as model_1: retraining reproduces it
    _, trained = train_or_load(
        model_3, path, trainer_for(model_3), config=config(steps=8), retrain=True
    )
    assert trained and len(calls) == 2 and "retrain=True" in capsys.readouterr().out
    assert same_params(model_1, model_3) and (tmp_path / "ckpt.pt.old").is_file()


def test_train_or_load_resumes_unfinished(tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    cfg = config(steps=10)
    model_a, _ = reference_run(cfg)
    Trainer(make_model(), loss_fn, batch_fn, cfg, ckpt_path=path, progress=False).fit(stop_after=4)
    model_b = make_model(seed=3)
    _, trained = train_or_load(
        model_b,
        path,
        lambda: Trainer(model_b, loss_fn, batch_fn, cfg, ckpt_path=path, progress=False).fit(),
        config=cfg,
    )
    assert trained and "resuming unfinished checkpoint" in capsys.readouterr().out
    assert same_params(model_a, model_b)


def test_train_or_load_refuses_a_checkpoint_of_another_run(tmp_path):
    path = tmp_path / "ckpt.pt"
    Trainer(make_model(), loss_fn, batch_fn, config(steps=8), ckpt_path=path, progress=False).fit()

    def never():
        raise AssertionError("trained instead of raising")

    model = make_model(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for cfg, message in [
        (config(steps=8, seed=1), r"config\.seed: recorded 0, requested 1\. Delete the file"),
        (config(steps=8, lr=0.5), r"config\.lr: recorded 0\.01, requested 0\.5"),
        (config(steps=5), r"config\.steps: recorded 8, requested 5; it has done 8 steps"),
    ]:
        with pytest.raises(ValueError, match=rf"Checkpoint {re.escape(str(path))} .*{message}"):
            train_or_load(model, path, never, config=cfg)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    wider = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))
    with pytest.raises(ValueError, match=r"ckpt\.pt: its model weights do not fit.*size mismatch"):
        train_or_load(wider, path, never, config=config(steps=8))
    state = load_checkpoint(path)
    state["finished"], state["step"] = False, 4
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match=r"ckpt\.pt .*config\.lr: recorded 0\.01, requested 1"):
        # an unfinished checkpoint too: refused before train() is called
        train_or_load(make_model(), path, never, config=config(steps=8, lr=1.0))
    save_checkpoint(path, {"format": "corrlib.sfnet/1", "model": {}})
    with pytest.raises(ValueError, match=r"ckpt\.pt is not a corrlib\.train checkpoint"):
        train_or_load(make_model(), path, never, config=config(steps=8))


# ------------------------------------------------------------------------------ data, history files


def test_batches_from_dataset_is_stateless_and_wraps():
    data = torch.utils.data.TensorDataset(torch.arange(10.0))
    fn = batches_from_dataset(data, 3, seed=1)
    assert fn.batches_per_epoch == 3
    epoch_0 = torch.cat([fn(k, None)[0] for k in range(3)])
    epoch_1 = torch.cat([fn(k, None)[0] for k in range(3, 6)])
    assert len(set(epoch_0.tolist())) == 9 and len(set(epoch_1.tolist())) == 9  # one item dropped
    assert not torch.equal(epoch_0, epoch_1)  # a new permutation every epoch
    again = batches_from_dataset(data, 3, seed=1)
    assert torch.equal(again(4, None)[0], fn(4, None)[0]) and torch.equal(
        again(1, None)[0], fn(1, None)[0]
    )
    other = batches_from_dataset(data, 3, seed=2)
    assert not torch.equal(torch.cat([other(k, None)[0] for k in range(3)]), epoch_0)
    keep = batches_from_dataset(data, 3, seed=1, drop_last=False)
    assert keep.batches_per_epoch == 4 and len(keep(3, None)[0]) == 1
    assert sorted(torch.cat([keep(k, None)[0] for k in range(4)]).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="10 items, fewer than batch_size=11"):
        batches_from_dataset(data, 11)


def test_batches_from_dataset_in_trainer():
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    data = [{"x": xi, "y": xi @ W_TRUE} for xi in x]  # items are dicts: collated to a dict batch
    history = Trainer(
        make_model(), loss_fn, batches_from_dataset(data, 8), config(steps=12), progress=False
    ).fit()
    assert [r["step"] for r in history] == [5, 10, 12]


def test_history_files_and_plot(tmp_path):
    from matplotlib.figure import Figure

    history = [
        {"step": 5, "loss": 2.0, "lr": 0.1, "seconds": 0.5},
        {"step": 10, "loss": 1.0, "lr": 0.05, "seconds": 1.0, "val_mse": 1.5},
        {"step": 12, "seconds": 1.1, "val_mse": 1.2},
    ]
    rows = list(csv.DictReader((history_to_csv(history, tmp_path / "out" / "h.csv")).open()))
    assert list(rows[0]) == ["step", "loss", "lr", "seconds", "val_mse"]
    assert rows[0]["val_mse"] == "" and rows[2]["loss"] == "" and float(rows[1]["val_mse"]) == 1.5
    assert json.loads(history_to_json(history, tmp_path / "h.json").read_text()) == history
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["h.csv", "h.json", "out"]
    ax = plot_history(history, keys=("loss", "val_mse"), ax=Figure().add_subplot())
    assert [list(line.get_xdata()) for line in ax.lines] == [[5, 10], [10, 12]]
    with pytest.raises(ValueError, match="Unknown value 'acc' for argument keys"):
        plot_history(history, keys=("acc",), ax=ax)


# ---------------------------------------------------------------------- devices, seeds, config


def test_pick_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(
            ValueError,
            match=rf"'{name}' but that CUDA device is not available; available: \['cpu'\]",
        ):
            pick_device(name)
    with pytest.raises(ValueError, match="MPS is not available"):
        pick_device("mps")
    with pytest.raises(ValueError, match="Unknown value 'gpu' for argument device"):
        pick_device("gpu")


def test_seed_everything():
    def draw():
        return random.random(), np.random.rand(), torch.rand(3)  # noqa: NPY002

    seed_everything(7)
    a = draw()
    seed_everything(7)
    b = draw()
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])
    with pytest.raises(ValueError, match="seed must be an int"):
        seed_everything(-1)


def test_amp_on_cpu_warns_and_is_ignored():
    with pytest.warns(UserWarning, match="amp=True is ignored on device 'cpu'"):
        trainer = Trainer(
            make_model(), loss_fn, batch_fn, config(amp=True, steps=3), progress=False
        )
    assert trainer.amp_dtype is None and not trainer.scaler.is_enabled()
    assert len(trainer.fit()) == 1


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"steps": 0}, r"config.steps must be an int >= 1, got 0"),
        ({"lr": -1.0}, r"config.lr must be a number in \(0.0, inf\), got -1.0"),
        (
            {"optimizer": "rmsprop"},
            (
                r"Unknown value 'rmsprop' for argument config.optimizer. "
                r"Valid values are \{adam, adamw, sgd\}"
            ),
        ),
        ({"schedule": "linear"}, r"Unknown value 'linear' for argument config.schedule"),
        ({"schedule": "step"}, r"config.step_size is required with schedule='step'"),
        ({"warmup_steps": 20}, r"config.warmup_steps must be an int in \[0, 19\], got 20"),
        ({"gamma": 0.0}, r"config.gamma must be a number in \(0.0, 1.0\]"),
        ({"momentum": 1.0}, r"config.momentum must be a number in \[0.0, 1.0\)"),
        ({"grad_clip": 0.0}, r"config.grad_clip must be a number"),
        ({"log_every": 0}, r"config.log_every must be an int >= 1"),
        ({"ckpt_every": -1}, r"config.ckpt_every must be an int >= 0"),
        ({"amp": "yes"}, r"config.amp must be True or False"),
        ({"device": "tpu"}, r"Unknown value 'tpu' for argument config.device"),
    ],
)
def test_invalid_config(kw, message):
    with pytest.raises(ValueError, match=message):
        config(**kw)


def test_grad_clip_and_sgd_run():
    cfg = config(optimizer="sgd", grad_clip=0.5, schedule="step", step_size=5, weight_decay=1e-4)
    history = Trainer(make_model(), loss_fn, batch_fn, cfg, progress=False).fit()
    assert len(history) == 4 and all(np.isfinite(r["loss"]) for r in history)


def test_loaded_optimizer_state_keeps_this_machines_adam_kernel():
    """A checkpoint's optimizer state written with the loop kernel (older files, other machines)
    does not switch a fused Adam back: the kernel choice and the update stay this machine's."""
    from corrlib.train import TrainConfig, _fused, _keep_kernel_choice, make_optimizer

    torch.manual_seed(0)
    p = [torch.nn.Parameter(torch.randn(5))]
    loop = torch.optim.Adam(p, lr=0.1)
    p[0].grad = torch.ones(5)
    loop.step()
    opt = make_optimizer(p, TrainConfig(steps=1, lr=0.1))
    opt.load_state_dict(loop.state_dict())
    _keep_kernel_choice(opt)
    assert opt.param_groups[0]["fused"] == (True if _fused(p) else None)
    assert opt.state[p[0]]["step"].dtype == torch.float32
    before = p[0].detach().clone()
    opt.step()
    ref = [torch.nn.Parameter(before.clone())]
    twin = torch.optim.Adam(ref, lr=0.1)
    twin.load_state_dict(loop.state_dict())
    ref[0].grad = torch.ones(5)
    twin.step()
    torch.testing.assert_close(p[0].detach(), ref[0].detach())
