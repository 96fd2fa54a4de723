"""The toy task of ``meds demo``: "a + b =" prompts answered as ``\\boxed{ N }``, a word-level tokenizer in which
every number 0..99 is one token, a tiny random Qwen2 policy, and the partial-credit reward.

Because each answer is a single token, the MEDS feature (the logit lens at the answer's first token) describes the
whole answer, and the probability of every possible completion can be computed exactly (:mod:`.evaluate`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MARKER = "\\boxed{"
NUMBERS = [str(n) for n in range(100)]
SPECIALS = ["<pad>", "<eos>", "<unk>"]
SYMBOLS = ["+", "=", MARKER, "}"]
OPERANDS = range(2, 10)  # a, b in 2..9
_ANSWER_RE = re.compile(r"\\boxed\{ (\d{1,2}) \}")


@dataclass
class Task:
    """Training and held prompts of the toy task (fixed by ``task_seed``, independent of the run seeds).

    ``train`` and ``held`` hold (a, b) pairs; the correct answer is a + b.
    """

    train: list[tuple[int, int]]
    held: list[tuple[int, int]]
    seed: int = 0
    vocab: list[str] = field(default_factory=lambda: SPECIALS + SYMBOLS + NUMBERS)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Training pairs first, then held pairs (the row order of every per-prompt array)."""
        return self.train + self.held

    def dataset_rows(self) -> list[dict[str, Any]]:
        """One row per training prompt: ``prompt`` (text), ``answer`` (int), ``prompt_id`` (stable int)."""
        return [{"prompt": prompt_text(a, b), "answer": a + b, "prompt_id": i} for i, (a, b) in enumerate(self.train)]


def make_task(n_train: int = 16, n_held: int = 8, seed: int = 0) -> Task:
    """Pick ``n_train + n_held`` distinct pairs (a, b), a, b in 2..9, without (2, 2) (where a·b = a + b)."""
    pairs = [(a, b) for a in OPERANDS for b in OPERANDS if a * b != a + b]
    if n_train < 1 or n_held < 0 or n_train + n_held > len(pairs):
        raise ValueError(f"n_train={n_train}, n_held={n_held}: need n_train >= 1, n_held >= 0 and "
                         f"n_train + n_held <= {len(pairs)} (the distinct pairs available)")
    pick = np.random.default_rng(seed).permutation(len(pairs))[: n_train + n_held]
    chosen = [pairs[i] for i in pick]
    return Task(train=chosen[:n_train], held=chosen[n_train:], seed=seed)


def prompt_text(a: int, b: int) -> str:
    """``"a + b ="`` (4 tokens)."""
    return f"{a} + {b} ="


def completion_text(n: int) -> str:
    """``"\\boxed{ n }"``: the completion of answer n, before the end-of-sequence token."""
    return f"{MARKER} {n} }}"


def parse_answer(completion: str) -> int | None:
    """The answer of a well-formed completion (``\\boxed{ N }`` and nothing else), else None."""
    m = _ANSWER_RE.fullmatch(completion.strip())
    return int(m.group(1)) if m else None


def partial_credit(answer: int | None, correct: int) -> float:
    """1.0 for the correct answer, 0.5 for a near miss (|answer - correct| = 1), 0.0 otherwise (or malformed)."""
    if answer is None:
        return 0.0
    if answer == correct:
        return 1.0
    return 0.5 if abs(answer - correct) == 1 else 0.0


def build_tokenizer(task: Task | None = None) -> Any:
    """Word-level ``PreTrainedTokenizerFast`` over ``<pad> <eos> <unk> + = \\boxed{ } 0..99`` (107 tokens).

    Whitespace pre-tokenisation; decoding joins tokens with single spaces, so ``\\boxed{`` decodes exactly and
    :func:`meds_core.locate_answers` finds the answer token right after it.
    """
    from meds_core.testing import word_tokenizer

    vocab = (task.vocab if task is not None else SPECIALS + SYMBOLS + NUMBERS)
    return word_tokenizer(vocab, unk="<unk>", pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def build_model(tokenizer: Any, seed: int = 0) -> Any:
    """Tiny random Qwen2 (hidden 64, 4 layers, 4 heads / 2 KV heads, untied head), float32, seeded."""
    from meds_core.testing import tiny_qwen2

    return tiny_qwen2(len(tokenizer), max_position_embeddings=32, tokenizer=tokenizer, seed=seed, fork_rng=True)
