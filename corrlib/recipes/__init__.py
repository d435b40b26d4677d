"""Chapter recipes: each chapter's settings (a typed ``Config`` and ``PRESETS``), data assembly,
training and evaluation loops.

Recipes consume the library and provide nothing to it: inside ``corrlib`` only the command line
and the series runner import them (a layer contract checked in CI). A chapter's recipe module
declares ``CHAPTER`` (its notebook's name); :func:`get_config` finds it by that name.
"""

from __future__ import annotations

import importlib
import pkgutil

from corrlib._check import check_choice
from corrlib.recipes._common import ChapterRun, chapter_setup

__all__ = ["ChapterRun", "chapter_setup", "chapters", "get_config", "recipe_for"]


def _modules() -> dict[str, str]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        chapter = getattr(module, "CHAPTER", None)
        if chapter:
            found[chapter] = module.__name__
    return found


def chapters() -> list[str]:
    """The chapter names that have a recipe, sorted (``"00_basics"``, ``"01_patch"``, ...)."""
    return sorted(_modules())


def recipe_for(chapter: str):
    """The recipe module of ``chapter``."""
    modules = _modules()
    check_choice(chapter, "chapter", sorted(modules))
    return importlib.import_module(modules[chapter])


def get_config(chapter: str, preset: str):
    """One chapter's typed config at one preset (frozen: change it with ``cfg.replace(...)``)."""
    return recipe_for(chapter).config(preset)
