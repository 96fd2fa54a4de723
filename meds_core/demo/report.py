"""What the demo prints and writes: progress bar, per-step table, final summary, claims, JSON, TSV and PNG plots."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

import numpy as np

from meds_core.demo.runs import METHODS, RunLog
from meds_core.demo.summary import METRIC_BY_KEY, METRICS

LABELS = {"baseline": "baseline", "meds": "MEDS", "shuffle": "shuffled ctrl"}
STEP_COLUMNS = ("method", "seed", "step", "reward", "shaped", "acc", "entropy", "pen_mean", "penalized", "mem_rows",
                "sec")


class Progress:
    """A one-line progress bar on a terminal (stderr), redrawn in place; silent when ``enabled`` is False."""

    def __init__(self, total: int, enabled: bool = True, stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.done, self.width = total, 0, width
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.label = ""

    def advance(self, n: int = 1, label: str | None = None) -> None:
        self.done += n
        if label is not None:
            self.label = label
        self.draw()

    def draw(self) -> None:
        if not self.enabled:
            return
        frac = self.done / max(self.total, 1)
        bar = "#" * int(frac * self.width)
        self.stream.write(f"\r[{bar:<{self.width}}] {self.done}/{self.total} steps {self.label}\033[K")
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def step_row(log: RunLog, step: int) -> dict[str, Any]:
    """One row of the per-step table: mean partial reward before and after MEDS shaping (TRL's ``reward``), exact
    accuracy/entropy (evaluation steps only, else None), TRL's ``meds/*`` metrics and the step's seconds."""
    e = next((x for x in reversed(log.steps) if x["step"] == step), {})
    ev = next((x for x in reversed(log.evals) if x["step"] == step), None)
    return {"method": log.method, "seed": log.seed, "step": step, "reward": log.raw_reward.get(step),
            "shaped": e.get("reward"),
            "acc": ev["acc"] if ev else None, "entropy": ev["entropy"] if ev else None,
            "pen_mean": e.get("meds/penalty_mean", 0.0), "penalized": e.get("meds/penalized_frac", 0.0),
            "mem_rows": e.get("meds/memory_rows", 0.0), "sec": e.get("seconds")}


# per-step table on screen: (column, width, format)
_SCREEN = (("reward", 6, ".3f"), ("shaped", 6, ".3f"), ("acc", 6, ".3f"), ("entropy", 7, ".3f"), ("pen_mean", 8, ".3f"),
           ("penalized", 9, ".2f"), ("mem_rows", 8, ".0f"), ("sec", 6, ".3f"))


def format_row(row: dict[str, Any]) -> str:
    """One line of the per-step table (``-`` where a value is absent)."""
    cells = [f"{'-':>{w}}" if row[k] is None else f"{row[k]:>{w}{spec}}" for k, w, spec in _SCREEN]
    return f"{LABELS[row['method']]:<13} {row['seed']:>4} {row['step']:>4} " + " ".join(cells)


def table_header() -> str:
    return f"{'method':<13} {'seed':>4} {'step':>4} " + " ".join(f"{k:>{w}}" for k, w, _ in _SCREEN)


def _cell(a: dict[str, Any], fmt: str, n_seeds: int) -> str:
    """``mean ± sd`` over seeds; the mean alone for one seed (an sd of one value says nothing)."""
    if a["mean"] is None:
        return "-"
    if n_seeds < 2 or a["sd"] is None:
        return fmt.format(a["mean"])
    return f"{fmt.format(a['mean'])} ± {fmt.format(a['sd'])}"


def _caption(n_seeds: int) -> str:
    return f"metric ({n_seeds} seed{'s' if n_seeds > 1 else ''}, {'mean ± sd' if n_seeds > 1 else 'value'})"


def summary_table(agg: dict[str, dict[str, dict[str, Any]]], n_seeds: int) -> str:
    """Side-by-side summary: one row per metric, one ``mean ± sd`` column per method (the value for one seed)."""
    methods = [m for m in METHODS if m in agg]
    head = f"{_caption(n_seeds):<38}" + "".join(f"{LABELS[m]:>18}" for m in methods)
    lines = [head, "-" * len(head)]
    for m in METRICS:
        cells = [_cell(agg[method][m.key], m.fmt, n_seeds) for method in methods]
        lines.append(f"{m.label:<38}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def readme_table(metrics_json: str) -> str:
    """README's demo section, generated from a ``metrics.json`` the demo wrote: the summary table as markdown (the
    same rows and numbers the terminal prints), the claims, and the run's versions, machine and wall time.

    ``tests/test_readme.py`` checks that README holds exactly this text for ``docs/demo_metrics.json``.
    """
    with open(metrics_json, encoding="utf-8") as f:
        result = json.load(f)
    agg, n = result["aggregate"], result["config"]["seeds"]
    methods = [m for m in METHODS if m in agg]
    names = {"baseline": "baseline", "meds": "MEDS", "shuffle": "shuffled control"}
    lines = [f"| {_caption(n)} | " + " | ".join(names[m] for m in methods) + " |",
             "| --- |" + " --- |" * len(methods)]
    for m in METRICS:
        lines.append(f"| {m.label} | " + " | ".join(_cell(agg[method][m.key], m.fmt, n) for method in methods) + " |")
    claims = result.get("claims", [])
    lines.append("")
    lines.append("Claimed (MEDS beats the shuffled control in every seed, or in >= 80 % of >= 6 seeds, with paired "
                 "|t| >= 2): "
                 + ("; ".join(METRIC_BY_KEY[k].label for k in claims) if claims else "nothing") + ".")
    env = result.get("environment")
    if env:
        libs = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        lines.append(f"Recorded run: {libs}; {env['machine']}, {env['cpus']} CPUs, load average "
                     f"{env['loadavg_start']} at the start; {result['seconds']['total']:.0f} s wall "
                     f"(warm-up {result['seconds']['warm_start']:.0f} s, GRPO {result['seconds']['runs']:.0f} s).")
    return "\n".join(lines)


def _verdict(c: dict[str, Any], better: int, n_seeds: int, min_seeds: int) -> str:
    """Why a MEDS-vs-control difference is or is not claimed (the rule of :func:`summary.paired`)."""
    if c["claimed"]:
        return "MEDS better"
    if n_seeds < min_seeds:
        return "too few seeds: no claim"
    if better * c["delta"] <= 0:
        return "mean favours the control: no claim"
    need = "every seed" if n_seeds <= 5 else ">= 80 % of seeds"
    if c["wins"] < (n_seeds if n_seeds <= 5 else -(-4 * n_seeds // 5)):
        return f"not in {need}: no claim"
    return "|t| < 2: no claim"


def claim_lines(comparisons: dict[str, dict[str, dict[str, Any]]], n_seeds: int, min_seeds: int = 3) -> list[str]:
    """Plain-language lines: MEDS vs the shuffled control (claims only what beats it), then the context."""
    lines = []
    vs_ctrl = comparisons.get("meds_vs_shuffle", {})
    claimed = [k for k, c in vs_ctrl.items() if c["claimed"]]
    if n_seeds < min_seeds:
        lines.append(f"{n_seeds} seed(s): too few to claim anything (claims need >= {min_seeds} seeds).")
    for k, c in vs_ctrl.items():
        m = METRIC_BY_KEY[k]
        what = _verdict(c, m.better, n_seeds, min_seeds)
        lines.append(f"MEDS vs shuffled control: {m.label:<34} {c['delta']:+.3f} [{c['min']:+.3f}..{c['max']:+.3f}] "
                     f"t={c['t']:+.1f}, MEDS better in {c['wins']}/{c['n']} seeds -> {what}")
    if n_seeds >= min_seeds:
        if claimed:
            lines.append("What the memory adds beyond any penalty (MEDS beats the shuffled-penalty control in every "
                         "seed, or in >= 80 % of >= 6 seeds, with paired |t| >= 2): "
                         + "; ".join(METRIC_BY_KEY[k].label for k in claimed) + ".")
            if n_seeds < 6:
                lines.append(f"Caveat: {n_seeds} seeds is a small sample (all seeds agree by chance with probability "
                             f"1/{2 ** n_seeds} per metric); --seeds 6 gives firmer evidence.")
        else:
            lines.append("MEDS did not beat the shuffled-penalty control consistently (every seed, |t| >= 2) on any "
                         "metric in this run: no memory-specific effect is claimed.")
    for name, title in (("meds_vs_baseline", "MEDS vs baseline"), ("shuffle_vs_baseline", "shuffled ctrl vs baseline")):
        comp = comparisons.get(name)
        if comp:
            lines.append(f"{title} (context, not a claim about the memory): " + "; ".join(
                f"{k} {c['delta']:+.3f} ({c['wins']}/{c['n']})" for k, c in comp.items()
                if k in ("acc_final", "rep_rate", "top_wrong", "entropy")))
    return lines


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (NaN written as null)."""
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not np.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.generic):
            return clean(x.item())
        return x
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(clean(obj), f, indent=1)
    os.replace(tmp, path)


def write_steps_tsv(path: str, logs: list[RunLog]) -> None:
    """Every step of every run: the per-step table in full."""
    with open(path, "w") as f:
        f.write("\t".join(STEP_COLUMNS) + "\n")
        for log in logs:
            for e in log.steps:
                row = step_row(log, int(e["step"]))
                f.write("\t".join("" if row[c] is None else str(row[c]) for c in STEP_COLUMNS) + "\n")


def plot(out: str, logs: list[RunLog], agg: dict[str, dict[str, dict[str, Any]]],
         comparisons: dict[str, dict[str, dict[str, Any]]] | None = None) -> list[str]:
    """PNG plots (matplotlib, Agg): learning curves of the exact metrics and per-seed summary values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"baseline": "tab:gray", "meds": "tab:blue", "shuffle": "tab:orange"}
    files = []
    curves = (("acc", "exact P(correct), training prompts"), ("entropy", "answer entropy (nats), exact"),
              ("top_wrong", "top wrong answer's share, exact"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (key, title) in zip(axes, curves):
        for method in METHODS:
            runs = [g for g in logs if g.method == method]
            if not runs:
                continue
            steps = [e["step"] for e in runs[0].evals]
            vals = np.asarray([[e[key] for e in g.evals] for g in runs])
            ax.plot(steps, vals.mean(0), color=colors[method], label=LABELS[method])
            ax.fill_between(steps, vals.min(0), vals.max(0), color=colors[method], alpha=0.2, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("mean over seeds, band = min..max")
    fig.tight_layout()
    files.append(os.path.join(out, "curves.png"))
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)

    files.append(summary_plot(out, agg, comparisons or {}))
    return files


def summary_plot(out: str, agg: dict[str, dict[str, dict[str, Any]]],
                 comparisons: dict[str, dict[str, dict[str, Any]]]) -> str:
    """``summary.png``: the claim itself. For each claimable metric, the paired per-seed differences MEDS - shuffled
    control (what the memory adds) and MEDS - baseline (what any penalty adds), their means, a zero line; a metric
    the demo claims is marked. Returns the path."""
    import matplotlib.pyplot as plt

    keys = [m.key for m in METRICS if m.better != 0 and all(m.key in agg.get(x, {}) for x in ("meds", "shuffle"))]
    claimed = {k for k, c in comparisons.get("meds_vs_shuffle", {}).items() if c.get("claimed")}
    pairs = (("shuffle", "MEDS − shuffled\ncontrol", "tab:blue"), ("baseline", "MEDS −\nbaseline", "tab:gray"))
    fig, axes = plt.subplots(1, len(keys), figsize=(2.9 * len(keys), 4.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        metric = METRIC_BY_KEY[key]
        meds = np.asarray(agg["meds"][key]["values"], float)
        for i, (other, _, color) in enumerate(pairs):
            if other not in agg:
                continue
            diff = meds - np.asarray(agg[other][key]["values"], float)
            ax.scatter(np.full(len(diff), i) + np.linspace(-0.08, 0.08, len(diff)), diff, color=color, s=22,
                       zorder=3, label="one seed" if i == 0 else None)
            ax.hlines(diff.mean(), i - 0.25, i + 0.25, color=color, linewidth=2.5, label="mean" if i == 0 else None)
        ax.axhline(0.0, color="k", linewidth=0.8)
        ax.set_xticks(range(len(pairs)), [p[1] for p in pairs], fontsize=8)
        ax.set_xlim(-0.6, len(pairs) - 0.4)
        better = "higher" if metric.better > 0 else "lower"
        title = f"{metric.label}\n(MEDS better: {better})"
        if key in claimed:
            ax.set_facecolor("#e6f4e6")
            title = "CLAIMED\n" + title
        ax.set_title(title, fontsize=9, fontweight="bold" if key in claimed else "normal")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("paired difference per seed")
    axes[0][0].legend(fontsize=7, loc="best")
    n = len(agg["meds"][keys[0]]["values"]) if keys else 0
    fig.suptitle(f"What MEDS changes, {n} seed(s): dots = seeds, bar = mean, 0 = no change. A metric is claimed "
                 "(green) only when MEDS beats the shuffled control in every seed (>= 80 % of >= 6 seeds) with paired "
                 "|t| >= 2.", fontsize=9)
    fig.tight_layout()
    path = os.path.join(out, "summary.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
