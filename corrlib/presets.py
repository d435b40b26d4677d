"""Presets: one papermill parameter ``preset`` picks a whole configuration per chapter.

* ``smoke``: seconds, for CI; proves the code path runs, not that the numbers mean anything.
* ``lab``: a 2-core laptop CPU in at most 10 minutes, with a meaningful result on real data.
* ``paper``: a GPU, the paper's hyperparameters and data (each value cites where it comes from).
"""

from __future__ import annotations

import copy
import os

from corrlib._check import check_choice

__all__ = ["CHAPTERS", "PRESETS", "PRESET_ENV", "check_preset", "default_preset", "get_config"]

PRESETS = ("smoke", "lab", "paper")
#: Environment variable that sets a notebook's default preset (nbval runs use it).
PRESET_ENV = "CORRLIB_PRESET"

HANDCRAFTED = ("zncc", "census", "hog", "daisy", "sift")

CHAPTERS: dict[str, dict[str, dict]] = {
    "00_basics": {
        "smoke": {
            "methods": ("identity", *HANDCRAFTED),
            "pf_willow_limit": 12,  # pairs
            "max_side": 96,  # images resized so the longer side is this (None: original)
            "tss_max_side": 64,
            "tss_subsets": ("JODS",),
        },
        "lab": {
            "methods": ("identity", *HANDCRAFTED),
            "pf_willow_limit": None,  # every pair of the available sub-classes
            "max_side": None,  # PF-WILLOW images are at most 300 px: original resolution
            "tss_max_side": 200,
            "tss_subsets": ("FG3DCar", "JODS", "PASCAL"),
        },
        "paper": {
            # Proposal Flow (Ham et al., CVPR 2016) evaluates at the original resolution.
            "methods": ("identity", *HANDCRAFTED),
            "pf_willow_limit": None,
            "max_side": None,
            "tss_max_side": None,
            "tss_subsets": ("FG3DCar", "JODS", "PASCAL"),
        },
    },
}


def check_preset(preset: str) -> str:
    """Validate a preset name; the error lists the valid ones."""
    if not isinstance(preset, str):
        raise TypeError(f"Argument preset must be a string, one of {{{', '.join(PRESETS)}}}; got {preset!r}.")
    return check_choice(preset, "preset", PRESETS)


def default_preset() -> str:
    """``$CORRLIB_PRESET`` if set and non-empty (validated), else ``"lab"``: a notebook's default."""
    return check_preset(os.environ.get(PRESET_ENV) or "lab")


def get_config(chapter: str, preset: str) -> dict:
    """A copy of one chapter's configuration at one preset."""
    check_choice(chapter, "chapter", CHAPTERS)
    return copy.deepcopy(CHAPTERS[chapter][check_preset(preset)])
