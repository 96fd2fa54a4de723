"""``meds demo`` end to end: task, warm start, baseline / MEDS / shuffled-control GRPO runs, summary and files."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from typing import Any

import numpy as np

QUICK = {"seeds": 1, "steps": 6, "warm_steps": 120, "eval_every": 2}


def _limit_threads() -> None:
    """One torch thread and one numba thread: the model is tiny, and on a shared 2-core machine numba's parallel
    pool spinning next to torch made MEDS steps ~10x slower (measured: 0.79 vs 0.07 s/step under load)."""
    import torch

    torch.set_num_threads(1)
    try:
        import numba

        numba.set_num_threads(1)
    except ImportError:  # numba is a dependency of meds_core; without it the clustering falls back anyway
        pass


def environment() -> dict[str, Any]:
    """Library versions and machine facts of this run (written into ``metrics.json``: the numbers move with them)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("meds_core", "torch", "transformers", "trl", "numpy", "numba", "hdbscan"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    try:
        load = " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        load = "unknown"
    return {"versions": versions, "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()}", "cpus": os.cpu_count(), "loadavg_start": load}


def run_demo(out: str = "demo_out", seeds: int = 3, steps: int = 60, batch: int = 32, penalty_coef: float = 0.5,
             quick: bool = False, quiet: bool = False, warm_steps: int = 300, eval_every: int = 5,
             table_every: int = 10, mixed_groups_only: bool = False) -> dict[str, Any]:
    """Run the demo and write ``out/metrics.json``, ``out/samples.json``, ``out/steps.tsv`` and PNG plots.

    ``quick`` overrides seeds/steps/warm-up/evaluation spacing with :data:`QUICK` (a smoke test in seconds).
    Returns the metrics dict that ``metrics.json`` holds.
    """
    t_start = time.perf_counter()
    env = environment()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if quick:
        seeds, steps, warm_steps, eval_every = QUICK["seeds"], QUICK["steps"], QUICK["warm_steps"], QUICK["eval_every"]
    checks = (("seeds", seeds, 1), ("steps", steps, 1), ("batch", batch, 2), ("warm_steps", warm_steps, 0))
    for name, value, low in checks:
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    if not (isinstance(penalty_coef, (int, float)) and np.isfinite(penalty_coef) and penalty_coef >= 0):
        raise ValueError(f"penalty_coef={penalty_coef} must be a finite number >= 0 (0.5 is the demo's default)")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))

    _limit_threads()
    from meds_core.demo import report
    from meds_core.demo.exact_eval import completion_probs, exact_metrics
    from meds_core.demo.runs import METHODS, RunSettings, quiet_libraries, run_grpo
    from meds_core.demo.summary import aggregate, first_penalty_step, paired, run_summary, same_until
    from meds_core.demo.task import build_model, build_tokenizer, make_task
    from meds_core.demo.warmstart import answer_mixtures, warm_start

    quiet_libraries()
    from meds_core.step.warmup import warm_clustering_kernels

    kernel_seconds = warm_clustering_kernels(verbose=not quiet, say=say)  # never a silent first MEDS step
    settings = RunSettings(steps=steps, batch=batch, penalty_coef=penalty_coef, eval_every=eval_every,
                           mixed_groups_only=mixed_groups_only)
    os.makedirs(out, exist_ok=True)
    t_import = time.perf_counter() - t_start - kernel_seconds

    task = make_task()
    tokenizer = build_tokenizer(task)
    model = build_model(tokenizer, seed=0)
    mixtures = answer_mixtures(task, seed=0)
    say(f"meds demo: {len(task.train)} training prompts 'a + b =', answers \\boxed{{ N }}; tiny Qwen2 "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters); partial reward "
        "(1 / 0.5 near miss / 0)")
    warm = warm_start(model, tokenizer, task, mixtures, steps=warm_steps, seed=0)
    number_ids = np.asarray(tokenizer.convert_tokens_to_ids([str(n) for n in range(100)]))
    full, answer = completion_probs(model, tokenizer, task.train)
    warm.update({k: v for k, v in exact_metrics(full, answer, number_ids,
                                                np.asarray([a + b for a, b in task.train])).items()
                 if k != "acc_per_prompt"})
    say(f"warm start: {warm_steps} SFT steps in {warm['seconds']:.1f} s -> P(correct) {warm['acc']:.3f}, answer "
        f"entropy {warm['entropy']:.2f} nats, top wrong answer's share {warm['top_wrong']:.2f}")
    say(f"GRPO: {seeds} seed(s) x {{baseline, MEDS, shuffled-penalty control}}, {steps} steps, batch {batch} = "
        f"{batch // settings.num_generations} prompts x {settings.num_generations}, scale_rewards='none', "
        f"penalty_coef {penalty_coef}, lr {settings.learning_rate}, mixed_groups_only={mixed_groups_only}")

    progress = report.Progress(seeds * len(METHODS) * steps, enabled=not quiet)

    def on_step(log: Any, step: int) -> None:
        progress.advance(label=f"{report.LABELS[log.method]} seed {log.seed}")
        if not quiet and (step == 1 or step % table_every == 0 or step == steps):
            progress.clear()
            print(report.format_row(report.step_row(log, step)), flush=True)
            progress.draw()

    say(report.table_header())
    logs = []
    for seed in range(seeds):
        for method in METHODS:
            logs.append(run_grpo(method, seed, model, tokenizer, task, settings, on_step=on_step))
    progress.clear()

    summaries = {m: [run_summary(g, steps) for g in logs if g.method == m] for m in METHODS}
    agg = aggregate(summaries)
    comparisons = {"meds_vs_shuffle": paired(summaries["meds"], summaries["shuffle"]),
                   "meds_vs_baseline": paired(summaries["meds"], summaries["baseline"]),
                   "shuffle_vs_baseline": paired(summaries["shuffle"], summaries["baseline"])}
    same_start = []
    for seed in range(seeds):
        by = {g.method: g for g in logs if g.seed == seed}
        first = first_penalty_step(by["meds"])
        upto = first if first is not None else steps
        same_start.append({"seed": seed, "first_penalty_step": first,
                           "step0_eval_identical": len({str(by[m].evals[0]) for m in METHODS}) == 1,
                           "samples_identical_until_first_penalty": all(
                               same_until(by["baseline"], by[m], upto) for m in ("meds", "shuffle"))})
    n = seeds
    wall = time.perf_counter() - t_start
    result = {
        "config": {"seeds": seeds, "steps": steps, "batch": batch, "penalty_coef": penalty_coef, "quick": quick,
                   "warm_steps": warm_steps, "settings": asdict(settings), "task_train": task.train,
                   "task_held": task.held, "mixtures_seed": 0},
        "warm_start": warm,
        "runs": [{"method": g.method, "seed": g.seed, "summary": run_summary(g, steps), "steps": g.steps,
                  "evals": g.evals, "train_seconds": g.train_seconds} for g in logs],
        "aggregate": agg,
        "comparisons": comparisons,
        "claims": [k for k, c in comparisons["meds_vs_shuffle"].items() if c["claimed"]],
        "same_start": same_start,
        "environment": env,
        "seconds": {"imports": t_import, "kernels": kernel_seconds, "warm_start": warm["seconds"],
                    "runs": float(sum(g.train_seconds for g in logs)), "total": wall},
    }
    report.write_json(os.path.join(out, "metrics.json"), result)
    report.write_json(os.path.join(out, "samples.json"),
                      [{"method": g.method, "seed": g.seed, **g.samples} for g in logs])
    report.write_steps_tsv(os.path.join(out, "steps.tsv"), logs)
    pngs = report.plot(out, logs, agg, comparisons)

    print()
    print(report.summary_table(agg, n))
    print()
    for line in report.claim_lines(comparisons, n):
        print(line)
    ok = all(s["step0_eval_identical"] and s["samples_identical_until_first_penalty"] for s in same_start)
    print(f"identical starts: {'yes' if ok else 'NO'} (same step-0 evaluation, and identical samples up to MEDS's "
          f"first non-zero penalty, in every seed)")
    print(f"wrote {out}/metrics.json, samples.json, steps.tsv, " + ", ".join(os.path.basename(p) for p in pngs)
          + f" in {wall:.0f} s (warm-up {warm['seconds']:.0f} s, GRPO {result['seconds']['runs']:.0f} s)",
          file=sys.stdout)
    return result
