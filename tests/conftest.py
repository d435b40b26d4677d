"""Shared pytest fixtures: the real benchmark data for tests marked ``realdata``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The lab presets must not depend on what this machine's torch hub cache holds (a chapter's `lab`
# takes ImageNet features when their file is cached): tests see the offline lab unless they set
# CORRLIB_LAB_TRUNK themselves (tests/test_lab_imagenet.py).
os.environ["CORRLIB_LAB_TRUNK"] = "offline"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data root: ``$CORRLIB_DATA`` if set, else ``<repo>/../shared/data`` if it exists.

    Missing data skips the test, except when ``CI=true``: there it fails, so CI cannot go green
    without running the real-data tests.
    """
    env = os.environ.get("CORRLIB_DATA", "").strip()
    candidate = Path(env).expanduser() if env else REPO.parent / "shared" / "data"
    if candidate.is_dir():
        return candidate
    where = f"CORRLIB_DATA={env} (not a folder)" if env else f"{candidate} (does not exist)"
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"CI=true but the real data was not found: {where}. Set CORRLIB_DATA to the folder "
            "that holds PF-WILLOW/, PF-PASCAL/, TSS/ (see the README)."
        )
    pytest.skip(f"real data not found: set CORRLIB_DATA=... (see README); looked at {where}")


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test (restored after): tiny models and tensors run far
    faster single-threaded on a busy 2-core machine than with OpenMP spinning on both cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def warm_optimizer():
    """The first ``torch.optim`` optimizer of a process imports ``torch._dynamo`` (seconds, once):
    pay it in set-up so that no single test carries it."""
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
