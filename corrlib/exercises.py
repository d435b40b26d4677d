"""What every exercise check shares; the checks themselves live with their chapter's recipe.

Each ``check_*`` (``corrlib.recipes.<chapter>.check_*``) takes the student's function, runs it on
cases with known answers and returns a one-line verdict: ``"pass: ..."``,
``"not attempted yet: ..."`` (the function raised ``NotImplementedError``) or ``"wrong: ..."``
saying what differs. It never raises, so a notebook runs top to bottom before it is solved.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["as_number", "run_student"]


def run_student(fn: Callable, *args):
    """``(fn(*args), None)``, or ``(None, verdict)`` when the student's function raised, or
    is corrlib's own (an exercise is passed by writing the code, not by importing it)."""
    module = getattr(fn, "__module__", None) or ""
    if module == "corrlib" or module.startswith("corrlib."):
        return None, (
            f"wrong: this is corrlib's own function ({module}.{getattr(fn, '__name__', '?')}); "
            "the exercise is to write it yourself."
        )
    try:
        return fn(*args), None
    except NotImplementedError:
        return None, "not attempted yet: replace the `raise NotImplementedError` with your code."
    except Exception as e:  # a student's bug is reported, not raised
        return None, f"wrong: your function raised {type(e).__name__}: {e}"


def as_number(got) -> tuple[float | None, str | None]:
    """A student's return value as a float, or a "wrong: ..." verdict (never raises)."""
    try:
        return float(got), None
    except Exception:  # None, a string, a tensor of several numbers...
        return None, f"wrong: expected a single number, got {type(got).__name__}."
