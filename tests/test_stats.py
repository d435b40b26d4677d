import math

import pytest

from corrlib.stats import compare, mean_sem, spread_markdown


def test_mean_sem_by_hand():
    mean, se = mean_sem([1.0, 2.0, 3.0])  # sd = 1 (ddof 1), se = 1 / sqrt(3)
    assert mean == 2.0 and se == pytest.approx(1 / math.sqrt(3))
    assert mean_sem([0.5]) == (0.5, None)


def test_compare_wording_by_two_standard_errors():
    a, b = [1.0, 2.0, 3.0], [0.0, 1.0, 2.0]  # diff 1, se = sqrt(2/3) = 0.816: 1 < 1.63
    d = compare(a, b, "x", "y")
    assert d.diff == 1.0 and d.se == pytest.approx(math.sqrt(2 / 3))
    assert not d.measurable and "no measurable difference" in d.describe("PCK")
    far = compare([10.0, 11.0, 12.0], b, "x", "y")  # diff 10 > 1.63
    assert far.measurable and far.describe("PCK").endswith("x is better (> 2 s.e.)")
    assert far.describe("FPR95", higher_is_better=False).endswith("y is better (> 2 s.e.)")
    one = compare([1.0], [0.0], "x", "y")
    assert one.se is None and not one.measurable and "one seed" in one.describe()


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="no value"):
        mean_sem([])
    with pytest.raises(ValueError, match="non-finite"):
        mean_sem([1.0, float("nan")])


def test_spread_markdown():
    text = spread_markdown(
        {"full": {"PCK": [0.5, 0.5, 0.5]}, "one": {"PCK": [0.25]}, "none": {}}, ["PCK"]
    )
    assert "| full | 0.500 ± 0.000 | 3 |" in text and "| one | 0.250 | 1 |" in text
    assert "| none | - | 0 |" in text
