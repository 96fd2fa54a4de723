"""Problem files for evaluation: jsonl or parquet, plain (``problem``/``answer``) or veRL's schema.

Accepted rows (one problem per row):

* plain: ``{"problem": str, "answer": str}``;
* veRL: ``{"prompt": [{"role": ..., "content": ...}, ...] or str, "reward_model": {"ground_truth": str}}``
  (the chat prompt already holds the instruction, so no template is added to it).

Other columns are ignored. Parquet needs pyarrow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from meds_core.step.keys import stable_prompt_key

__all__ = ["Problem", "load_problems"]


@dataclass(frozen=True)
class Problem:
    """One evaluation problem.

    ``text`` is the plain problem (None for a chat prompt); ``messages`` the veRL chat prompt (None for a plain
    problem). ``key`` is stable across runs and changes when the row's prompt or answer changes:
    ``"<index>:<BLAKE2b of prompt and answer>"``.
    """

    dataset: str
    index: int
    text: str | None
    messages: tuple[tuple[str, str], ...] | None  # ((role, content), ...)
    answer: str
    key: str


def _read_rows(path: str) -> list[dict[str, Any]]:
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow (or convert it to .jsonl).") \
                from exc
        return pq.read_table(path).to_pylist()
    if path.endswith((".jsonl", ".json")):
        rows = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{line_no} is not valid JSON ({exc.msg}); write one JSON object "
                                         "per line.") from exc
        return rows
    raise ValueError(f"problem file {path!r} must end in .jsonl, .json (one object per line) or .parquet.")


def _parse_row(row: dict[str, Any], path: str, index: int, dataset: str) -> Problem:
    if not isinstance(row, dict):
        raise ValueError(f"{path} row {index} is a {type(row).__name__}; each row must be an object.")
    text, messages = row.get("problem"), None
    answer = row.get("answer")
    if text is None and "prompt" in row:
        prompt = row["prompt"]
        if isinstance(prompt, str):
            text = prompt
        elif isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) and "content" in m for m in prompt):
            messages = tuple((str(m.get("role", "user")), str(m["content"])) for m in prompt)
        else:
            raise ValueError(f"{path} row {index}: 'prompt' must be a string or a chat list of "
                             f"{{'role', 'content'}} objects, got {prompt!r:.80}.")
    if answer is None and isinstance(row.get("reward_model"), dict):
        answer = row["reward_model"].get("ground_truth")
    if (text is None and messages is None) or answer is None:
        raise ValueError(f"{path} row {index} has columns {sorted(row)}; a problem row needs 'problem' and 'answer', "
                         "or veRL's 'prompt' (chat list) and 'reward_model': {'ground_truth': ...}.")
    if isinstance(answer, (list, tuple)):  # some veRL sets store a list of accepted answers; grade the first
        answer = answer[0]
    answer = str(answer)
    shown = text if text is not None else json.dumps(messages)
    key = f"{index}:{stable_prompt_key(shown + chr(0) + answer)}"
    return Problem(dataset, index, None if text is None else str(text), messages, answer, key)


def load_problems(path: str | os.PathLike, limit: int | None = None) -> list[Problem]:
    """Problems of one file, in file order.

    Parameters
    ----------
    path : str or PathLike
        ``.jsonl`` / ``.json`` (one object per line) or ``.parquet``.
    limit : int, optional
        Keep only the first ``limit`` problems.

    Returns
    -------
    list of Problem
        ``dataset`` is the file name without its extension.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"problem file {path!r} does not exist.")
    dataset = os.path.basename(path).split(".")[0]
    rows = _read_rows(path)
    if limit is not None:
        rows = rows[:limit]
    return [_parse_row(r, path, i, dataset) for i, r in enumerate(rows)]
