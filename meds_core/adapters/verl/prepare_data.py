"""Build the MEDS recipe's parquet files in veRL's RL schema.

train: DAPO-Math-17K merged with MATH (lighteval) levels 3-5, deduplicated on the normalised problem text;
val:   AIME 2024.
Every row: ``data_source`` (``math_dapo`` / ``aime2024``: both scored by veRL's ``math_dapo`` rule, which sets
``acc``), ``prompt`` (one user message: the problem + the Qwen-Math instruction), ``ability``,
``reward_model = {"style": "rule", "ground_truth": answer}``, ``extra_info = {"index": i, "split", "source"}`` with
``index`` stable for a given source snapshot (rows sorted by their problem text before numbering), MEDS's memory key.

    python -m meds_core.adapters.verl.prepare_data --out ~/data/meds     # needs `datasets` and the HF hub
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from meds_core.evaluation.grading import last_boxed
from meds_core.evaluation.math_eval import QWEN_MATH_INSTRUCTION

__all__ = ["INSTRUCTION", "build_train", "build_val", "main", "verl_row", "write_parquet"]

INSTRUCTION = QWEN_MATH_INSTRUCTION  # the evaluation's prompt line, so training and evaluation prompts match
DAPO = ("open-r1/DAPO-Math-17k-Processed", "en", "train")  # columns: prompt (problem), solution (answer)
MATH = ("DigitalLearningGmbH/MATH-lighteval", "default", "train")  # problem, solution (with \boxed{}), level
AIME = ("HuggingFaceH4/aime_2024", "default", "train")  # problem, answer
LEVELS = ("Level 3", "Level 4", "Level 5")


def _norm(problem: str) -> str:
    return re.sub(r"\s+", " ", problem).strip().lower()


def verl_row(problem: str, answer: str, source: str, data_source: str, split: str, index: int) -> dict[str, Any]:
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": f"{problem.strip()}\n{INSTRUCTION}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(answer).strip()},
        "extra_info": {"index": index, "split": split, "source": source},
    }


def build_train(dapo: Iterable[Mapping[str, Any]], math: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """DAPO rows (``prompt``, ``solution``) + MATH rows (``problem``, ``solution``, ``level``) of levels 3-5 ->
    deduplicated veRL rows sorted by problem text, ``extra_info.index`` = position. Of duplicates (same normalised
    problem) the DAPO one is kept, then the smallest (problem, answer), so the result ignores source row order."""
    best: dict[str, tuple[int, str, str, str]] = {}

    def offer(problem: str, answer: str, rank: int, source: str) -> None:
        if problem.strip() and answer.strip():
            key, cand = _norm(problem), (rank, problem, answer, source)
            if key not in best or cand < best[key]:
                best[key] = cand

    for r in dapo:
        offer(str(r["prompt"]), str(r["solution"]), 0, "dapo_math_17k")
    for r in math:
        if r.get("level") in LEVELS:
            offer(str(r["problem"]), (last_boxed(str(r["solution"])) or "").strip(), 1, "math_lighteval")
    items = sorted(best.items())
    return [verl_row(p, a, src, "math_dapo", "train", i) for i, (_, (_, p, a, src)) in enumerate(items)]


def build_val(aime: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """AIME-2024 rows (``problem``, ``answer``) -> veRL rows, ``extra_info.index`` in source order."""
    return [verl_row(str(r["problem"]), str(r["answer"]), "aime_2024", "aime2024", "test", i)
            for i, r in enumerate(aime)]


def write_parquet(rows: list[dict[str, Any]], path: str) -> None:
    """Rows -> parquet (pyarrow); the parent folder is created."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError(f"no rows to write to {path}; check the source datasets.")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _load(spec: tuple[str, str, str]):
    from datasets import load_dataset

    name, config, split = spec
    return load_dataset(name, config, split=split)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder for train.parquet and aime24.parquet")
    args = parser.parse_args(argv)
    train = build_train(_load(DAPO), _load(MATH))
    val = build_val(_load(AIME))
    write_parquet(train, os.path.join(args.out, "train.parquet"))
    write_parquet(val, os.path.join(args.out, "aime24.parquet"))
    print(f"wrote {len(train)} training and {len(val)} validation rows to {args.out}")


if __name__ == "__main__":
    main()
