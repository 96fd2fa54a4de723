"""Seconds per GRPO training step in TRL: plain GRPOTrainer vs MEDSGRPOTrainer, extra-forward and reuse paths.

Two TRL configurations, each run plain and with MEDS from the same warm start and seed:
  extra-forward: steps_per_generation = gradient_accumulation_steps = 1; TRL runs no policy forward before the
                 rewards, so MEDS adds one no-grad forward (logits_to_keep=1);
  reuse:         steps_per_generation = 2 (two optimizer steps per generation batch); TRL runs its no-grad
                 old-log-prob forward before the rewards, and MEDS captures the features inside it.
Models: the demo's toy task (word-level tokenizer, answers "\\boxed{ N }") on a random Qwen2, "tiny" (hidden 64,
4 layers) and "medium" (hidden 512, 8 layers), briefly warm-started so completions carry answers. Runs are
interleaved (plain, MEDS, plain, MEDS, ...) to spread machine noise over both; step times come from a callback
(step begin -> end, the generation steps included), the first WARMUP steps of every run dropped. Also reported:
MEDS's own time per generation batch as the trainer measures it (``trainer.meds_seconds``, logged as
``meds/seconds``: answers located, capture armed and collected or the extra forward, gathers, memory update,
shaping), divided by the optimizer steps per generation batch.
MEDS runs with --penalty-coef 0 by default: it does all of its work (answers located, features captured, memory
updated and re-clustered, rewards "shaped"), but the rewards, hence the sampled trajectories, stay those of plain
GRPO, so both arms time the same generations; with a positive coefficient the runs diverge after the first penalty.

    python benchmarks/trl_step_overhead.py               # both sizes, 3 repeats x 12 steps
    python benchmarks/trl_step_overhead.py --sizes tiny --repeats 1 --steps 6   # quick
Writes benchmarks/results/trl_step_overhead_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"tiny": (64, 4, 16), "medium": (512, 8, 16)}  # hidden, layers, completions per optimizer step
WARMUP = 2


def make_model(size: str, tok):
    """Random Qwen2 of the given size for the toy tokenizer (untied head)."""
    from meds_core.testing import tiny_qwen2

    hidden, layers, _ = SIZES[size]
    return tiny_qwen2(len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=8,
                      num_key_value_heads=4, max_position_embeddings=64, tokenizer=tok, seed=None)


def build(size: str, seed: int):
    """Task, tokenizer and the warm-started weights every run of this size starts from."""
    import torch

    from meds_core.demo.task import build_tokenizer, make_task
    from meds_core.demo.warmstart import answer_mixtures, warm_start

    task = make_task()
    tok = build_tokenizer(task)
    torch.manual_seed(seed)
    model = make_model(size, tok)
    warm_start(model, tok, task, answer_mixtures(task, seed=seed), steps=60, seed=seed)
    return task, tok, {k: v.clone() for k, v in model.state_dict().items()}


def run(size: str, path: str, meds: bool, steps: int, task, tok, state, seed: int, coef: float,
        device: str = "cpu") -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from meds_core import MEDSConfig
    from meds_core.adapters.trl import MEDSGRPOTrainer
    from meds_core.demo.task import parse_answer, partial_credit

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], 0.0

        def on_step_begin(self, args, st, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, st, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    def reward(completions, answer, **kw):
        return [partial_credit(parse_answer(c), int(a)) for c, a in zip(completions, answer)]

    _, _, batch = SIZES[size]
    spg = 2 if path == "reuse" else 1
    model = make_model(size, tok)
    model.load_state_dict(state)
    torch.manual_seed(seed)
    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, use_cpu=device == "cpu", bf16=False, gradient_checkpointing=False,
                          per_device_train_batch_size=batch, num_generations=8, steps_per_generation=spg,
                          max_completion_length=12, learning_rate=3e-4, max_steps=steps, report_to="none",
                          save_strategy="no", logging_strategy="no", seed=seed, beta=0.0, scale_rewards="none",
                          disable_tqdm=True)
        kw = dict(model=model, reward_funcs=[reward], args=args, processing_class=tok, callbacks=[timer],
                  train_dataset=Dataset.from_list(task.dataset_rows()))
        if meds:
            tr = MEDSGRPOTrainer(**kw, meds_config=MEDSConfig(use_last_n_layers=4, penalty_coef=coef),
                                 correct_threshold=0.75)
        else:
            tr = GRPOTrainer(**kw)
        tr.train()
    res = {"step_s": timer.times[WARMUP:]}
    if meds:  # MEDS's own time per generation batch, as the trainer measures it (meds/seconds); first dropped
        res.update(meds_s=tr.meds_seconds[1:], reused=tr.meds_reused_forwards, extra=tr.meds_extra_forwards)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--penalty-coef", type=float, default=0.0, help="MEDS penalty_coef (default 0: same trajectories)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "trl_step_overhead_cpu"))
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import transformers

    transformers.logging.set_verbosity_error()
    results = {}
    for size in a.sizes:
        task, tok, state = build(size, seed=0)
        for path in ("extra-forward", "reuse"):
            acc = {"plain": [], "meds": [], "meds_s": [], "reused": 0, "extra": 0}
            for rep in range(a.repeats):
                for meds in (False, True):
                    r = run(size, path, meds, a.steps, task, tok, state, seed=rep, coef=a.penalty_coef)
                    acc["meds" if meds else "plain"] += r["step_s"]
                    if meds:
                        acc["meds_s"] += r["meds_s"]
                        acc["reused"] += r["reused"]
                        acc["extra"] += r["extra"]
                    print(f"{size:6s} {path:13s} rep {rep} {'meds ' if meds else 'plain'} "
                          f"median {statistics.median(r['step_s']):.4f} s/step", file=sys.stderr)
            results[f"{size}/{path}"] = acc
    rows = []
    for key, acc in results.items():
        size, path = key.split("/")
        plain, meds = statistics.median(acc["plain"]), statistics.median(acc["meds"])
        own = statistics.median(acc["meds_s"]) if acc["meds_s"] else float("nan")
        spg = 2 if path == "reuse" else 1
        rows.append({"size": size, "path": path, "plain_s": plain, "meds_s": meds, "overhead": meds / plain - 1,
                     "meds_own_ms_per_step": 1000 * own / spg, "own_share": own / spg / plain,
                     "reused_forwards": acc["reused"], "extra_forwards": acc["extra"],
                     "steps_timed": len(acc["plain"])})
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": a.threads,
            "torch": torch.__version__, "trl": __import__("trl").__version__, "repeats": a.repeats,
            "steps": a.steps, "warmup_dropped": WARMUP, "penalty_coef": a.penalty_coef}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows, "raw": results}, f, indent=1)
    lines = [f"TRL {meta['trl']}, torch {meta['torch']}, {meta['cpus']} CPUs, {a.threads} threads; median over "
             f"{a.repeats} interleaved repeats x {a.steps} steps (first {WARMUP} of each run dropped); MEDS "
             f"penalty_coef {a.penalty_coef}.", "",
             "| model | MEDS path | plain GRPO s/step | MEDS s/step | MEDS / plain | MEDS own ms/step "
             "| own / plain step | reused / extra forwards |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['path']} | {r['plain_s']:.4f} | {r['meds_s']:.4f} | {1 + r['overhead']:.3f}x "
                     f"| {r['meds_own_ms_per_step']:.2f} | {100 * r['own_share']:.1f}% "
                     f"| {r['reused_forwards']} / {r['extra_forwards']} |")
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
