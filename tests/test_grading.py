"""The grader on tricky answers: what math-verify 0.9 accepts (pinned) and the exact-match fallback."""

from __future__ import annotations

import warnings

import pytest

import meds_core.evaluation.grading as grading
from meds_core.evaluation.grading import Grader, last_boxed

# (reference answer, completion, math-verify verdict, exact-match verdict), measured with math-verify 0.9.0
CASES = [
    # fractions: \frac vs / vs decimals vs unreduced
    ("\\frac{1}{2}", "The answer is \\boxed{1/2}.", True, False),
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", True, True),
    ("\\frac{1}{2}", "\\boxed{0.5}", True, False),
    ("1/2", "\\boxed{\\frac12}", True, False),
    ("\\frac{2}{4}", "\\boxed{\\frac{1}{2}}", True, False),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", False, False),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt3}{2}}", True, False),
    # intervals: ends and brackets both matter
    ("(1,2]", "\\boxed{(1, 2]}", True, True),
    ("(1,2]", "\\boxed{[1, 2]}", False, False),
    ("(1,2]", "\\boxed{(1, 2)}", False, False),
    ("(-\\infty, 3)", "\\boxed{(-\\infty,3)}", True, True),
    ("[1,2]\\cup[3,4]", "\\boxed{[1,2] \\cup [3,4]}", True, True),
    # units, degrees, percent: dropped, but never converted
    ("5", "\\boxed{5 \\text{ cm}}", True, False),
    ("5 \\text{ cm}", "\\boxed{5}", True, False),
    ("5\\text{ cm}", "\\boxed{6\\text{ cm}}", False, False),
    ("5 \\text{ cm}", "\\boxed{50 \\text{ mm}}", False, False),
    ("10^\\circ", "\\boxed{10}", True, False),
    ("50\\%", "\\boxed{0.5}", True, False),
    ("1000", "\\boxed{1,000}", True, False),
    # numeric closeness: 6 decimals
    ("\\sqrt{2}", "\\boxed{\\sqrt 2}", True, False),
    ("\\sqrt{2}", "\\boxed{1.4142135}", True, False),
    ("\\sqrt{2}", "\\boxed{1.41}", False, False),
    ("2\\pi", "\\boxed{6.2832}", False, False),
    # sets, equations, choices
    ("1,2", "\\boxed{2, 1}", True, False),
    ("3", "\\boxed{x=3}", True, False),
    ("\\text{(A)}", "\\boxed{A}", True, False),
    # which answer is graded: the LAST closed \boxed{}; none -> math-verify's own extraction from the text
    ("7", "\\boxed{8} then \\boxed{7}", True, True),
    ("7", "\\boxed{7} then \\boxed{8}", False, False),
    ("7", "\\boxed{7} then \\boxed{8", True, True),  # an unclosed (truncated) box is skipped
    ("7", "\\boxed{7", False, False),
    ("7", "The answer is 7", True, False),
    ("7", "no answer", False, False),
    # reference answers already boxed or in $...$
    ("\\boxed{7}", "\\boxed{7}", True, True),
    ("$7$", "\\boxed{7}", True, True),
]


@pytest.mark.parametrize("gold, completion, mv, exact", CASES)
def test_math_verify_verdicts_are_pinned(gold, completion, mv, exact):
    pytest.importorskip("math_verify")
    assert Grader("math-verify")(completion, gold) is mv
    assert Grader("exact")(completion, gold) is exact


def test_grade_batch_and_non_string_answers():
    pytest.importorskip("math_verify")
    g = Grader()
    assert g.name == "math-verify"
    assert g.grade(["\\boxed{12}", "\\boxed{13}", "12"], 12) == [True, False, True]
    assert Grader("exact").grade(["\\boxed{12}", "12"], 12) == [True, False]


def test_last_boxed():
    assert last_boxed("a \\boxed{x^{2}} b \\boxed{\\frac{1}{2}") == "x^{2}"
    assert last_boxed("\\fbox{3} and \\boxed {4}") == "4"
    assert last_boxed("nothing") is None
    assert last_boxed("\\boxed{}") == ""


def test_fallback_warns_once(monkeypatch):
    monkeypatch.setattr(grading, "math_verify_available", lambda: False)
    monkeypatch.setattr(grading, "_warned_fallback", False)
    with pytest.warns(UserWarning, match="math-verify is not installed") as record:
        g1, g2 = Grader(), Grader()
    assert len(record) == 1 and g1.name == g2.name == "exact"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Grader()
    with pytest.raises(ImportError, match="pip install 'math-verify"):
        Grader("math-verify")


def test_unknown_backend():
    with pytest.raises(ValueError, match="'sympy' is not valid"):
        Grader("sympy")
