"""What every model adapter shares: reading a decoded answer as CODI's evaluation does."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("decoded", "expected", "right"),
    [
        ("The answer is: 72.0", "72", True),  # numbers compare as numbers
        ("72", "72.0", True),
        ("1,000", "1000", True),
        ("The answer is: 7 2", "72", False),  # CODI reads the last number: 2
        ("-3", "-3", True),
        ("18 apples, so 19", "18", False),
        ("no number", "18", False),
        ("Yes", "Yes", True),  # non-numeric answers compare as text
        ("Yes.", "Yes", False),
    ],
)
def test_answers_compare_as_codi_evaluation_does(decoded, expected, right):
    from nnpatch.models.text import answer_is

    assert answer_is(decoded, expected) is right
