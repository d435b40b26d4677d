"""Presets: one papermill parameter ``preset`` picks a whole configuration per chapter.

* ``smoke``: seconds, for CI; proves the code path runs, not that the numbers mean anything.
* ``lab``: a 2-core laptop CPU in at most 10 minutes, with a meaningful result on real data.
* ``paper``: a GPU, the paper's hyperparameters and data (each value cites where it comes from).

Each chapter's settings live with its recipe: ``corrlib.recipes.<chapter>.Config`` (defaults =
the paper) and ``PRESETS``; :func:`corrlib.recipes.get_config` finds them by chapter name.
"""

from __future__ import annotations

import os

from corrlib._check import check_choice

__all__ = ["PRESETS", "PRESET_ENV", "check_preset", "default_preset"]

PRESETS = ("smoke", "lab", "paper")
#: Environment variable that sets a notebook's default preset (nbval runs use it).
PRESET_ENV = "CORRLIB_PRESET"


def check_preset(preset: str) -> str:
    """Validate a preset name; the error lists the valid ones."""
    if not isinstance(preset, str):
        raise TypeError(
            f"Argument preset must be a string, one of {{{', '.join(PRESETS)}}}; got {preset!r}."
        )
    return check_choice(preset, "preset", PRESETS)


def default_preset() -> str:
    """``$CORRLIB_PRESET`` if set and non-empty (validated), else ``"lab"``: a notebook's
    default."""
    return check_preset(os.environ.get(PRESET_ENV) or "lab")
