"""prepare_data on small local datasets: schema veRL reads, dedup, MATH levels, boxed answers, stable indices."""

from __future__ import annotations

import pytest

pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

from meds_core.adapters.verl.prepare_data import INSTRUCTION, build_train, build_val, write_parquet  # noqa: E402,I001
from meds_core.evaluation.grading import last_boxed  # noqa: E402

DAPO = datasets.Dataset.from_dict({"prompt": ["What is 1+1?", "Find x if 2x=6.", "  what is 1+1? "],
                                   "solution": ["2", "3", "2"]})
MATH = datasets.Dataset.from_dict({
    "problem": ["Compute $\\frac{1}{2}+\\frac{1}{2}$.", "Easy one: 3+4?", "Find x if 2x=6.", "Hard: sqrt(16)?"],
    "solution": ["It is $\\boxed{1}$.", "So $\\boxed{7}$.", "x = $\\boxed{3}$",
                 "Then \\boxed{\\sqrt{16}=4} so \\boxed{4}"],
    "level": ["Level 3", "Level 1", "Level 5", "Level 4"]})
AIME = datasets.Dataset.from_dict({"problem": ["AIME problem one.", "AIME problem two."], "answer": ["204", "25"]})


def test_boxed_answer_nested_and_last():
    """Reference answers use the graders' parser: the last closed box; a truncated last box gives the one before."""
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{1} then \\boxed{2}") == "2"
    assert last_boxed("no box") is None and last_boxed("\\boxed{open") is None
    assert last_boxed("\\boxed{1} then \\boxed{2") == "1"


def test_train_and_val_parquet(tmp_path):
    train = build_train(DAPO, MATH)
    problems = [r["prompt"][0]["content"].split("\n")[0] for r in train]
    # DAPO duplicate (case/space) and the MATH copy of a DAPO problem dropped; level 1 dropped
    assert len(train) == 4 and "Easy one: 3+4?" not in problems
    assert sorted(r["reward_model"]["ground_truth"] for r in train) == ["1", "2", "3", "4"]
    assert [r["extra_info"]["index"] for r in train] == [0, 1, 2, 3]
    assert all(r["prompt"][0]["content"].endswith(INSTRUCTION) and r["data_source"] == "math_dapo" for r in train)
    # the index of a problem does not depend on source order
    assert build_train(DAPO.select([2, 1, 0]), MATH.select([3, 2, 1, 0])) == train

    write_parquet(train, str(tmp_path / "train.parquet"))
    write_parquet(build_val(AIME), str(tmp_path / "aime24.parquet"))
    rows = pq.read_table(tmp_path / "train.parquet").to_pylist()
    assert rows == train
    val = pq.read_table(tmp_path / "aime24.parquet").to_pylist()
    assert [v["reward_model"]["ground_truth"] for v in val] == ["204", "25"]
    assert {v["data_source"] for v in val} == {"aime2024"}


def test_rows_score_with_verl_rule():
    """The data sources route to veRL's math_dapo rule, which reports the `acc` MEDS reads."""
    pytest.importorskip("verl")
    from verl.utils.reward_score import default_compute_score

    row = build_val(AIME)[0]
    truth = row["reward_model"]["ground_truth"]
    out = default_compute_score(row["data_source"], "so the answer is \\boxed{204}", truth)
    assert out["acc"] is True and out["score"] == 1.0
