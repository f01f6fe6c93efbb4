"""MathVerify: is a completion's final answer mathematically equal to the reference answer?

Extraction and equivalence are HuggingFace's ``math-verify`` (LaTeX → SymPy): ``\\frac{1}{2}``,
``1/2`` and ``0.5`` are one answer, as are ``x^2+1`` and ``1+x^2``, ``\\{1,2\\}`` and ``\\{2,1\\}``.
No LaTeX is parsed here.

Time limit. SymPy can run for minutes on a hostile completion (deep nesting, huge powers), and a
reward must not stall training. math-verify's own timeouts are per parse and per compared pair
(up to six a check) and swallow the timeout into a plain False, so here its timeouts are switched
off and one ``SIGALRM`` timer bounds the whole check instead; a check that runs out of time or
raises is wrong and counted (``timeouts``, ``errors``; logged as ``reward/verifier/*``). Signal handlers can
only be set from the main thread, so a check called from another thread runs unbounded, counted
in ``unbounded`` (Lightning calls the reward from the main thread). The alarm interrupts Python
code only: one long C call (a huge integer power) finishes before the timeout fires.
(math-verify logs once that its timeout is disabled: that is this choice, not a fault.)
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Literal

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

from k15.reward.answer import Verdict, Verifier, final_answer

Target = Literal["latex", "expr"]


@contextmanager
def _time_limit(seconds: float):
    """Raise math-verify's TimeoutException in the main thread after ``seconds``.

    A BaseException, so the ``except Exception`` blocks inside math-verify and latex2sympy cannot
    swallow it and carry on.
    """

    def on_alarm(signum, frame):
        raise TimeoutException(f"math check exceeded {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)  # setitimer, unlike alarm, takes fractions
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class MathVerify(Verifier):
    """Correct iff the completion's final answer is mathematically equivalent to the reference.

    Args:
        targets: what counts as an answer in a completion: ``"latex"`` (``\\boxed{…}``, ``$…$``,
            "the final answer is …") and/or ``"expr"`` (plain numbers and expressions like ``3/4``).
        prefer_boxed: a ``\\boxed{…}`` answer wins over any other match in the completion.
        marker: if set, only the text after its last occurrence is searched (``"A:"`` for the tiny
            addition task); a completion without it is wrong.
        timeout_seconds: wall-clock limit on one check (extraction, reference parse, comparison).
        float_rounding: decimal places floats are rounded to before comparison.
    """

    counted = ("checks", "timeouts", "errors", "unbounded")

    def __init__(
        self,
        targets: list[Target] | None = None,
        prefer_boxed: bool = True,
        marker: str | None = None,
        timeout_seconds: float = 5.0,
        float_rounding: int = 6,
    ):
        targets = targets or ["latex", "expr"]
        configs = {
            "latex": LatexExtractionConfig(boxed_match_priority=0 if prefer_boxed else 50),
            "expr": ExprExtractionConfig(),
        }
        self.extraction_config = [configs[t] for t in targets]
        self.marker = marker
        self.timeout_seconds = timeout_seconds
        self.float_rounding = float_rounding

    def _region(self, completion: str) -> str | None:
        return completion if self.marker is None else final_answer(completion, self.marker)

    def _parse_completion(self, completion: str) -> list:
        """math-verify's parse: [sympy object, matched text], or [] when nothing is found."""
        region = self._region(completion)
        if region is None:
            return []
        return parse(region, self.extraction_config, parsing_timeout=None, raise_on_error=True)

    def _parse_answer(self, answer: str) -> list:
        # References are bare ("1/2", "x^2+1", "\\sqrt{2}"); boxing them lets the LaTeX parser
        # take what plain-expression extraction cannot (powers, commands, sets, intervals).
        text = answer if "\\boxed" in answer or "$" in answer else f"\\boxed{{{answer.strip()}}}"
        return parse(text, [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=None, raise_on_error=True)

    def _check(self, completion: str, answer: str) -> Verdict:
        predicted = self._parse_completion(completion)
        if not predicted:
            return Verdict(False, "no_answer")
        equal = verify(
            self._parse_answer(answer),
            predicted,
            float_rounding=self.float_rounding,
            timeout_seconds=None,
            raise_on_error=True,
        )
        return Verdict(True, "match") if equal else Verdict(False, "mismatch")

    def _bounded(self, fn, *args):
        """fn(*args) under the time limit; a timeout or exception is counted and returned as a
        reason ("timeout", "error")."""
        try:
            if threading.current_thread() is threading.main_thread() and self.timeout_seconds > 0:
                with _time_limit(self.timeout_seconds):
                    return fn(*args)
            self.count("unbounded")
            return fn(*args)
        except TimeoutException:
            self.count("timeouts")
            return "timeout"
        except Exception:  # noqa: BLE001 - any failure of SymPy on model output is a wrong answer
            self.count("errors")
            return "error"

    def extract(self, completion: str) -> str | None:
        """The matched answer text, e.g. ``"\\frac{1}{2}"``; None if there is none."""
        predicted = self._bounded(self._parse_completion, completion)
        return str(predicted[-1]) if isinstance(predicted, list) and predicted else None

    def judge(self, question: str, completion: str, answer: str) -> Verdict:
        self.count("checks")
        verdict = self._bounded(self._check, completion, answer)
        return verdict if isinstance(verdict, Verdict) else Verdict(False, verdict)
