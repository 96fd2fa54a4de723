"""A tiny arithmetic task for real GRPOTrainer runs on CPU: word-level tokenizer, random Qwen2, brief warm-up.

Completions look like ``\\boxed{ 7 } <eos>``; a short teacher-forced warm-up makes the random model emit that format
with a few systematic wrong answers, so MEDS has answers to read and errors to remember.
"""

from __future__ import annotations

import random

import torch

from meds_core.testing import tiny_qwen2, word_tokenizer

MARKER = "\\boxed{"
NUMBERS = [str(i) for i in range(40)]
VOCAB = ["<pad>", "<eos>", MARKER, "}", "+", "=", "so", *NUMBERS]


def toy_tokenizer():
    return word_tokenizer(VOCAB, pad_token="<pad>", eos_token="<eos>")


def toy_model(seed: int = 0, hidden: int = 64, layers: int = 4):
    return tiny_qwen2(len(VOCAB), hidden_size=hidden, num_hidden_layers=layers, seed=seed, max_position_embeddings=64,
                      pad_token_id=0, eos_token_id=1, bos_token_id=1)


def problems(n: int = 8, seed: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(2, 9), rng.randint(2, 9)) for _ in range(n)]


def toy_dataset(n: int = 8, seed: int = 0, with_id: bool = True):
    from datasets import Dataset

    probs = problems(n, seed)
    data = {"prompt": [f"{a} + {b} =" for a, b in probs], "answer": [str(a + b) for a, b in probs]}
    if with_id:
        data["prompt_id"] = [f"p{i}" for i in range(n)]
    return Dataset.from_dict(data)


def completion_text(answer: int | None) -> str:
    return "so <eos>" if answer is None else f"{MARKER} {answer} }} <eos>"


def warm_start(model, tok, n: int = 8, seed: int = 0, steps: int = 80, no_answer_frac: float = 0.0):
    """Teacher-forced SFT on a prompt-specific mixture: a+b (30%), a+b+1 (40%), (a*b) % 40 (30%)."""
    rng = random.Random(seed)
    probs = problems(n, seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        texts = []
        for a, b in probs:
            u = rng.random()
            ans = a + b if u < 0.3 else a + b + 1 if u < 0.7 else a * b % 40
            ans = None if rng.random() < no_answer_frac else ans
            texts.append(f"{a} + {b} = {completion_text(ans)}")
        enc = tok(texts, return_tensors="pt", padding=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def accuracy(completions, answer, **kwargs):
    """1.0 when the text after the last marker starts with the right number, else 0.0 (chat completions: the
    last message's content)."""
    out = []
    for c, a in zip(completions, answer):
        c = c[-1]["content"] if isinstance(c, list) else c
        tail = c.rsplit(MARKER, 1)
        out.append(1.0 if len(tail) == 2 and tail[1].split()[:1] == [a] else 0.0)
    return out


def grpo_args(out_dir: str, **overrides):
    from trl import GRPOConfig

    kw = dict(output_dir=out_dir, use_cpu=True, bf16=False, gradient_checkpointing=False,
              per_device_train_batch_size=8, num_generations=4, max_completion_length=6, learning_rate=3e-3,
              max_steps=4, report_to="none", save_strategy="no", logging_steps=1, seed=0, beta=0.0,
              temperature=1.0, disable_tqdm=True, dataloader_num_workers=0)
    kw.update(overrides)
    return GRPOConfig(**kw)


_WARM: dict = {}


def warm_model(tok, seed: int = 0, no_answer_frac: float = 0.0):
    """A fresh model in the warm-started state (the warm-up runs once per process and setting)."""
    key = (seed, no_answer_frac)
    if key not in _WARM:
        _WARM[key] = {k: v.clone() for k, v in
                      warm_start(toy_model(seed), tok, seed=seed, no_answer_frac=no_answer_frac).state_dict().items()}
    model = toy_model(seed)
    model.load_state_dict(_WARM[key])
    return model
