"""Spread over seeds, and how a difference is worded by it.

A claim that rests on a difference (an ablation, "mining helps") is evidence only when the
difference exceeds the noise of training: here, when ``|mean_a - mean_b|`` is at least two
standard errors of the difference, ``2 * sqrt(se_a^2 + se_b^2)``, with ``se = sd / sqrt(n)``
over ``n >= 2`` seeds (sample standard deviation, ``ddof = 1``). Anything smaller is worded
"no measurable difference"; one seed gives no spread and no verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Difference", "compare", "mean_sem", "spread_markdown"]


def _values(values: Sequence[float], what: str) -> list[float]:
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError(f"{what}: no value given (one per seed).")
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{what}: non-finite values {bad}; every seed needs a number.")
    return vals


def mean_sem(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean over seeds.

    Args:
        values: one number per seed (finite).

    Returns:
        ``(mean, se)``; ``se = stdev(ddof=1) / sqrt(n)``, None for a single value.
    """
    vals = _values(values, "mean_sem")
    n = len(vals)
    mean = math.fsum(vals) / n
    if n < 2:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in vals) / (n - 1)
    return mean, math.sqrt(var / n)


@dataclass(frozen=True)
class Difference:
    """``a - b`` over seeds: ``diff`` (difference of the means), ``se`` (its standard error,
    None with a single seed on either side), ``n_a``/``n_b`` (seeds)."""

    a: str
    b: str
    diff: float
    se: float | None
    n_a: int
    n_b: int

    @property
    def measurable(self) -> bool:
        """True when ``|diff| >= 2 se`` (and a spread exists)."""
        return self.se is not None and abs(self.diff) >= 2 * self.se

    def describe(self, metric: str = "", *, higher_is_better: bool = True, digits: int = 3) -> str:
        """One sentence: the difference, its standard error, and the verdict.

        E.g. ``"hard-negatives vs random-negatives: +0.180 ± 0.012 PCK@0.05 (3 vs 3 seeds):
        hard-negatives is better (> 2 s.e.)"`` or ``"...: no measurable difference (< 2 s.e.)"``.
        """
        unit = f" {metric}" if metric else ""
        head = f"{self.a} vs {self.b}: {self.diff:+.{digits}f}"
        if self.se is None:
            return f"{head}{unit} (one seed: no spread, not read as evidence)"
        head += f" ± {self.se:.{digits}f}{unit} ({self.n_a} vs {self.n_b} seeds): "
        if not self.measurable:
            return head + "no measurable difference (< 2 s.e.)"
        better = self.a if (self.diff > 0) == higher_is_better else self.b
        return head + f"{better} is better (> 2 s.e.)"


def compare(a_values: Sequence[float], b_values: Sequence[float], a="a", b="b") -> Difference:
    """The difference of two groups of per-seed numbers, with its standard error.

    Args:
        a_values, b_values: one number per seed for each (the same seeds, or independent ones).
        a, b: their names (for :meth:`Difference.describe`).

    Returns:
        A :class:`Difference`: ``diff = mean(a) - mean(b)``, ``se = sqrt(se_a^2 + se_b^2)``.
    """
    ma, sa = mean_sem(a_values)
    mb, sb = mean_sem(b_values)
    se = None if sa is None or sb is None else math.sqrt(sa**2 + sb**2)
    return Difference(a, b, ma - mb, se, len(a_values), len(b_values))


def spread_markdown(results: dict, metrics: Sequence[str], digits: int = 3) -> str:
    """A markdown table of mean ± standard error per row and metric.

    Args:
        results: ``{row name: {metric: [one value per seed]}}``.
        metrics: the columns, in order.
        digits: decimals shown.

    Returns:
        The table: ``| variant | <metric> ... | seeds |``, cells ``mean ± se`` (``mean`` alone
        with one seed; ``-`` where a row has no such metric).
    """
    lines = [
        "| variant | " + " | ".join(metrics) + " | seeds |",
        "|---|" + "---:|" * len(metrics) + "---:|",
    ]
    for name, per_metric in results.items():
        cells, n = [], 0
        for m in metrics:
            if m not in per_metric:
                cells.append("-")
                continue
            mean, se = mean_sem(per_metric[m])
            n = len(per_metric[m])
            cells.append(f"{mean:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)
