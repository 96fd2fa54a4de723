"""Local inputs of the veRL CPU run: a tiny policy, its tokenizer and 12 + 4 problems, written in seconds, nothing
downloaded.

* **Problems**: the toy task of ``meds demo`` ("a + b =", answers 4..18) as veRL rows in exactly the schema
  ``prepare_data.py`` writes (chat ``prompt`` with the recipe's instruction line, ``reward_model.ground_truth``,
  ``extra_info.index``, ``data_source="math_dapo"`` so veRL's own math reward scores it and reports ``acc``).
* **Tokenizer**: the demo's word-level tokenizer (every number one token, ``\\boxed{`` one token) plus the
  instruction's words and a one-token newline, with a chat template that joins the messages' contents, and a
  decoder that joins tokens without spaces, so a response decodes as ``\\boxed{12}`` (which veRL's ``math_dapo``
  grader accepts).
* **Policy**: the demo's tiny Qwen2 (hidden 64, 4 layers), warm-started for a few seconds so that each problem is
  answered ``\\boxed{N}`` correctly about a third of the time and three systematic wrong answers
  otherwise: groups are mixed, so GRPO has signal and MEDS has error modes to remember.

``python -m meds_core.demo.verl_assets --out DIR`` writes ``DIR/model/``, ``DIR/tokenizer/``,
``DIR/train.parquet`` and ``DIR/val.parquet``. ``--broken-index`` writes a training set without
``extra_info.index`` (for the start-up check);
``--hopeless N`` gives the first N training problems a reference answer the policy cannot write, so that with
``data.shuffle=False`` the first generated batch is entirely filtered out by dynamic sampling.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from meds_core.adapters.verl.prepare_data import INSTRUCTION, verl_row, write_parquet
from meds_core.demo.task import build_model, build_tokenizer, make_task, prompt_text
from meds_core.demo.warmstart import answer_mixtures, warm_start

__all__ = ["CHAT_TEMPLATE", "build_assets", "main"]

CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
P_CORRECT = (0.45, 0.7)  # per-problem probability of the correct answer after the warm start
UNREACHABLE = "-1"  # reference answer of a hopeless problem: the toy policy has no token for it


def _content(a: int, b: int) -> str:
    return f"{prompt_text(a, b)}\n{INSTRUCTION}"


def build_assets(out: str, n_train: int = 12, n_val: int = 4, seed: int = 0, warm_steps: int = 80,
                 drop_index: bool = False, hopeless: int = 0) -> dict[str, Any]:
    """Write the model folder and the two parquet files under ``out``; returns their paths and the warm-start log.

    Parameters
    ----------
    out : str
        Output folder (created).
    n_train, n_val : int
        Training and validation problems (distinct "a + b" pairs, at most 63 together). 12 training problems in
        batches of 4 come back from step 3 on: MEDS penalises a rollout by the memory of earlier visits of its
        prompt, so a 4-step run needs prompts that return.
    seed : int
        Seeds the problem choice, the answer mixtures, the model init and the warm start.
    warm_steps : int
        Warm-start SFT steps.
    drop_index : bool
        Write the training rows without ``extra_info.index`` (the mistake ``main_meds`` refuses to train on).
    hopeless : int
        The first ``hopeless`` training problems get the reference answer ``-1``, which the toy policy cannot write:
        every rollout of theirs is wrong, so dynamic sampling filters their groups out.
    """
    import torch

    torch.manual_seed(seed)
    from tokenizers import AddedToken, decoders

    task = make_task(n_train=n_train, n_held=n_val, seed=seed)
    task.vocab = task.vocab + sorted(set(INSTRUCTION.split()) - set(task.vocab))
    tokenizer = build_tokenizer(task)
    tokenizer.backend_tokenizer.decoder = decoders.Fuse()
    tokenizer.chat_template = CHAT_TEMPLATE
    # veRL's Qwen token builder (agent loop) needs "\n" to be exactly one token, as in Qwen's own tokenizer
    tokenizer.add_tokens([AddedToken("\n", normalized=False, special=False)])
    model = build_model(tokenizer, seed=seed)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": _content(a, b)}], tokenize=False)
             for a, b in task.pairs]
    mixtures = answer_mixtures(task, p_correct=P_CORRECT, seed=seed)
    log = warm_start(model, tokenizer, task, mixtures, steps=warm_steps, samples_per_prompt=2, seed=seed, prompts=texts)
    model_dir, tokenizer_dir = os.path.join(out, "model"), os.path.join(out, "tokenizer")
    model.save_pretrained(model_dir)
    # a folder of its own: next to a qwen2 config.json, AutoTokenizer would load a Qwen2Tokenizer instead
    tokenizer.save_pretrained(tokenizer_dir)

    def rows(pairs, split, data_source):
        out_rows = []
        for i, (a, b) in enumerate(pairs):
            answer = UNREACHABLE if split == "train" and i < hopeless else str(a + b)
            row = verl_row(prompt_text(a, b), answer, "toy_arithmetic", data_source, split, i)
            if drop_index:
                del row["extra_info"]["index"]
            out_rows.append(row)
        return out_rows

    train = os.path.join(out, "train.parquet")
    val = os.path.join(out, "val.parquet")
    write_parquet(rows(task.train, "train", "math_dapo"), train)
    write_parquet(rows(task.held, "test", "math_dapo"), val)
    return {"model": model_dir, "tokenizer": tokenizer_dir, "train": train, "val": val, "warm_start": log}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (model/, tokenizer/, train.parquet, val.parquet)")
    parser.add_argument("--train", type=int, default=12, help="training problems (default 12)")
    parser.add_argument("--val", type=int, default=4, help="validation problems (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of problems, model and warm start (default 0)")
    parser.add_argument("--broken-index", action="store_true",
                        help="write training rows without extra_info.index (to see the start-up refusal)")
    parser.add_argument("--hopeless", type=int, default=0, metavar="N",
                        help="make the first N training problems unsolvable, so their groups are filtered (default 0)")
    args = parser.parse_args(argv)
    paths = build_assets(args.out, n_train=args.train, n_val=args.val, seed=args.seed, drop_index=args.broken_index,
                         hopeless=args.hopeless)
    print(f"wrote {paths['model']}, {paths['tokenizer']}, {paths['train']}, {paths['val']} "
          f"(warm start {paths['warm_start']['seconds']:.1f} s, loss {paths['warm_start']['final_loss']:.2f})")


if __name__ == "__main__":
    main()
