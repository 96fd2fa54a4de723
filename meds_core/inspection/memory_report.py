"""inspect_memory(): a summary table and plots of a saved ErrorMemory (``meds inspect``).

Writes to the output folder:

* ``summary.json`` / ``summary.md``: memories, stored rows, clusters, noise, repeated errors (see
  :meth:`meds_core.inspection.memory_stats.MemoryStats.repeated_error_rate`), penalties, and the prompts with the most
  repeated errors;
* ``heatmap.png``: the stored features (per-layer logit lens at the answer token) of one prompt's memory,
  layers on x, rollouts grouped by cluster on y;
* ``cluster_sizes.png``: histogram of cluster sizes, wrong and correct memories;
* ``penalties.png``: the penalty a new wrong rollout would get in the cluster of each stored wrong row:
  ``penalties(stored size of that cluster)`` with the memory's own config.

matplotlib is imported only when plotting, with its Agg canvas (no pyplot, no display needed).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from meds_core.inspection.memory_stats import MemoryStats, memory_stats
from meds_core.step.memory import ErrorMemory
from meds_core.step.shaping import penalties

__all__ = ["inspect_memory", "load_answers", "stored_wrong_penalties", "summarize_memory"]

GROUP_NAMES = {0: "wrong", 1: "correct"}


def _row_cluster_sizes(labels: np.ndarray, noise_policy: str) -> np.ndarray:
    """Size of each stored row's cluster within its memory: [n] int64 (noise rows: the noise count under 'pool',
    0 under 'ignore'), i.e. the size a new rollout voted into that row's cluster would get."""
    if not len(labels):
        return np.zeros(0, np.int64)
    uniq, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    size = counts[inv.reshape(-1)].astype(np.int64)
    if noise_policy == "ignore":
        size[labels < 0] = 0
    return size


def stored_wrong_penalties(memory: ErrorMemory) -> np.ndarray:
    """Penalty for the cluster of every stored wrong row: ``penalties(sizes, wrong)`` with the memory's config.

    Returns
    -------
    ndarray of shape (stored wrong rows,), float64
        Rows in memory order (``memory.keys()``), oldest first within a memory. No GRPO-group gating.
    """
    cfg = memory.config
    sizes = [_row_cluster_sizes(memory.labels(k, g), cfg.noise_policy) for k, g in memory.keys() if g == 0]
    sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    return penalties(sizes, np.zeros(len(sizes), np.int64), **cfg.shaping_kwargs())


def _nan_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def _top_prompts(memory: ErrorMemory, stats: MemoryStats, top: int) -> list[dict[str, Any]]:
    rows = []
    for i, (key, group) in enumerate(stats.keys):
        if group != 0:
            continue
        labels = memory.labels(key, group)
        counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(1, np.int64)
        rows.append({"key": key, "wrong_rows": int(stats.rows[i]), "clusters": int(stats.clusters[i]),
                     "noise": int(stats.noise[i]), "repeated": int(stats.repeated[i]),
                     "largest_cluster": int(counts.max())})
    rows.sort(key=lambda r: (-r["repeated"], -r["wrong_rows"]))
    return rows[:top]


def summarize_memory(memory: ErrorMemory, top: int = 10) -> dict[str, Any]:
    """Summary numbers of a memory (JSON-ready).

    Returns
    -------
    dict
        ``memories``, ``rows``, ``clusters``, ``noise_rows``: dicts over 'wrong', 'correct', 'all';
        ``clusters_per_memory`` and ``noise_share`` likewise (None where undefined); ``repeated_errors`` and
        ``repeated_error_rate`` (wrong memories); ``cluster_sizes``: size -> number of clusters, per group;
        ``penalty``: mean / max / share > 0 of :func:`stored_wrong_penalties`; ``top_prompts``: the ``top``
        wrong memories with the most repeated errors; ``step`` and ``config``.
    """
    stats = memory_stats(memory)
    groups = {"wrong": 0, "correct": 1, "all": None}
    pen = stored_wrong_penalties(memory)
    wrong = np.array([g == 0 for _, g in stats.keys], dtype=bool)
    return {
        "step": memory.step,
        "memories": {name: stats.num_memories(g) for name, g in groups.items()},
        "rows": {name: stats.total_rows(g) for name, g in groups.items()},
        "clusters": {name: int(stats.clusters[stats.select(g)].sum()) for name, g in groups.items()},
        "noise_rows": {name: int(stats.noise[stats.select(g)].sum()) for name, g in groups.items()},
        "clusters_per_memory": {name: _nan_none(stats.clusters_per_memory(g)) for name, g in groups.items()},
        "noise_share": {name: _nan_none(stats.noise_share(g)) for name, g in groups.items()},
        "repeated_errors": int(stats.repeated[wrong].sum()),
        "repeated_error_rate": _nan_none(stats.repeated_error_rate()),
        "cluster_sizes": {GROUP_NAMES[g]: {str(s): int(c) for s, c in zip(*np.unique(v, return_counts=True))}
                          for g, v in sorted(stats.cluster_sizes.items())},
        "penalty": {"rows": len(pen), "mean": _nan_none(float(pen.mean())) if len(pen) else None,
                    "max": float(pen.max()) if len(pen) else None,
                    "share_positive": float((pen > 0).mean()) if len(pen) else None},
        "top_prompts": _top_prompts(memory, stats, top),
        "config": memory.config.to_dict(),
    }


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown: one table of totals per group, one of the top prompts."""
    lines = ["| | wrong | correct | all |", "|---|---|---|---|"]
    for label, field in (("memories", "memories"), ("rows stored", "rows"), ("clusters", "clusters"),
                         ("clusters per memory", "clusters_per_memory"), ("noise rows", "noise_rows"),
                         ("noise share", "noise_share")):
        v = summary[field]
        lines.append(f"| {label} | {_fmt(v['wrong'])} | {_fmt(v['correct'])} | {_fmt(v['all'])} |")
    pen = summary["penalty"]
    lines += [f"| repeated errors | {summary['repeated_errors']} | | |",
              f"| repeated-error rate | {_fmt(summary['repeated_error_rate'])} | | |",
              f"| penalty mean / max | {_fmt(pen['mean'])} / {_fmt(pen['max'])} | | |", ""]
    lines += [f"Top prompts by repeated errors (step {summary['step']}):", "",
              "| prompt key | wrong rows | clusters | noise | repeated | largest cluster |",
              "|---|---|---|---|---|---|"]
    for r in summary["top_prompts"]:
        lines.append(f"| {r['key']} | {r['wrong_rows']} | {r['clusters']} | {r['noise']} | {r['repeated']} | "
                     f"{r['largest_cluster']} |")
    lines += ["", "Repeated errors: stored wrong rows whose cluster already held an earlier stored row of the same "
              "prompt (rows in clusters - clusters, per wrong memory); rate = repeated / stored wrong rows. Penalty: "
              "penalties(stored size of each wrong row's cluster) with the memory's config."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _layer_ticks(config: Any, F: int) -> list[str]:
    """x tick labels of the F feature columns: the last F layers (L-F+1 .. L) or their differences."""
    names = ["L" if j == 0 else f"L-{j}" for j in range(F - 1, -1, -1)]
    return [f"Δ{n}" for n in names] if config.use_layer_diff else names


def cluster_answers(labels: np.ndarray, answers: Any) -> dict[int, str]:
    """The most frequent answer text of each cluster (ties: the earliest stored), e.g. ``'7' (4/5)``.

    Parameters
    ----------
    labels : ndarray [n] int64
        Cluster labels of one memory's stored rows (-1 noise).
    answers : sequence of str, length n
        Answer text of each stored row, oldest first (the order of ``memory.rows``).
    """
    from collections import Counter

    if len(answers) != len(labels):
        raise ValueError(f"the answers list has {len(answers)} entries but the memory stores {len(labels)} rows; "
                         "pass the answer file written together with this memory file.")
    out = {}
    for lab in np.unique(labels):
        texts = [str(answers[i]) for i in np.flatnonzero(labels == lab)]
        text, count = Counter(texts).most_common(1)[0]
        out[int(lab)] = f"{text!r} ({count}/{len(texts)})"
    return out


def plot_heatmap(memory: ErrorMemory, key: Any, group: int, path: str, answers: Any = None) -> None:
    """Heatmap of one memory's stored rows [n, F]: layers on x, rows grouped by cluster (noise last) on y; every
    cluster labelled with its size and, when ``answers`` (one text per stored row, oldest first) is given, its
    most frequent answer text."""
    rows, labels = memory.rows(key, group), memory.labels(key, group)
    texts = cluster_answers(labels, answers) if answers is not None else {}
    order = np.lexsort((np.arange(len(labels)), np.where(labels < 0, np.iinfo(np.int64).max, labels)))
    rows, labels = rows[order], labels[order]
    F = rows.shape[1] if rows.ndim == 2 else 0
    n_groups = len(np.unique(labels)) if len(labels) else 0
    fig = _figure(max(5.0, 0.6 * F + 3.5), min(16.0, max(3.0, 2.0 + 0.06 * len(rows), 1.0 + 0.14 * n_groups)))
    ax = fig.add_subplot()
    im = ax.imshow(rows, aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(im, ax=ax, label="logit lens: <h_l, W_U[answer token]>")
    bounds = np.flatnonzero(np.diff(labels)) + 1
    for b in bounds:
        ax.axhline(b - 0.5, color="white", linewidth=1.5)
    starts = np.concatenate([[0], bounds]) if len(labels) else np.zeros(0, np.int64)
    ends = np.concatenate([bounds, [len(labels)]]) if len(labels) else np.zeros(0, np.int64)
    # every cluster is labelled with its size (font shrinks with the number of clusters); noise is pooled last
    ax.set_yticks([(starts[j] + ends[j] - 1) / 2 for j in range(len(starts))])
    ax.set_yticklabels([f"{'noise (pooled)' if labels[starts[j]] < 0 else f'cluster {labels[starts[j]]}'}: "
                        f"{ends[j] - starts[j]} rows" + (f", answer {texts[int(labels[starts[j]])]}" if texts else "")
                        for j in range(len(starts))],
                       fontsize=max(5.0, min(9.0, 400.0 / max(len(starts), 1))))
    ax.set_xticks(range(F))
    ax.set_xticklabels(_layer_ticks(memory.config, F))
    ax.set_xlabel("layer")
    ax.set_ylabel("stored rollouts, grouped by cluster")
    ax.set_title(f"prompt {key!r}, {GROUP_NAMES.get(group, group)} rollouts: {len(rows)} rows")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # keeps the colorbar's label, which tight_layout alone cuts off


def plot_cluster_sizes(stats: MemoryStats, path: str) -> None:
    """Histogram of cluster sizes (number of clusters of each size), wrong and correct memories side by side."""
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    top = max([int(v.max()) for v in stats.cluster_sizes.values() if len(v)] or [2])
    bins = np.arange(1.5, top + 1.5) if top < 40 else np.unique(np.geomspace(2, top + 1, 30).round()) - 0.5
    series = [(stats.cluster_sizes.get(g, np.zeros(0)), GROUP_NAMES[g]) for g in (0, 1)]
    ax.hist([s for s, _ in series], bins=bins, label=[n for _, n in series], color=["tab:red", "tab:green"])
    ax.set_xlabel("cluster size (stored rows)")
    ax.set_ylabel("clusters")
    ax.set_title("cluster sizes over all memories")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def stored_wrong_noise(memory: ErrorMemory) -> np.ndarray:
    """Whether each stored wrong row is noise (label -1): [stored wrong rows] bool, the order of
    :func:`stored_wrong_penalties`. Under ``noise_policy='pool'`` their penalty comes from the pooled noise count."""
    flags = [memory.labels(k, g) < 0 for k, g in memory.keys() if g == 0]
    return np.concatenate(flags) if flags else np.zeros(0, bool)


def plot_penalties(pen: np.ndarray, config: Any, path: str, noise: np.ndarray | None = None) -> None:
    """Histogram of :func:`stored_wrong_penalties`, rows in clusters and noise rows stacked separately."""
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    hi = config.penalty_coef * config.penalty_cap
    bins = np.linspace(0, hi if hi > 0 else 1.0, 31)
    noise = np.zeros(len(pen), bool) if noise is None else np.asarray(noise, bool)
    pooled = "pooled noise count" if config.noise_policy == "pool" else "no penalty: noise_policy 'ignore'"
    ax.hist([pen[~noise], pen[noise]], bins=bins, stacked=True, color=["tab:red", "tab:gray"],
            label=[f"rows in a cluster ({int((~noise).sum())})", f"noise rows ({int(noise.sum())}; {pooled})"])
    ax.legend(fontsize=8)
    ax.set_xlabel(f"penalty = {config.penalty_coef:g} * min(ln(|C| + 1), {config.penalty_cap:g})")
    ax.set_ylabel("stored wrong rollouts")
    ax.set_title(f"penalty in each stored wrong row's cluster (target {config.cluster_penalty_target!r})")
    fig.tight_layout()
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------------- entry
def _find_key(memory: ErrorMemory, key: Any, group: int) -> Any:
    """The stored key equal to ``key`` or whose str() is ``key`` (a CLI string matches an int key)."""
    keys = [k for k, g in memory.keys() if g == group]
    for k in keys:
        if k == key or str(k) == str(key):
            return k
    raise ValueError(f"prompt key {key!r} has no {GROUP_NAMES.get(group, group)} memory; stored keys include "
                     f"{[str(k) for k in keys[:10]]}.")


def load_answers(path: str | os.PathLike) -> dict[str, dict[str, list[str]]]:
    """An answer file: ``{"wrong": {key: [text per stored row]}, "correct": {...}}`` (keys as text), as written by
    ``examples/plain_rl_loop.py --answers-out``."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not set(data) <= set(GROUP_NAMES.values()):
        raise ValueError(f"{os.fspath(path)} is not an answer file: expected {{'wrong': {{key: [texts]}}, "
                         "'correct': {...}}, as examples/plain_rl_loop.py --answers-out writes.")
    return data


def inspect_memory(memory: str | os.PathLike | ErrorMemory, out: str | os.PathLike, *, key: Any = None,
                   group: int = 0, top: int = 10, plots: bool = True,
                   answers: dict[str, dict[str, list[str]]] | None = None) -> dict[str, Any]:
    """Write the summary (json + markdown) and the plots of a memory to ``out``.

    Parameters
    ----------
    memory : path or ErrorMemory
        A file written by :meth:`ErrorMemory.save`, or a memory.
    out : path
        Output folder (created).
    key : str or int, optional
        Prompt key of the heatmap (a string matches an int key by its text). Default: the wrong memory with the
        most repeated errors (``group`` 1: the largest correct memory).
    group : {0, 1}
        Memory of the heatmap: 0 wrong, 1 correct.
    top : int
        Prompts listed in ``top_prompts``.
    plots : bool
        Write the PNGs (needs matplotlib).
    answers : dict, optional
        Answer texts of the stored rows (see :func:`load_answers`); the heatmap then names each cluster's most
        frequent answer.

    Returns
    -------
    dict
        The summary of :func:`summarize_memory` plus ``files``: paths written.
    """
    if group not in (0, 1):
        raise ValueError(f"group={group!r} must be 0 (wrong) or 1 (correct).")
    mem = memory if isinstance(memory, ErrorMemory) else ErrorMemory.load(os.fspath(memory))
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    summary = summarize_memory(mem, top)
    md = summary_markdown(summary)
    files = {"summary_json": os.path.join(out, "summary.json"), "summary_md": os.path.join(out, "summary.md")}
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise ImportError("meds inspect plots need matplotlib: pip install matplotlib (or pass --no-plots).") \
                from exc
        stats = memory_stats(mem)
        if key is None:
            if group == 0 and summary["top_prompts"]:
                key = summary["top_prompts"][0]["key"]
            else:
                cands = [(int(stats.rows[i]), k) for i, (k, g) in enumerate(stats.keys) if g == group]
                key = max(cands, key=lambda c: c[0])[1] if cands else None
        else:
            key = _find_key(mem, key, group)
        if key is not None:
            files["heatmap"] = os.path.join(out, "heatmap.png")
            texts = (answers or {}).get(GROUP_NAMES[group], {}).get(str(key))
            plot_heatmap(mem, key, group, files["heatmap"], texts)
            summary["heatmap_key"] = key
        files["cluster_sizes"] = os.path.join(out, "cluster_sizes.png")
        plot_cluster_sizes(stats, files["cluster_sizes"])
        files["penalties"] = os.path.join(out, "penalties.png")
        plot_penalties(stored_wrong_penalties(mem), mem.config, files["penalties"], stored_wrong_noise(mem))
    summary["files"] = files
    with open(files["summary_json"], "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    with open(files["summary_md"], "w", encoding="utf-8") as f:
        f.write(md)
    summary["markdown"] = md
    return summary
