"""MathVerify: equivalent answers verify, different ones do not, and no check outlives its limit."""

from __future__ import annotations

import threading
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k15.reward.math import MathVerify

verifier = MathVerify()


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("The answer is \\boxed{0.5}", "1/2"),  # decimal vs fraction
        ("So the probability is 1/2", "\\frac{1}{2}"),  # a/b vs \frac, no box
        ("\\boxed{\\frac{2}{4}}", "0.5"),  # unreduced
        ("\\boxed{\\dfrac{3}{4}}", "3/4"),
        ("\\boxed{1+x^2}", "x^2+1"),  # commuted
        ("\\boxed{2x+2}", "2(x+1)"),  # expanded
        ("$\\boxed{2^{1/2}}$", "\\sqrt{2}"),
        ("The area is \\boxed{12 \\text{ cm}^2}", "12"),  # units dropped
        ("The answer is $1,000$.", "1000"),
        ("\\boxed{\\{2,1\\}}", "\\{1,2\\}"),  # sets are unordered
        ("$\\boxed{[0,1)}$", "[0,1)"),  # intervals
        ("\\boxed{x=3}", "3"),
        ("First I get 5. No wait: \\boxed{3}", "3"),  # the boxed answer wins
    ],
)
def test_equivalent(completion, answer):
    assert verifier(completion, answer)


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("\\boxed{-1/2}", "1/2"),
        ("\\boxed{0.3333}", "1/3"),  # floats compare to 6 decimal places
        ("\\boxed{x^2-1}", "x^2+1"),
        ("\\boxed{(1,2)}", "(1,2]"),  # open vs half-open interval
        ("\\boxed{\\{1,2,3\\}}", "\\{1,2\\}"),
        ("\\boxed{\\sqrt{3}}", "\\sqrt{2}"),
    ],
)
def test_not_equivalent(completion, answer):
    assert not verifier(completion, answer)


def test_no_answer_is_wrong():
    assert verifier.extract("I am not sure how to go on") is None
    assert not verifier("I am not sure how to go on", "3")
    assert not verifier("", "3")


def test_extract_prefers_boxed():
    assert verifier.extract("The answer is 5, I think. \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"


def test_marker_on_the_tiny_task_format():
    tiny = MathVerify(marker="A:")
    assert tiny("7+8+0=15,2+4+1=7,1+0+0=1,A:175", "175")
    assert tiny.extract("7+8+0=15,A:12 A:125") == "125"  # after the last marker
    assert not tiny("7+8+0=15,A:124", "125")
    assert not tiny("7+8+0=15,2+4+1=7", "15")  # no marker: unfinished, even with 15 in the text
    assert not verifier("7+8+0=15,A:125", "125")  # without the marker the first sum is taken


def test_a_slow_check_is_cut_off_and_counted(monkeypatch):
    """The timer is what bounds a check. How long latex2sympy takes on a hostile input depends on the
    machine (deep nesting can also fail fast on the recursion limit), so the slow step here is a
    verify that would sleep for a minute."""
    import time

    bounded = MathVerify(timeout_seconds=0.3)
    monkeypatch.setattr("k15.reward.math.verify", lambda *args, **kwargs: time.sleep(60))
    start = time.monotonic()
    assert not bounded("\\boxed{1}", "1")
    assert time.monotonic() - start < 30
    assert bounded.take_counts() == {"checks": 1, "timeouts": 1, "errors": 0, "unbounded": 0}
    monkeypatch.undo()
    assert bounded("\\boxed{1}", "1")  # the timer is cleared: later checks run normally
    assert bounded.take_counts() == {"checks": 1, "timeouts": 0, "errors": 0, "unbounded": 0}  # taken: reset


def test_off_main_thread_runs_unbounded_and_is_counted():
    threaded = MathVerify()
    results = []
    worker = threading.Thread(target=lambda: results.append(threaded("\\boxed{0.5}", "1/2")))
    worker.start()
    worker.join()
    assert results == [True]
    counts = threaded.take_counts()
    assert counts["unbounded"] == 1 and counts["errors"] == 0


def renderings(value: Fraction, scale: int) -> list[str]:
    """Equivalent LaTeX spellings of value: \\frac, a/b, unreduced, and decimal when it terminates."""
    p, q = value.numerator, value.denominator
    out = [f"\\frac{{{p}}}{{{q}}}", f"{p}/{q}", f"\\frac{{{p * scale}}}{{{q * scale}}}"]
    if q == 1:
        out.append(str(p))
    elif _terminates(q):
        out.append(str(Decimal(p) / Decimal(q)))
    return out


def _terminates(q: int) -> bool:
    for f in (2, 5):
        while q % f == 0:
            q //= f
    return q == 1


fractions = st.builds(Fraction, st.integers(-999, 999), st.integers(1, 400))


@settings(max_examples=40, deadline=None)
@given(value=fractions, scale=st.integers(2, 9), data=st.data())
def test_property_fraction_renderings_verify(value, scale, data):
    rendering = data.draw(st.sampled_from(renderings(value, scale)))
    reference = f"{value.numerator}/{value.denominator}" if value.denominator > 1 else str(value.numerator)
    assert verifier(f"So the answer is \\boxed{{{rendering}}}.", reference), rendering
    different = value + Fraction(1, value.denominator)  # at least 1/400 away: beyond rounding
    assert not verifier(f"\\boxed{{{different.numerator}/{different.denominator}}}", reference)
