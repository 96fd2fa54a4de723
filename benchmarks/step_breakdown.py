"""Where one incremental MEDS step spends its time: ``ErrorMemory.update`` split into its parts, on the stream of
``clustering_latency.py --stream`` (P memories, m new rows each per step, n growing to the cap, then sliding).

Parts (wall ms, the median of ``--repeats`` runs of the step from copies of the state before it):

* checks + split: input validation and grouping the rows by memory (``_check_inputs``, ``_split_by_memory``);
* step rows: the touched memories' stored float32 rows and the new ones packed into float64 unit rows
  (``_step_rows``);
* vote + sizes: the k-NN vote over the stored rows and the voted cluster's size (``_assign``);
* staging: appending the new rows to each memory's buffers and the FIFO drop (``_staged``);
* engine kernel: the numba incremental kernel (``_incremental.incremental_packed``: FIFO reconnect, new rows,
  tree stage) for every memory in one parallel call (0 where a step takes the plain full engine instead:
  memories that keep no state, e.g. at a small cap);
* around the kernel: the rest of ``_recluster`` (Python: states gathered and handed back, labels split and stored).

This is a profiling benchmark: it wraps those private methods, so it names today's internals. Times are on numba's
threads (all by default), BLAS on one.

    python benchmarks/step_breakdown.py                  # P = 512, m = 16, d = 14, cap 1024, (2, 1)
    python benchmarks/step_breakdown.py --sizes 64 256   # only these n (and the cap, if listed)

Writes benchmarks/results/step_breakdown.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clustering_latency import _environment, _environment_line, make_memories  # noqa: E402

from meds_core import ErrorMemory, MEDSConfig  # noqa: E402
from meds_core.clustering import _incremental  # noqa: E402
from meds_core.step import memory as memory_module  # noqa: E402

PARTS = [("checks + split", ("_check_inputs", "_split_by_memory")), ("step rows", ("_step_rows",)),
         ("vote + sizes", ("_assign",)), ("staging", ("_staged",)), ("engine kernel", ("incremental_packed",))]


class Timers:
    """Wall seconds per wrapped callable, summed since the last ``clear``."""

    def __init__(self):
        self.total: dict[str, float] = {}

    def wrap(self, owner, name: str) -> None:
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[name] = self.total.get(name, 0.0) + time.perf_counter() - t0

        setattr(owner, name, timed)

    def clear(self) -> None:
        self.total.clear()


def main():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        run()


def run():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--new-rows", type=int, default=16)
    ap.add_argument("--dims", type=int, default=14)
    ap.add_argument("--cap", type=int, default=1024)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512, 1024])
    ap.add_argument("--cap-steps", type=int, default=2, help="steps reported at the cap (after growing to it)")
    ap.add_argument("--mcs", type=int, default=2)
    ap.add_argument("--ms", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "step_breakdown"))
    args = ap.parse_args()
    import numba

    P, m, d, cap = args.prompts, args.new_rows, args.dims, args.cap
    timers = Timers()
    for _, names in PARTS:
        for name in names:
            timers.wrap(_incremental if name == "incremental_packed" else memory_module.ErrorMemory, name)
    timers.wrap(memory_module.ErrorMemory, "_recluster")
    cfg = MEDSConfig(use_last_n_layers=d, min_cluster_size=args.mcs, min_samples=args.ms, backend="numba",
                     max_rows_per_memory=cap, max_total_rows=P * cap * 2)
    warm = ErrorMemory(dataclasses.replace(cfg, max_rows_per_memory=2 * m))  # JIT loads (both paths) untimed
    for t in range(3):
        rows = make_memories(2 + t, 2, m, d).reshape(-1, d)
        warm.update(np.repeat(np.arange(2), m), rows, np.zeros(len(rows), np.int64))
    grow = cap // m
    steps = grow + args.cap_steps
    feats = make_memories(1, P, steps * m, d)
    memory = ErrorMemory(cfg)
    keys, zeros = np.repeat(np.arange(P), m), np.zeros(P * m, np.int64)
    loadavg = open("/proc/loadavg").read().split()[:3]
    t_start = time.perf_counter()
    rows_out = []
    for t in range(steps):
        batch = feats[:, t * m:(t + 1) * m].reshape(-1, d)
        n = min((t + 1) * m, cap)
        at_cap = (t + 1) * m > cap
        if not (at_cap or n in args.sizes):
            memory.update(keys, batch, zeros)
            continue
        start, runs = copy.deepcopy(memory), []
        for _ in range(args.repeats):
            memory = copy.deepcopy(start)
            timers.clear()
            t0 = time.perf_counter()
            memory.update(keys, batch, zeros)
            total = time.perf_counter() - t0
            parts = {label: sum(timers.total.get(name, 0.0) for name in names) for label, names in PARTS}
            parts["around the kernel"] = (timers.total["_recluster"] - timers.total["_staged"]
                                          - timers.total.get("incremental_packed", 0.0))
            parts["other"] = total - sum(parts.values())
            runs.append((total, parts))
        med = {label: 1e3 * statistics.median(r[1][label] for r in runs) for label in runs[0][1]}
        rows_out.append({"n": n, "step": t + 1, "at_cap": at_cap,
                         "total_ms": 1e3 * statistics.median(r[0] for r in runs),
                         "runs_ms": [1e3 * r[0] for r in runs], "parts_ms": med})
        print(f"n={n} step {t + 1}: {rows_out[-1]['total_ms']:.1f} ms " + ", ".join(f"{k} {v:.1f}"
                                                                                   for k, v in med.items()),
              file=sys.stderr)
    loadavg_end = open("/proc/loadavg").read().split()[:3]
    env = _environment()
    labels = list(rows_out[0]["parts_ms"])
    lines = ["# Where one incremental MEDS step spends its time", "",
             f"P = {P} memories, m = {m} new rows per memory per step, d = {d}, cap {cap}, (min_cluster_size, "
             f"min_samples) = ({args.mcs}, {args.ms}); incremental numba engine on {numba.get_num_threads()} "
             f"threads; whole ErrorMemory.update per step, median of {args.repeats} runs from copies of the state "
             f"before the step (parts: medians of their own). loadavg {' '.join(loadavg)} at start, "
             f"{' '.join(loadavg_end)} at end; {(time.perf_counter() - t_start) / 60:.1f} min. Parts: see "
             "benchmarks/step_breakdown.py.", "", _environment_line(env), "",
             "| n | step total ms | " + " | ".join(f"{lab} ms" for lab in labels) + " | outside the engine kernel ms |",
             "|---|---|" + "---|" * (len(labels) + 1)]
    for r in rows_out:
        tag = f" (at cap, step {r['step']})" if r["at_cap"] else ""
        outside = r["total_ms"] - r["parts_ms"]["engine kernel"]
        lines.append(f"| {r['n']}{tag} | {r['total_ms']:.1f} | "
                     + " | ".join(f"{r['parts_ms'][lab]:.1f}" for lab in labels) + f" | {outside:.1f} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(table + "\n")
    with open(args.out + ".json", "w") as f:
        json.dump({"args": vars(args), "loadavg": [loadavg, loadavg_end], "environment": env,
                   "numba_threads": numba.get_num_threads(), "rows": rows_out}, f, indent=2)


if __name__ == "__main__":
    main()
