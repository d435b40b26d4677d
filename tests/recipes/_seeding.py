"""Shared by the recipe tests: the parameters a recipe's ``train_*`` builds before any step."""

from __future__ import annotations

import torch


def initial_params(monkeypatch, recipe, disturb: int, train, *args, **kwargs) -> dict:
    """The parameters ``train(*args, **kwargs)`` builds, before any training step: ``recipe``'s
    Trainer is replaced by one that does not train, and the global RNG is set to ``disturb``
    first (what earlier notebook cells leave behind)."""

    class Untrained:
        def __init__(self, model, *a, **k):
            self.model = model

        def fit(self, *a, **k):
            return []

    monkeypatch.setattr(recipe, "Trainer", Untrained)
    torch.manual_seed(disturb)
    model = train(*args, **kwargs)[0]
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    """Two state dicts with the same keys and bit-identical tensors (same code path)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
