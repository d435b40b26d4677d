"""A method's name carries what changes its number; a learned method defaults to its chapter's
evaluation setting, recorded in the exported file, and says so."""

from __future__ import annotations

import pytest
import torch

from corrlib import cli
from corrlib import eval as ev
from corrlib.models.patch import export_patch_model, load_patch_model, patch_model
from corrlib.models.ucn import UCN, export_ucn, load_ucn


def test_handcrafted_names_carry_the_resolution():
    assert ev.get_method("daisy", max_side=160).name == "daisy@160"
    assert ev.get_method("daisy").name == "daisy@original"
    assert ev.get_method("sift", max_side=320).name == "sift@320"
    assert ev.get_method("identity").name == "identity"


def test_sfnet_name_carries_size_geometry_and_argmax():
    from corrlib.models.sfnet import sfnet

    model = sfnet(arch="offline", trunk_weights="offline")
    plain = ev.get_method("sfnet", model=model, image_size=(64, 64))
    assert plain.name == "sfnet@64x64"
    hard = ev.get_method("sfnet", model=model, image_size=(64, 96), argmax="hard")
    assert hard.name == "sfnet@64x96,hard-argmax"


@pytest.fixture
def small_ucn():
    torch.manual_seed(0)
    return UCN(dim=8, trunk_widths=(8, 8), use_st=False)


def test_ucn_default_is_the_setting_recorded_in_the_checkpoint(tmp_path, small_ucn):
    path = export_ucn(tmp_path / "u.pt", small_ucn, eval_settings={"max_side": 64})
    assert load_ucn(path).eval_settings == {"max_side": 64}
    m = ev.get_method("ucn", checkpoint=path)
    assert m.max_side == 64 and m.name == "ucn@64"
    assert "max_side=64 (recorded in the checkpoint" in m.description
    given = ev.get_method("ucn", checkpoint=path, max_side=32)
    assert given.max_side == 32 and given.name == "ucn@32" and "(given)" in given.description
    original = ev.get_method("ucn", checkpoint=path, max_side=None)
    assert original.name == "ucn@original"


def test_ucn_without_recorded_setting_uses_the_original_size_and_says_so(tmp_path, small_ucn):
    path = export_ucn(tmp_path / "u.pt", small_ucn)
    m = ev.get_method("ucn", checkpoint=path)
    assert m.max_side is None and m.name == "ucn@original"
    assert "no setting recorded" in m.description


def test_model_eval_settings_are_exported(tmp_path, small_ucn):
    small_ucn.eval_settings = {"max_side": 48}
    assert load_ucn(export_ucn(tmp_path / "u.pt", small_ucn)).eval_settings == {"max_side": 48}


@pytest.mark.parametrize("bad", [{"max_side": 0}, {"size": 3}, {"max_side": 2.5}])
def test_bad_eval_settings_are_refused(tmp_path, small_ucn, bad):
    with pytest.raises(ValueError, match="eval_settings"):
        export_ucn(tmp_path / "u.pt", small_ucn, eval_settings=bad)


def test_patch_method_default_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = patch_model("mccnn-fast")
    path = export_patch_model(tmp_path / "m.pt", model, eval_settings={"max_side": 96})
    assert load_patch_model(path).eval_settings == {"max_side": 96}
    m = ev.get_method("mccnn-fast", checkpoint=path)
    assert m.max_side == 96 and m.name == "mccnn-fast@96"


def test_cli_prints_the_setting_it_used(tmp_path, small_ucn, capsys, data_root):
    path = export_ucn(tmp_path / "u.pt", small_ucn, eval_settings={"max_side": 64})
    code = cli.main(
        [
            "eval",
            "--method",
            "ucn",
            "--checkpoint",
            str(path),
            "--dataset",
            "pf-willow",
            "--data-root",
            str(data_root),
            "--out",
            str(tmp_path / "run"),
            "--limit",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("method ucn@64: ") and "recorded in the checkpoint" in first


def test_sfnet_max_side_must_be_a_multiple_of_the_grid_stride():
    from corrlib.models.sfnet import sfnet

    model = sfnet(arch="offline", trunk_weights="offline")
    with pytest.raises(ValueError, match=r"max_side \(--max-side\) must be a multiple .* try 16"):
        ev.get_method("sfnet", model=model, max_side=12)


def test_invalid_recorded_settings_name_the_file(tmp_path, small_ucn):
    path = export_ucn(tmp_path / "u.pt", small_ucn)
    state = torch.load(path, weights_only=True)
    state["eval"] = {"max_side": 0}
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"u\.pt: its recorded evaluation settings are invalid"):
        load_ucn(path)
