"""Grading of math completions against a reference answer: math-verify, or exact match of the last \\boxed{}.

What is compared (both backends):

* the prediction is the content of the LAST closed ``\\boxed{...}`` of the completion (the same answer MEDS reads
  its feature at); a completion with no closed ``\\boxed{}`` is handed whole to math-verify, which extracts an
  answer itself (a final number, a LaTeX expression), and is wrong under the exact backend;
* the reference answer is wrapped in ``\\boxed{}`` unless it already holds ``\\boxed`` or ``$``: math-verify does
  not parse bare LaTeX such as ``(1,2]`` or ``\\sqrt{2}``, and reads a bare ``1,2`` as the number 1.2.

math-verify decides equivalence symbolically (``\\frac{1}{2}`` = ``1/2`` = ``0.5``, intervals by their ends,
``5 \\text{ cm}`` = ``5``, ``50\\%`` = ``0.5``); ``tests/test_grading.py`` pins what it accepts. Without it the
exact backend compares normalised strings (spaces, ``$``, ``\\left``/``\\right``, ``\\dfrac`` and a trailing
period removed) and warns ONCE that it does.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["GRADERS", "Grader", "graded_text", "last_boxed", "math_verify_available"]

GRADERS = ("auto", "math-verify", "exact")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_warned_fallback = False


def last_boxed(text: str) -> str | None:
    """Content of the last closed ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; None if none.

    A ``\\boxed{`` whose brace never closes (a truncated completion) is skipped and the previous one is taken.
    """
    found = None
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found = text[m.end():i - 1]
    return found


def graded_text(response_prefix: str, generated: str) -> str:
    """The text a grader sees for one completion: the forced ``response_prefix`` followed by the generated text.

    When the prefix opens a ``\\boxed{`` that the generated text never closes (``--response-prefix '\\boxed{'``
    with a budget of one answer token), the box is closed, so ``'\\boxed{'`` + ``'7'`` is graded as
    ``\\boxed{7}``. A box the generated text opens itself and never closes stays unclosed (a truncated answer).

    Parameters
    ----------
    response_prefix : str
        Text forced at the start of every response ('' for none).
    generated : str
        The decoded generated tokens.

    Returns
    -------
    str
    """
    full = response_prefix + generated
    opened = [m for m in _BOXED.finditer(full) if m.start() < len(response_prefix)]
    if not opened:
        return full
    depth, i = 1, opened[-1].end()
    while i < len(full) and depth:
        depth += {"{": 1, "}": -1}.get(full[i], 0)
        i += 1
    return full + "}" * depth


_SPACES = re.compile(r"\s+|\\[,;:! ]|\\left|\\right")


def _normalise(answer: str) -> str:
    """Exact-match form: no whitespace or LaTeX spacing, no ``$``, ``\\dfrac``/``\\tfrac`` -> ``\\frac``, no
    final period."""
    s = _SPACES.sub("", answer.replace("$", ""))
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return s.rstrip(".")


def math_verify_available() -> bool:
    """True when the optional math-verify package imports."""
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return False
    return True


class Grader:
    """Decides whether completions answer a problem correctly.

    Parameters
    ----------
    backend : {'auto', 'math-verify', 'exact'}
        'auto' uses math-verify when it is installed, else the exact match with one warning; 'math-verify'
        requires it.

    Attributes
    ----------
    name : str
        The backend in use: 'math-verify' or 'exact'.
    """

    def __init__(self, backend: str = "auto"):
        global _warned_fallback
        if backend not in GRADERS:
            raise ValueError(f"grader backend {backend!r} is not valid; use one of {list(GRADERS)}.")
        available = math_verify_available()
        if backend == "math-verify" and not available:
            raise ImportError("grader 'math-verify' needs the math-verify package: "
                              "pip install 'math-verify[antlr4_13_2]', or pass grader='exact'.")
        if backend == "auto" and not available:
            if not _warned_fallback:
                warnings.warn("math-verify is not installed: grading by exact match of the last \\boxed{} content "
                              "(pip install 'math-verify[antlr4_13_2]' for symbolic equivalence).", stacklevel=2)
                _warned_fallback = True
            backend = "exact"
        self.name = "math-verify" if backend in ("auto", "math-verify") else "exact"

    def grade(self, completions: Sequence[str], answer: Any) -> list[bool]:
        """Correctness of each completion for one reference answer.

        Parameters
        ----------
        completions : sequence of str
            Generated text (the response only).
        answer : str (other types are converted with ``str``)
            Reference answer, bare (``\\frac{1}{2}``) or boxed / in ``$...$``.

        Returns
        -------
        list of bool, one per completion
        """
        gold = str(answer).strip()
        if self.name == "exact":
            ref = _normalise(last_boxed(gold) or gold)
            return [(b := last_boxed(c)) is not None and _normalise(b) == ref for c in completions]
        from math_verify import parse, verify

        gold_parsed = parse(gold if ("\\boxed" in gold or "$" in gold) else f"\\boxed{{{gold}}}")
        if not gold_parsed:  # do not abort a long evaluation: grade this problem by exact match
            warnings.warn(f"math-verify cannot parse the reference answer {gold!r}; grading this problem by exact "
                          "match of the last \\boxed{} content.", stacklevel=2)
            ref = _normalise(last_boxed(gold) or gold)
            return [(b := last_boxed(c)) is not None and _normalise(b) == ref for c in completions]
        out = []
        for c in completions:
            b = last_boxed(c)
            pred = parse(f"\\boxed{{{b}}}" if b is not None else c)
            out.append(bool(pred) and bool(verify(gold_parsed, pred)))
        return out

    def __call__(self, completion: str, answer: Any) -> bool:
        """Correctness of one completion."""
        return self.grade([completion], answer)[0]

    def __repr__(self) -> str:
        return f"Grader({self.name!r})"
