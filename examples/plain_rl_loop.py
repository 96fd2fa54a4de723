"""MEDS in a plain RL loop: rollouts -> rewards -> features -> error memory -> shaped rewards -> GRPO update.

A tiny random Qwen2 policy (built in-process, nothing downloaded) answers "a+b=" prompts (a + b < 10) in the
format ``\\boxed{N}``: the format tokens are fixed, the answer digit is sampled from the policy. Every step:
  1. sample G rollouts per prompt and grade them (correct = the sum);
  2. locate_answers finds the answer token, extract_features reads the per-layer logit lens there;
  3. ErrorMemory.update assigns each rollout to a stored failure cluster (one batched clustering call);
  4. shape_rewards subtracts the penalty from wrong rollouts, GRPO advantages follow, one policy step.

    python examples/plain_rl_loop.py [--steps 30] [--memory-out meds_memory.bin] [--answers-out meds_answers.json]
                                     [--save-model tiny_policy/]

--save-model writes the trained policy and its tokenizer (save_pretrained) for `meds eval`. About 30-90 s on 2 CPU
cores (30 steps); torch and transformers are imported only after the arguments are parsed, so --help is instant.
"""

from __future__ import annotations

import argparse
import time

MARKER = "\\boxed{"


def build_tokenizer():
    """Character-level tokenizer, except that the marker is one token: vocabulary built in-process."""
    from meds_core.testing import char_tokenizer

    return char_tokenizer("0123456789+= }", ("<pad>", "<eos>", MARKER), whole=(MARKER,), pad_token="<pad>",
                          eos_token="<eos>")


def sample_rollouts(model, tok, prompts, group, generator):
    """G rollouts per prompt: response = marker + one sampled digit token + '}'. Returns ids [B, T], prompt length."""
    import torch

    digit_ids = torch.tensor(tok.convert_tokens_to_ids(list("0123456789")))
    prompt_ids = [tok.encode(p) for p in prompts for _ in range(group)]
    marker_id, close_id = tok.convert_tokens_to_ids([MARKER, "}"])
    seqs = torch.tensor([p + [marker_id] for p in prompt_ids])
    with torch.no_grad():
        logits = model(input_ids=seqs).logits[:, -1, digit_ids]
    pick = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
    seqs = torch.cat([seqs, digit_ids[pick]], dim=1)
    seqs = torch.cat([seqs, torch.full((len(seqs), 1), close_id)], dim=1)
    prompt_len = len(prompt_ids[0])
    return seqs, prompt_len


def answer_logprob(model, seqs, prompt_len, digit_ids):
    """Log-prob of the sampled digit under the policy, with grad. [B]"""
    import torch

    logits = model(input_ids=seqs).logits[:, prompt_len, digit_ids]  # the state after the marker
    idx = (seqs[:, prompt_len + 1, None] == digit_ids).float().argmax(-1)
    return torch.log_softmax(logits, -1).gather(-1, idx[:, None]).squeeze(-1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="GRPO steps (default 30)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts 'a+b=' with a, b in 0..4 (default 8)")
    ap.add_argument("--group", type=int, default=8, help="rollouts per prompt, >= 2 (default 8)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the model, the prompts and the sampling (default 0)")
    ap.add_argument("--memory-out", default=None, help="save the error memory here at the end (default: not saved)")
    ap.add_argument("--answers-out", default=None,
                    help="save the answer text of every stored row here at the end, for meds inspect --answers "
                         "(default: not saved)")
    ap.add_argument("--save-model", default=None,
                    help="save the trained policy + tokenizer to this folder at the end (default: not saved)")
    args = ap.parse_args(argv)
    for name, low in (("steps", 1), ("prompts", 1), ("group", 2)):
        if getattr(args, name) < low:
            ap.error(f"--{name} {getattr(args, name)} is not valid: it must be an integer >= {low}")
    return args


def main(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from meds_core import ErrorMemory, MEDSConfig, extract_features, locate_answers, shape_rewards
    from meds_core.step.warmup import warm_clustering_kernels
    from meds_core.testing import tiny_qwen2

    warm_clustering_kernels()  # announces the one-time numba compilation instead of a silent first step

    tok = build_tokenizer()
    model = tiny_qwen2(len(tok), seed=args.seed, max_position_embeddings=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    config = MEDSConfig(use_last_n_layers=4, penalty_coef=0.5)
    memory = ErrorMemory(config)
    rng = np.random.default_rng(args.seed)
    problems = [(int(a), int(b)) for a, b in rng.integers(0, 5, size=(args.prompts, 2))]
    gen = torch.Generator().manual_seed(args.seed)
    digit_ids = torch.tensor(tok.convert_tokens_to_ids(list("0123456789")))
    answers: dict[int, dict[str, list[str]]] = {0: {}, 1: {}}  # correctness -> prompt key -> answer per stored row
    print(f"{'step':>4} {'acc':>6} {'answers':>7} {'mem rows':>8} {'pen>0':>6} {'pen mean':>8} {'cluster s':>9}")
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        prompts = [f"{a}+{b}=" for a, b in problems]
        seqs, prompt_len = sample_rollouts(model, tok, prompts, args.group, gen)
        responses = seqs[:, prompt_len:].tolist()
        texts = tok.batch_decode(responses)
        keys = np.repeat(np.arange(args.prompts), args.group)  # dataset index: stable across steps
        truth = np.repeat([a + b for a, b in problems], args.group)
        correct = np.array([t == f"{MARKER}{s}}}" for t, s in zip(texts, truth)], dtype=np.int64)
        rewards = correct.astype(np.float64)

        starts, _ = locate_answers(tok, responses, config.answer_marker)
        positions = np.where(starts >= 0, prompt_len + starts, -1)
        feats = extract_features(model, seqs, torch.ones_like(seqs), positions, config)
        result = memory.update(keys, feats, correct)
        for b in np.flatnonzero(np.isfinite(np.asarray(feats)).all(1)):  # the rows the memory stored, in order
            kept = answers[int(correct[b])].setdefault(str(keys[b]), [])
            kept.append(texts[b][len(MARKER):-1])
            del kept[:-config.max_rows_per_memory]  # the memory drops its oldest rows beyond the cap
        shaped = shape_rewards(rewards, result.cluster_size, correct, group_ids=keys, **config.shaping_kwargs())

        grouped = shaped.reshape(args.prompts, args.group)
        adv = (grouped - grouped.mean(1, keepdims=True)) / (grouped.std(1, keepdims=True) + 1e-4)
        loss = -(torch.as_tensor(adv.reshape(-1), dtype=torch.float32)
                 * answer_logprob(model, seqs, prompt_len, digit_ids)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        pen = rewards - shaped
        print(f"{step:>4} {correct.mean():>6.3f} {int((starts >= 0).sum()):>7} {memory.num_rows:>8} "
              f"{(pen > 0).mean():>6.3f} {pen[pen > 0].mean() if (pen > 0).any() else 0:>8.3f} "
              f"{result.stats['cluster_seconds']:>9.3f}   ({time.perf_counter() - t0:.2f} s)")
    print(f"memory: {len(memory)} (prompt, correctness) memories, {memory.num_rows} rows")
    if args.memory_out:
        memory.save(args.memory_out)
        print(f"saved the error memory to {args.memory_out}")
    if args.answers_out:
        import json

        with open(args.answers_out, "w", encoding="utf-8") as f:
            json.dump({"wrong": answers[0], "correct": answers[1]}, f)
        print(f"saved the stored rows' answers to {args.answers_out}")
    if args.save_model:
        model.save_pretrained(args.save_model)
        tok.save_pretrained(args.save_model)
        print(f"saved the policy and its tokenizer to {args.save_model}")


if __name__ == "__main__":
    main(parse_args())
