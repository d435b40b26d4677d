"""Presets (corrlib.presets): one name picks a chapter's whole configuration."""

from __future__ import annotations

import re

import pytest

from corrlib.presets import (
    CHAPTERS,
    PRESET_ENV,
    PRESETS,
    check_preset,
    default_preset,
    get_config,
)

INVALID_FAST = (
    r"Unknown value 'fast' for argument preset\. Valid values are \{smoke, lab, paper\}\."
)


# ------------------------------------------------------------------------------------------------
# check_preset
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["smoke", "lab", "paper"])
def test_check_preset_accepts(name):
    assert check_preset(name) == name


def test_presets_constant():
    assert PRESETS == ("smoke", "lab", "paper")
    assert PRESET_ENV == "CORRLIB_PRESET"


@pytest.mark.parametrize("bad", ["fast", "Lab", " lab", ""])
def test_check_preset_rejects_unknown(bad):
    with pytest.raises(
        ValueError,
        match=rf"Unknown value '{bad}' for argument preset\. Valid values are \{{smoke, lab, paper\}}\.",
    ):
        check_preset(bad)
    with pytest.raises(ValueError, match=INVALID_FAST):
        check_preset("fast")


@pytest.mark.parametrize("bad", [None, 1, ("lab",), b"lab"])
def test_check_preset_rejects_non_strings(bad):
    msg = f"Argument preset must be a string, one of {{smoke, lab, paper}}; got {bad!r}."
    with pytest.raises(TypeError, match=re.escape(msg)):
        check_preset(bad)


# ------------------------------------------------------------------------------------------------
# default_preset
# ------------------------------------------------------------------------------------------------


def test_default_preset_is_lab_without_env(monkeypatch):
    monkeypatch.delenv(PRESET_ENV, raising=False)
    assert default_preset() == "lab"


@pytest.mark.parametrize("name", ["smoke", "lab", "paper"])
def test_default_preset_reads_env(monkeypatch, name):
    monkeypatch.setenv("CORRLIB_PRESET", name)
    assert default_preset() == name


def test_default_preset_rejects_invalid_env(monkeypatch):
    monkeypatch.setenv("CORRLIB_PRESET", "fast")
    with pytest.raises(ValueError, match=INVALID_FAST):
        default_preset()


# ------------------------------------------------------------------------------------------------
# get_config
# ------------------------------------------------------------------------------------------------


def test_get_config_known_answer():
    cfg = get_config("00_basics", "smoke")
    assert cfg["pf_willow_limit"] == 12 and cfg["max_side"] == 96
    assert cfg["methods"][0] == "identity" and "census" in cfg["methods"]
    assert get_config("00_basics", "lab")["tss_subsets"] == ("FG3DCar", "JODS", "PASCAL")


def test_get_config_returns_independent_copies():
    first = get_config("00_basics", "lab")
    first["max_side"] = 1
    first["new_key"] = "x"
    second = get_config("00_basics", "lab")
    assert second["max_side"] is None and "new_key" not in second
    assert second == CHAPTERS["00_basics"]["lab"]
    assert second is not CHAPTERS["00_basics"]["lab"]


def test_get_config_copies_nested_values(monkeypatch):
    # a mutable value inside a preset (a list or dict) must be copied too, not shared
    patched = {"00_basics": {p: {"nested": {"sizes": [1, 2]}} for p in PRESETS}}
    monkeypatch.setattr("corrlib.presets.CHAPTERS", patched)
    cfg = get_config("00_basics", "smoke")
    cfg["nested"]["sizes"].append(3)
    assert get_config("00_basics", "smoke")["nested"]["sizes"] == [1, 2]


def test_get_config_rejects_unknown_chapter():
    valid = ", ".join(CHAPTERS)
    with pytest.raises(
        ValueError,
        match=rf"Unknown value '99_magic' for argument chapter\. Valid values are \{{{valid}\}}\.",
    ):
        get_config("99_magic", "lab")


def test_get_config_rejects_unknown_preset():
    with pytest.raises(ValueError, match=INVALID_FAST):
        get_config("00_basics", "fast")
    with pytest.raises(TypeError, match="Argument preset must be a string"):
        get_config("00_basics", None)


# ------------------------------------------------------------------------------------------------
# the configurations themselves
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_every_chapter_defines_every_preset_with_the_same_keys(chapter):
    presets = CHAPTERS[chapter]
    assert tuple(presets) == PRESETS
    keys = set(presets["lab"])
    assert keys, f"{chapter}: empty configuration"
    for name in PRESETS:
        assert set(presets[name]) == keys, f"{chapter}/{name}"
        assert get_config(chapter, name) == presets[name]


def _cost(limit, side):
    """Order 'None' (everything / the original resolution) above any number."""
    return float("inf") if limit is None else limit, float("inf") if side is None else side


def test_smoke_is_smaller_than_lab_and_lab_not_larger_than_paper():
    smoke, lab, paper = (get_config("00_basics", p) for p in PRESETS)
    s_pairs, s_side = _cost(smoke["pf_willow_limit"], smoke["max_side"])
    l_pairs, l_side = _cost(lab["pf_willow_limit"], lab["max_side"])
    assert s_pairs <= l_pairs and s_side <= l_side
    assert (s_pairs, s_side) != (l_pairs, l_side)  # strictly smaller in at least one
    s_tss, l_tss, p_tss = (_cost(None, c["tss_max_side"])[1] for c in (smoke, lab, paper))
    assert s_tss < l_tss <= p_tss
    assert set(smoke["tss_subsets"]) < set(lab["tss_subsets"]) <= set(paper["tss_subsets"])
    assert smoke["methods"] == lab["methods"] == paper["methods"]  # every method is exercised


def test_sfnet_presets_share_keys_and_paper_follows_the_authors_settings():
    from corrlib.models.sfnet import PAPER
    from corrlib.recipes.sfnet import VARIANTS

    cfgs = {p: get_config("06_sfnet", p) for p in PRESETS}
    keys = {p: set(c) for p, c in cfgs.items()}
    assert keys["smoke"] == keys["lab"] == keys["paper"]
    for c in cfgs.values():
        assert set(c["variants"]) <= set(VARIANTS) and all(s % 8 == 0 for s in c["size"])
    paper = cfgs["paper"]
    assert (paper["lr"], paper["batch_size"], paper["sigma"], paper["beta"]) == (PAPER["lr"], PAPER["batch_size"], PAPER["sigma"], PAPER["beta"])
    assert paper["kernels"] == PAPER["kernels"] and tuple(paper["size"]) == PAPER["image_size"] and paper["source"] == "voc"
    assert paper["arch"] == PAPER["arch"] and paper["weights"] == "imagenet"
