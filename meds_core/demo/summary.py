"""Per-run summary metrics, their aggregation over seeds, and paired comparisons between methods."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from meds_core.demo import run_metrics as M
from meds_core.demo.runs import RunLog


@dataclass(frozen=True)
class Metric:
    """A summary metric: key, label, print format, and which direction is better for MEDS (+1 higher, -1 lower,
    0 context only: never claimed; acc_auc and rep_late would only restate acc_final and rep_rate)."""

    key: str
    label: str
    fmt: str
    better: int


METRICS = (
    Metric("acc_final", "accuracy P(correct), exact, final", "{:.3f}", +1),
    Metric("acc_auc", "accuracy, mean over evaluations", "{:.3f}", 0),
    Metric("rep_rate", "repeated-error rate (sampled)", "{:.3f}", -1),
    Metric("rep_late", "repeated-error rate, 2nd half", "{:.3f}", 0),
    Metric("top_wrong", "top wrong answer's share, 2nd half", "{:.3f}", -1),
    Metric("top_wrong_exact", "top wrong answer's share, exact", "{:.3f}", -1),
    Metric("entropy", "answer entropy (nats), exact", "{:.3f}", +1),
    Metric("distinct", "distinct wrong answers / prompt", "{:.2f}", +1),
    Metric("acc_held", "accuracy on held prompts, exact", "{:.3f}", 0),
    Metric("penalty", "mean penalty (meds/penalty_mean)", "{:.3f}", 0),
    Metric("step_s", "seconds per step", "{:.4f}", 0),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}


def run_summary(log: RunLog, steps: int) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one run (``steps`` = the run's optimizer steps)."""
    s = log.samples
    wrong = [r < 1.0 for r in s["reward"]]
    half = steps // 2 + 1  # "second half": steps half..steps
    late = [st >= half for st in s["step"]]

    def pick(xs: list) -> list:
        return [x for x, keep in zip(xs, late) if keep]

    last = log.evals[-1]
    pens = [e.get("meds/penalty_mean", 0.0) for e in log.steps]
    times = [e["seconds"] for e in log.steps[1:]] or [e["seconds"] for e in log.steps]
    return {
        "acc_final": last["acc"],
        "acc_auc": float(np.mean([e["acc"] for e in log.evals])),
        "rep_rate": M.repeated_wrong_answer_rate(s["step"], s["prompt_id"], s["answer"], wrong),
        "rep_late": M.repeated_wrong_answer_rate(s["step"], s["prompt_id"], s["answer"], wrong, from_step=half),
        "top_wrong": M.top_wrong_share(pick(s["prompt_id"]), pick(s["answer"]), pick(wrong)),
        "top_wrong_exact": last["top_wrong"],
        "entropy": last["entropy"],
        "distinct": M.distinct_wrong(s["prompt_id"], s["answer"], wrong),
        "acc_held": last["acc_held"] if last["acc_held"] is not None else float("nan"),
        "penalty": float(np.mean(pens)) if pens else 0.0,
        "step_s": float(np.mean(times)),
    }


def aggregate(summaries: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """method -> metric -> {mean, sd (ddof 1; 0 for one seed), min, max, values} over seeds."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, runs in summaries.items():
        out[method] = {}
        for m in METRICS:
            v = np.asarray([r[m.key] for r in runs], dtype=np.float64)
            out[method][m.key] = {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                                  "min": float(np.min(v)), "max": float(np.max(v)), "values": v.tolist()}
    return out


def paired(a: list[dict[str, float]], b: list[dict[str, float]], min_seeds: int = 3,
           min_t: float = 2.0) -> dict[str, dict[str, Any]]:
    """Per-seed differences ``a - b`` of every claimable metric (lists aligned by seed).

    Returns metric -> {delta (mean), min, max, t (paired t statistic; 0 without spread), wins (seeds where a is
    better), n, claimed}. A difference is claimed only when all of these hold: n >= min_seeds; a is better in
    every seed (n <= 5) or in at least 80 % of seeds (n >= 6); the mean difference favours a; |t| >= min_t.
    """
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs one run per seed on both sides; got {len(a)} and {len(b)}")
    out = {}
    n = len(a)
    for m in METRICS:
        if m.better == 0:
            continue
        d = np.asarray([x[m.key] - y[m.key] for x, y in zip(a, b)], dtype=np.float64)
        wins = int(np.sum(m.better * d > 0))
        need = n if n <= 5 else math.ceil(0.8 * n)
        sd = float(np.std(d, ddof=1)) if n > 1 else 0.0
        t = float(np.mean(d) / (sd / math.sqrt(n))) if sd > 0 else 0.0
        out[m.key] = {"delta": float(np.mean(d)), "min": float(np.min(d)), "max": float(np.max(d)), "t": t,
                      "wins": wins, "n": n,
                      "claimed": bool(n >= min_seeds and wins >= need and m.better * np.mean(d) > 0
                                      and abs(t) >= min_t)}
    return out


def first_penalty_step(log: RunLog) -> int | None:
    """First optimizer step at which some completion got a non-zero MEDS penalty (None: never)."""
    for e in log.steps:
        if e.get("meds/penalized_frac", 0.0) > 0:
            return int(e["step"])
    return None


def same_until(a: RunLog, b: RunLog, step: int) -> bool:
    """Whether two runs sampled identical completions (same order) at every step <= ``step``."""
    def upto(log: RunLog) -> list[tuple]:
        s = log.samples
        return [(st, p, ans) for st, p, ans in zip(s["step"], s["prompt_id"], s["answer"]) if st <= step]
    return upto(a) == upto(b)
