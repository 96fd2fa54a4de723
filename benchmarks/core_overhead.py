"""Per-step cost of the core outside clustering, and the import time of meds_core.

ErrorMemory.update for P prompts x G rollouts x F features, at several memory fill levels, split into the
clustering call (``stats['cluster_seconds']``) and everything else (validation, grouping, the batched k-NN vote,
sizes, append/evict). Anchor, side by side: the reference's per-rollout k-NN refit (scikit-learn
NearestNeighbors fitted on the stored rows for every new rollout), timed on a random subset of rollouts and
scaled to the whole batch.

    python benchmarks/core_overhead.py            # P=512, G=16, F=14; fills 0, 64, 256
    python benchmarks/core_overhead.py --fills 0 16 --prompts 64   # quick
Writes benchmarks/results/core_overhead_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from meds_core import ErrorMemory, MEDSConfig
from meds_core.clustering import HDBSCANParams, cluster_batch

HERE = os.path.dirname(os.path.abspath(__file__))


def make_batch(rng, prompts, group, dim, centers):
    """Rollouts of every prompt drawn around per-(prompt, correctness) modes: keys, feats [B, F], correct [B]."""
    keys = np.repeat(np.arange(prompts), group)
    correct = (rng.random(prompts * group) < 0.5).astype(np.int64)
    mode = rng.integers(0, centers.shape[2], size=prompts * group)
    feats = centers[keys, correct, mode] + rng.normal(scale=0.3, size=(prompts * group, dim))
    return keys, feats.astype(np.float32), correct


def prefilled_state(rng, config, prompts, fill, dim, centers):
    """state_dict of a memory holding ``fill`` clustered rows in each (prompt, group) memory."""
    keys, groups, rows = [], [], []
    for p in range(prompts):
        for g in (0, 1):
            mode = rng.integers(0, centers.shape[2], size=fill)
            rows.append((centers[p, g, mode] + rng.normal(scale=0.3, size=(fill, dim))).astype(np.float32))
            keys.append(p)
            groups.append(g)
    units = [r / np.linalg.norm(r, axis=1, keepdims=True) for r in rows]
    labels = cluster_batch([u.astype(np.float64) for u in units],
                           HDBSCANParams(config.min_cluster_size, config.min_samples), "hdbscan")
    return {"format_version": 1, "config": config.to_dict(), "dim": dim, "step": 1, "keys": keys,
            "groups": np.asarray(groups, np.int8), "lengths": np.full(len(keys), fill, np.int64),
            "rows": np.concatenate(rows), "labels": np.concatenate(labels)}


def reference_knn_seconds(memory, keys, feats, correct, sample, rng):
    """Per-rollout NearestNeighbors refit + vote (the reference's assignment, meds_core.testing.reference_vote),
    timed on ``sample`` rollouts."""
    from meds_core.testing import reference_vote

    idx = rng.choice(len(keys), size=min(sample, len(keys)), replace=False)
    t0 = time.perf_counter()
    for b in idx:
        stored = memory.rows(int(keys[b]), int(correct[b]))
        if not len(stored):
            continue
        reference_vote(stored, memory.labels(int(keys[b]), int(correct[b])), feats[b], 3)
    return (time.perf_counter() - t0) * len(keys) / len(idx)


def import_seconds(repeats=5):
    """Wall time of ``import meds_core`` in a fresh interpreter (median), and whether torch got imported."""
    code = ("import time,sys;t=time.perf_counter();import meds_core;"
            "print(time.perf_counter()-t, 'torch' in sys.modules, 'hdbscan' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(repeats)]
    return statistics.median(float(r[0]) for r in runs), runs[0][1] == "True", runs[0][2] == "True"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--dim", type=int, default=14)
    ap.add_argument("--fills", type=int, nargs="+", default=[0, 64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--anchor-sample", type=int, default=256)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "core_overhead_cpu"))
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    config = MEDSConfig(use_last_n_layers=args.dim, backend="hdbscan", max_rows_per_memory=1024)
    centers = rng.normal(size=(args.prompts, 2, 4, args.dim)) * 3.0
    rows = []
    for fill in args.fills:
        state = prefilled_state(rng, config, args.prompts, fill, args.dim, centers) if fill else None
        keys, feats, correct = make_batch(rng, args.prompts, args.group, args.dim, centers)
        totals, clusters = [], []
        for _ in range(args.repeats):
            memory = ErrorMemory(config)
            if state is not None:
                memory.load_state_dict(state)
            t0 = time.perf_counter()
            res = memory.update(keys, feats, correct)
            totals.append(time.perf_counter() - t0)
            clusters.append(res.stats["cluster_seconds"])
        memory = ErrorMemory(config)
        if state is not None:
            memory.load_state_dict(state)
        anchor = reference_knn_seconds(memory, keys, feats, correct, args.anchor_sample, rng) if fill else 0.0
        overhead = statistics.median(t - c for t, c in zip(totals, clusters))
        rows.append({"rows_per_memory_before": fill, "batch": len(keys), "memories": 2 * args.prompts,
                     "update_ms": 1e3 * statistics.median(totals), "cluster_ms": 1e3 * statistics.median(clusters),
                     "overhead_ms": 1e3 * overhead, "reference_knn_ms": 1e3 * anchor,
                     "knn_speedup": anchor / overhead if fill else None})
        print(f"fill {fill}: {rows[-1]}", file=sys.stderr)

    imp, torch_loaded, hdbscan_loaded = import_seconds()
    head = ("| stored rows / memory | batch | update total ms | clustering call ms | overhead excl. clustering ms | "
            "reference per-rollout k-NN refit ms (anchor) | anchor / overhead |")
    lines = [f"# ErrorMemory.update cost outside clustering ({args.prompts} prompts x {args.group} rollouts, "
             f"F={args.dim}, backend hdbscan)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
             f"Median of {args.repeats} updates per row; the anchor is timed on {args.anchor_sample} random "
             "rollouts and scaled to the batch.", "", head, "|" + "---|" * 7]
    for r in rows:
        sp = f"{r['knn_speedup']:.0f}x" if r["knn_speedup"] else "n/a (empty memory)"
        lines.append(f"| {r['rows_per_memory_before']} | {r['batch']} | {r['update_ms']:.1f} | {r['cluster_ms']:.1f} "
                     f"| {r['overhead_ms']:.1f} | {r['reference_knn_ms']:.0f} | {sp} |")
    lines += ["", f"`import meds_core` in a fresh interpreter: {imp * 1e3:.0f} ms (median of 5); "
              f"torch imported: {torch_loaded}; hdbscan imported: {hdbscan_loaded}."]
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(table + "\n")
    with open(args.out + ".json", "w") as f:
        json.dump({"args": vars(args), "rows": rows, "import_seconds": imp, "import_loads_torch": torch_loaded,
                   "machine": platform.machine(), "cpus": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
    main()
