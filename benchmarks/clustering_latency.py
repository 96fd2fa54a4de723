"""Latency of one whole MEDS memory step (k-NN vote + cluster sizes + re-cluster), per clustering implementation.

A step: P memories of n rows each after the step (n - m stored and labelled, m = min(16, n // 2) new rows arrive;
features of d columns, 1-6 modes per memory). Each implementation runs the same step through ``ErrorMemory.update``
(vote, sizes, append, ONE clustering call), except the reference:

* reference step: what the MEDS reference code does per memory (a scikit-learn NearestNeighbors refit and a Counter
  vote for every new row, then ``hdbscan.HDBSCAN`` with its default algorithm on the memory); always timed on a
  subset of the memories and scaled to P (labelled);
* hdbscan / sklearn / fast_hdbscan loop: the library once per memory (numpy k-NN vote);
* engine: ``meds_core`` numba HDBSCAN* and k-NN vote (``backend='numba'``), on 1 thread and on all threads, every
  memory recomputed in full (the incremental state is switched off: a memory loaded from a state, as here, would
  otherwise also rebuild and check its MST on this first step; stream mode measures the incremental engine).

HDBSCAN settings: (min_cluster_size 2, min_samples 1), the reference's, and (5, 5). Times are medians (ms per step),
speed-ups are over the reference step of the same cell, measured in the same run. BLAS is held to one thread (the
loops run one small problem at a time; idle BLAS threads spinning next to numba's would distort the multi-thread
rows). On a shared machine a co-tenant steals CPU: every measurement records the CPU-pressure stall share
(/proc/pressure/cpu) and is retried when above 0.15 (up to 3 times; the least-stalled run is kept and its stall
reported).

    python benchmarks/clustering_latency.py            # full grid: library loops on every memory
    python benchmarks/clustering_latency.py --quick    # library loops on a subset of memories, scaled (labelled)
    python benchmarks/clustering_latency.py --prompts 512 --sizes 64 256 1024 --dims 14   # a slice
    python benchmarks/clustering_latency.py --stream --prompts 512 --cap 1024 --dims 14   # stream mode
Writes benchmarks/results/clustering_latency_cpu.{json,md} (stream mode: clustering_latency_stream.{json,md}).

Stream mode: P memories each receive m new rows per step (one ``ErrorMemory.update`` per step, all in group 0) while
n grows from 0 to the cap and then slides; the incremental engine (numba, each memory's state kept) and the full
engine (numba, recomputed every step) are fed the same stream side by side in one run; their labels are asserted
equal at every step; reported: ms per step (whole update: vote, sizes, clustering) against n, the median of
``--repeats`` runs of each reported step from copies of the state before it, and the bytes the kept states add. At a
few n the hdbscan library loop (backend 'hdbscan') and the reference step are timed on a subset of the same state
(scaled to P, labelled).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

from meds_core import ErrorMemory, MEDSConfig
from meds_core.clustering import hdbscan_batch

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = [(2, 1), (5, 5)]
LIBRARIES = [("hdbscan", "hdbscan library loop"), ("sklearn", "sklearn loop"), ("fast_hdbscan", "fast_hdbscan loop")]
MAX_STALL = 0.15


class Progress:
    """A one-line progress bar on stderr (tqdm when installed)."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            self._bar, self.total, self.done, self.t0 = None, total, 0, time.perf_counter()

    def step(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description(text)
            self._bar.update(1)
            return
        self.done += 1
        filled = int(30 * self.done / self.total)
        elapsed = time.perf_counter() - self.t0
        print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {elapsed:6.0f}s {text[:60]:<60}",
              end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            print(file=sys.stderr)


def _stall_us() -> float:
    """Microseconds some task waited for a CPU so far (Linux PSI), or nan where unavailable."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split("total=")[1])
    except (OSError, IndexError, ValueError):
        return float("nan")


def timed(fn, repeats: int) -> tuple[float, float, list]:
    """(median seconds, stall share, outputs) of ``repeats`` calls of fn(); retried while the machine is contended."""
    best = None
    for _ in range(3):
        times, outs, s0, w0 = [], [], _stall_us(), time.perf_counter()
        for _ in range(repeats):
            t0 = time.perf_counter()
            outs.append(fn())
            times.append(time.perf_counter() - t0)
        stall = (_stall_us() - s0) / (1e6 * (time.perf_counter() - w0))
        if best is None or not stall >= best[1]:
            best = (statistics.median(times), stall, outs)
        if not stall > MAX_STALL:
            break
    return best


def make_memories(seed: int, P: int, n: int, d: int) -> np.ndarray:
    """Features [P, n, d] float32: per memory 1-6 gaussian modes (different spreads) and 5 % scattered rows."""
    r = np.random.default_rng([seed, P, n, d])
    out = np.empty((P, n, d), np.float32)
    for p in range(P):
        k = int(r.integers(1, 7))
        centers = r.normal(size=(k, d)) + 2.0
        mode = r.integers(0, k, size=n)
        x = centers[mode] + r.normal(size=(n, d)) * r.uniform(0.05, 0.4, size=k)[mode, None]
        noise = r.random(n) < 0.05
        x[noise] = r.uniform(x.min(0), x.max(0), size=(int(noise.sum()), d))
        out[p] = x[r.permutation(n)]
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Cell:
    """One (P, n, d, mcs, ms) step: a prefilled memory state and the batch of new rows."""

    def __init__(self, P: int, n: int, d: int, mcs: int, ms: int):
        self.P, self.n, self.d, self.mcs, self.ms = P, n, d, mcs, ms
        self.m = min(16, n // 2)
        feats = make_memories(0, P, n, d)
        self.stored, self.new = feats[:, :n - self.m], feats[:, n - self.m:]
        self.stored_labels = hdbscan_batch(list(_unit(self.stored)), mcs, ms)

    def config(self, backend: str) -> MEDSConfig:
        return MEDSConfig(use_last_n_layers=self.d, min_cluster_size=self.mcs, min_samples=self.ms, backend=backend,
                          max_rows_per_memory=self.n)

    def state(self, config: MEDSConfig, k: int) -> dict:
        """state_dict of a memory holding the stored rows of the first k memories (all in group 0)."""
        return {"format_version": 1, "config": config.to_dict(), "dim": self.d, "step": 1, "keys": list(range(k)),
                "groups": np.zeros(k, np.int8), "lengths": np.full(k, self.n - self.m, np.int64),
                "rows": self.stored[:k].reshape(-1, self.d), "labels": np.concatenate(self.stored_labels[:k])}

    def batch(self, k: int):
        keys = np.repeat(np.arange(k), self.m)
        return keys, self.new[:k].reshape(-1, self.d), np.zeros(k * self.m, np.int64)

    def memory_step(self, backend: str, k: int, repeats: int) -> dict:
        """ErrorMemory.update on the first k memories: total and clustering-call seconds (medians), stall share."""
        config = self.config(backend)
        state, (keys, feats, correct) = self.state(config, k), self.batch(k)
        memories = []

        def setup():
            memory = ErrorMemory(config)
            memory.load_state_dict(state)
            memory._incremental = False  # full recomputation, what the cell measures (see the module docstring)
            memories.append(memory)

        def run():
            memory = memories.pop()
            return memory.update(keys, feats, correct).stats["cluster_seconds"]

        def once():  # the state load is outside the timed call
            setup()
            t0 = time.perf_counter()
            c = run()
            return time.perf_counter() - t0, c

        setup()
        run()  # warm-up: library imports, JIT cache load
        best = None
        for _ in range(3):
            s0, w0 = _stall_us(), time.perf_counter()
            outs = [once() for _ in range(repeats)]
            stall = (_stall_us() - s0) / (1e6 * (time.perf_counter() - w0))
            if best is None or not stall >= best[2]:
                best = (statistics.median(t for t, _ in outs), statistics.median(c for _, c in outs), stall)
            if not stall > MAX_STALL:
                break
        return {"seconds": best[0], "cluster_seconds": best[1], "stall": best[2]}

    def reference_step(self, k: int) -> dict:
        """The reference's per-memory step on the first k memories: per-row NearestNeighbors refit + Counter vote, and
        hdbscan.HDBSCAN (default algorithm) on the memory. Seconds for the k memories, stall share."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_seconds, stall, _ = timed(lambda: reference_memories(self.stored[:k], self.stored_labels[:k],
                                                                     self.new[:k], self.mcs, self.ms), 1)
        return {"seconds": run_seconds, "stall": stall}


def reference_memories(stored, stored_labels, new, mcs: int, ms: int) -> None:
    """What the MEDS reference code does per memory (``meds_core.testing``): for every new row a NearestNeighbors
    (cosine) refit on the stored rows and a Counter vote with the voted cluster's size, then ``hdbscan.HDBSCAN``
    on the stored plus new rows. stored [k] of [n_i, d], stored_labels [k] of [n_i] int, new [k] of [m, d]."""
    from meds_core.testing import reference_labels, reference_vote

    for rows, labels, fresh in zip(stored, stored_labels, new):
        labels = np.asarray(labels)
        for row in fresh:
            reference_vote(rows, labels, row, 3)
        reference_labels(np.concatenate([rows, fresh]), mcs, ms)


def subset_size(per_memory_s: float, P: int, budget_s: float) -> int:
    """Memories to time so that one measurement takes about budget_s (at least 8, at most P)."""
    return int(min(P, max(8, budget_s / max(per_memory_s, 1e-9))))


def measure_cell(cell: Cell, args, numba, progress: Progress) -> list[dict]:
    P, tag = cell.P, f"P={cell.P} n={cell.n} d={cell.d} mcs={cell.mcs} ms={cell.ms}"
    rows = []
    probe = cell.reference_step(4)["seconds"] / 4
    k = subset_size(probe, P, args.budget)
    ref = cell.reference_step(k)
    ref_ms = 1e3 * ref["seconds"] * P / k
    rows.append({"impl": "reference step", "ms": ref_ms, "cluster_ms": None, "memories_timed": k,
                 "stall": ref["stall"]})
    progress.step(f"{tag} reference")
    for backend, name in LIBRARIES:
        try:
            per = cell.memory_step(backend, 4, 1)["seconds"] / 4
        except ImportError as exc:
            rows.append({"impl": name, "ms": None, "error": str(exc)})
            progress.step(f"{tag} {name}")
            continue
        k = subset_size(per, P, args.budget) if args.quick else P
        res = cell.memory_step(backend, k, 1)
        rows.append({"impl": name, "ms": 1e3 * res["seconds"] * P / k,
                     "cluster_ms": 1e3 * res["cluster_seconds"] * P / k, "memories_timed": k, "stall": res["stall"]})
        progress.step(f"{tag} {name}")
    threads = numba.config.NUMBA_NUM_THREADS
    for t in sorted({1, threads}):
        numba.set_num_threads(t)
        try:
            res = cell.memory_step("numba", P, args.repeats)
        finally:
            numba.set_num_threads(threads)
        rows.append({"impl": f"engine, {t} thread{'s' if t > 1 else ''}", "ms": 1e3 * res["seconds"],
                     "cluster_ms": 1e3 * res["cluster_seconds"], "memories_timed": P, "stall": res["stall"]})
        progress.step(f"{tag} engine x{t}")
    for r in rows:
        r.update(P=P, n=cell.n, d=cell.d, min_cluster_size=cell.mcs, min_samples=cell.ms, new_rows=cell.m)
        r["speedup_vs_reference"] = ref_ms / r["ms"] if r.get("ms") else None
    return rows


def _environment() -> dict:
    """The machine and the versions a result was measured with."""
    import importlib.metadata as md
    import subprocess

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    versions = {}
    for pkg in ("numpy", "numba", "hdbscan", "scikit-learn"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "not installed"
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=here).stdout.strip()
        # results written by an earlier benchmark of the same run are not changes to the code measured
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                  ":(top,exclude)benchmarks/results"]
        if commit and subprocess.run(status, capture_output=True, text=True, cwd=here).stdout.strip():
            commit += " with uncommitted changes"
    except OSError:
        commit = ""
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), **versions,
            "commit": commit or "unknown"}


def _environment_line(env: dict) -> str:
    return ("Machine: " + f"{env['cpu']}, {env['cpus']} CPUs; Python {env['python']}, numpy {env['numpy']}, numba "
            f"{env['numba']}, hdbscan {env['hdbscan']}, scikit-learn {env['scikit-learn']}; meds_core at "
            f"{env['commit']}.")


def _fmt(v, spec=".1f"):
    return "n/a" if v is None else format(v, spec)


def markdown(rows: list[dict], args, threads: int, env: dict | None = None, load: tuple = (),
             minutes: float = 0.0) -> str:
    sizes = sorted({r["n"] for r in rows})
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    lines = ["# One MEDS memory step on CPU: k-NN vote + cluster sizes + re-cluster (ms per step)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs ({threads} numba threads), Python "
             f"{platform.python_version()}. P memories of n rows each after the step, m = min(16, n/2) new rows per "
             "memory. Each cell: ms per step (speed-up over the reference step of the same cell, same run). "
             "A `*k` suffix: timed on k of the P memories and scaled to P; the reference step is always timed so. "
             f"Library loops {'on a subset (--quick)' if args.quick else 'on every memory'}; engine rows: median of "
             f"{args.repeats} steps on every memory, each memory recomputed in full; BLAS on one thread. `!` marks a "
             f"measurement whose CPU-pressure stall share stayed above {MAX_STALL} (another task took CPU)."
             + (f" loadavg {' '.join(load[0])} at start, {' '.join(load[1])} at end; {minutes:.1f} min."
                if load else ""),
             ""] + ([_environment_line(env), ""] if env else [])
    for P in sorted({r["P"] for r in rows}):
        for d in sorted({r["d"] for r in rows}):
            for mcs, ms in SETTINGS:
                key = (P, d, mcs, ms)
                block = [r for r in rows if (r["P"], r["d"], r["min_cluster_size"], r["min_samples"]) == key]
                if not block:
                    continue
                lines += [f"## P = {P}, d = {d}, min_cluster_size = {mcs}, min_samples = {ms}", "",
                          "| implementation | " + " | ".join(f"n = {n}" for n in sizes) + " |",
                          "|---|" + "---|" * len(sizes)]
                for impl in impls:
                    cells = []
                    for n in sizes:
                        r = next((x for x in block if x["impl"] == impl and x["n"] == n), None)
                        if r is None or r.get("ms") is None:
                            cells.append("n/a")
                            continue
                        sub = f" *{r['memories_timed']}" if r.get("memories_timed", P) < P else ""
                        flag = " !" if r.get("stall", 0) > MAX_STALL else ""
                        cells.append(f"{r['ms']:.1f} ({r['speedup_vs_reference']:.1f}x){sub}{flag}")
                    lines.append(f"| {impl} | " + " | ".join(cells) + " |")
                lines.append("")
    return "\n".join(lines + targets(rows, threads))


TARGETS_MS = {64: 20.0, 256: 100.0, 1024: 1000.0}


def targets(rows: list[dict], threads: int) -> list[str]:
    """The issue's targets (P = 512, d = 14): step time, where it goes, and the speed-up over the reference."""
    impl = f"engine, {threads} thread{'s' if threads > 1 else ''}"
    out = ["## Targets (P = 512, d = 14, engine on all threads)", "",
           "| min_cluster_size / min_samples | n | step ms | clustering call ms | vote, sizes, bookkeeping ms "
           "| target ms | speed-up over reference (target >= 20x for n <= 256) | met |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["impl"] != impl or r["P"] != 512 or r["d"] != 14 or r["n"] not in TARGETS_MS:
            continue
        goal = TARGETS_MS[r["n"]]
        ok = r["ms"] < goal and (r["n"] > 256 or r["speedup_vs_reference"] >= 20)
        out.append(f"| {r['min_cluster_size']} / {r['min_samples']} | {r['n']} | {r['ms']:.1f} | {r['cluster_ms']:.1f} "
                   f"| {r['ms'] - r['cluster_ms']:.1f} | {goal:.0f} | {r['speedup_vs_reference']:.1f}x "
                   f"| {'yes' if ok else 'no'} |")
    return out if len(out) > 4 else []


def _report_point(n: int, step: int, steps: int, cap: int) -> bool:
    return (n & (n - 1)) == 0 and n >= 16 or step > steps - 3 and n == cap


def _library_columns(full: ErrorMemory, cfg: MEDSConfig, P: int, m: int, batch: np.ndarray, budget: float) -> dict:
    """ms per step (scaled to P) of the hdbscan library loop (ErrorMemory with backend='hdbscan') and of the reference
    step, on the first k memories of ``full``'s current state and this step's rows, k chosen to take ~budget s."""
    d = batch.shape[1]
    state = full.state_dict()
    keys = list(range(P))
    lengths = state["lengths"]
    order = {k: i for i, k in enumerate(state["keys"])}
    ends = np.cumsum(lengths)

    def rows_of(p):
        i = order[p]
        return state["rows"][ends[i] - lengths[i]:ends[i]], state["labels"][ends[i] - lengths[i]:ends[i]]

    new = batch.reshape(P, m, d)
    out = {}

    def library(k):
        sub = [rows_of(p) for p in keys[:k]]
        lib_cfg = dataclasses.replace(cfg, backend="hdbscan")
        memory = ErrorMemory(lib_cfg)
        memory.load_state_dict({"format_version": state["format_version"], "config": lib_cfg.to_dict(), "dim": d,
                                "step": 1, "keys": keys[:k], "groups": np.zeros(k, np.int8),
                                "lengths": np.array([len(r) for r, _ in sub], np.int64),
                                "rows": np.concatenate([r for r, _ in sub]),
                                "labels": np.concatenate([lab for _, lab in sub])})
        t0 = time.perf_counter()
        memory.update(np.repeat(np.arange(k), m), new[:k].reshape(-1, d), np.zeros(k * m, np.int64))
        return time.perf_counter() - t0

    def reference(k):
        sub = [rows_of(p) for p in keys[:k]]
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference_memories([r for r, _ in sub], [lab for _, lab in sub], new[:k], cfg.min_cluster_size,
                               cfg.min_samples)
        return time.perf_counter() - t0

    for name, fn in (("library_ms", library), ("reference_ms", reference)):
        k = subset_size(fn(4) / 4, P, budget)
        out[name] = 1e3 * fn(k) * P / k
        out[name.replace("_ms", "_memories")] = k
    return out


def stream(args) -> None:
    """Stream mode (see the module docstring): writes clustering_latency_stream.{json,md} next to the grid's."""
    import numba

    P, m, cap = args.prompts[0], args.new_rows, args.cap
    d = args.dims[0]
    steps = cap // m + args.extra_steps
    rows = []
    for mcs, ms in SETTINGS:  # warm-up: JIT cache loads of both paths, outside the timings
        cfg = MEDSConfig(use_last_n_layers=d, min_cluster_size=mcs, min_samples=ms, backend="numba",
                         max_rows_per_memory=2 * m)
        for incremental in (True, False):
            memory = ErrorMemory(cfg)
            memory._incremental = incremental
            for t in range(3):
                warm = make_memories(2 + t, 2, m, d).reshape(-1, d)
                memory.update(np.repeat(np.arange(2), m), warm, np.zeros(len(warm), np.int64))
    loadavg = open("/proc/loadavg").read().split()[:3]
    t_start = time.perf_counter()
    for mcs, ms in SETTINGS:
        feats = make_memories(1, P, steps * m, d)
        cfg = MEDSConfig(use_last_n_layers=d, min_cluster_size=mcs, min_samples=ms, backend="numba",
                         max_rows_per_memory=cap, max_total_rows=P * cap * 2)
        inc, full = ErrorMemory(cfg), ErrorMemory(cfg)
        inc._incremental, full._incremental = True, False
        keys = np.repeat(np.arange(P), m)
        for t in range(steps):
            batch = feats[:, t * m:(t + 1) * m].reshape(-1, d)
            n = min((t + 1) * m, cap)
            extra = {}
            if n in args.library_sizes and (t + 1) * m == n:
                extra = _library_columns(full, cfg, P, m, batch, args.budget)
            zeros = np.zeros(len(keys), np.int64)
            # at a reported step, args.repeats runs from copies of the same state (the first order alternates with
            # the run and the step: the first parallel call after Python work also wakes numba's threads); else one
            timed_runs = args.repeats if _report_point(n, t + 1, steps, cap) else 1
            start = (copy.deepcopy(inc), copy.deepcopy(full)) if timed_runs > 1 else None
            walls, cpus, stalls = {"inc": [], "full": []}, {"inc": [], "full": []}, []
            for r in range(timed_runs):
                if r:  # back to the state before the step
                    inc, full = copy.deepcopy(start[0]), copy.deepcopy(start[1])
                stall0, w0 = _stall_us(), time.perf_counter()
                order = (("inc", inc), ("full", full)) if (t + r) % 2 == 0 else (("full", full), ("inc", inc))
                out = {}
                for name, memory in order:
                    c0, t0 = time.process_time(), time.perf_counter()
                    out[name] = memory.update(keys, batch, zeros)
                    walls[name].append(time.perf_counter() - t0)
                    cpus[name].append(time.process_time() - c0)
                stalls.append((_stall_us() - stall0) / (1e6 * (time.perf_counter() - w0)))
            a, b = out["inc"], out["full"]
            med = {k: statistics.median(v) for k, v in walls.items()}
            cpu = {k: statistics.median(v) for k, v in cpus.items()}
            stall = max(stalls)
            np.testing.assert_array_equal(a.label, b.label)
            np.testing.assert_array_equal(a.cluster_size, b.cluster_size)
            for p in range(0, P, max(1, P // 16)):
                np.testing.assert_array_equal(inc.labels(p, 0), full.labels(p, 0))
            mst_bytes = sum(sum(x.nbytes for x in s.state) for s in inc._slots.values() if s.state is not None)
            kept = sum(s.state is not None for s in inc._slots.values())
            rows.append({"mcs": mcs, "ms": ms, "step": t + 1, "n": n, "incremental_ms": 1e3 * med["inc"],
                         "full_ms": 1e3 * med["full"], "runs": timed_runs,
                         "incremental_runs_ms": [1e3 * x for x in walls["inc"]],
                         "full_runs_ms": [1e3 * x for x in walls["full"]], "incremental_cpu_ms": 1e3 * cpu["inc"],
                         "full_cpu_ms": 1e3 * cpu["full"], "stall": stall, "mst_bytes": mst_bytes, "msts_kept": kept,
                         "row_bytes": sum(s.n * (4 * d + 4) for s in inc._slots.values()), **extra})
            print(f"{mcs}/{ms} n={n:5d} incremental {rows[-1]['incremental_ms']:8.1f} ms  full "
                  f"{rows[-1]['full_ms']:8.1f} ms  states {kept}/{P} ({mst_bytes / 2**20:.1f} MiB) {extra}",
                  file=sys.stderr)
    loadavg_end = open("/proc/loadavg").read().split()[:3]
    env = _environment()
    minutes = (time.perf_counter() - t_start) / 60
    lines = ["# Stream mode: one MEDS step (k-NN vote + cluster sizes + clustering) as memories grow to the cap", "",
             f"P = {P} memories, m = {m} new rows per memory per step, d = {d}, cap (max_rows_per_memory) {cap}, "
             f"{args.extra_steps} steps at the cap (each drops the {m} oldest rows of every memory); numba on "
             f"{numba.get_num_threads()} threads, BLAS on 1; whole ErrorMemory.update per step. Each reported step is "
             f"run {args.repeats} times from copies of the state before it (median reported; which of incremental and "
             f"full runs first alternates between runs), the other steps once. loadavg {' '.join(loadavg)} at start, "
             f"{' '.join(loadavg_end)} at end; {minutes:.1f} min. "
             "Incremental and full engine labels and sizes asserted equal every step. Library loop (backend "
             "'hdbscan') and reference step (per-row NearestNeighbors refit + Counter vote + hdbscan.HDBSCAN per "
             f"memory) are timed on k memories (`*k`) of the same state and scaled to P, at n in "
             f"{args.library_sizes}; the `*k` columns are therefore samples, scaled. stall: CPU-pressure share "
             "during the incremental + full pairs (the largest of the runs; 0 = no waiting). The incremental state is "
             "each memory's MST for min_samples 1 and its rows' min_samples nearest neighbours for min_samples > 1 "
             "(only the core distances are incremental there; Prim's tree is rebuilt every step). "
             "CPU ms: CPU time of the process during the update (all threads; less sensitive to a co-tenant than "
             "wall time, but it counts numba's threads spinning while they wait for work).",
             "", _environment_line(env),
             "", "| mcs/ms | n | incremental ms | full engine ms | full / incremental | incremental CPU ms "
             "| full CPU ms | full / incremental CPU | hdbscan library loop ms "
             "| reference step ms | reference / incremental | states kept | state MiB (rows MiB) | stall |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r["n"]
        if not _report_point(n, r["step"], steps, cap):
            continue
        tag = f" (at cap, step {r['step']})" if n == cap and r["step"] * m > cap else ""
        lib = f"{r['library_ms']:.0f} *{r['library_memories']}" if "library_ms" in r else "n/a"
        ref = f"{r['reference_ms']:.0f} *{r['reference_memories']}" if "reference_ms" in r else "n/a"
        ratio = f"{r['reference_ms'] / r['incremental_ms']:.0f}x" if "reference_ms" in r else "n/a"
        lines.append(f"| {r['mcs']}/{r['ms']} | {n}{tag} | {r['incremental_ms']:.1f} | {r['full_ms']:.1f} "
                     f"| {r['full_ms'] / r['incremental_ms']:.2f} | {r['incremental_cpu_ms']:.1f} "
                     f"| {r['full_cpu_ms']:.1f} | {r['full_cpu_ms'] / max(r['incremental_cpu_ms'], 1e-9):.2f} "
                     f"| {lib} | {ref} | {ratio} | {r['msts_kept']} "
                     f"| {r['mst_bytes'] / 2**20:.2f} ({r['row_bytes'] / 2**20:.1f}) | {r['stall']:.2f} |")
    table = "\n".join(lines)
    print(table)
    out = os.path.join(os.path.dirname(args.out), "clustering_latency_stream")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".md", "w") as f:
        f.write(table + "\n")
    with open(out + ".json", "w") as f:
        json.dump({"args": vars(args), "loadavg": [loadavg, loadavg_end], "environment": env, "cpus": os.cpu_count(),
                   "numba_threads": numba.get_num_threads(), "minutes": minutes, "rows": rows}, f, indent=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stream", action="store_true", help="stream mode: n grows to --cap, m new rows per step")
    ap.add_argument("--cap", type=int, default=1024, help="stream mode: max_rows_per_memory")
    ap.add_argument("--new-rows", type=int, default=16, help="stream mode: new rows per memory per step (m)")
    ap.add_argument("--extra-steps", type=int, default=3, help="stream mode: steps after reaching the cap")
    ap.add_argument("--library-sizes", type=int, nargs="*", default=[64, 256, 1024],
                    help="stream mode: the n at which the library loop and reference step are timed")
    ap.add_argument("--prompts", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024, 2048])
    ap.add_argument("--dims", type=int, nargs="+", default=[14, 28])
    ap.add_argument("--settings", default="2/1,5/5", help="min_cluster_size/min_samples pairs, comma-separated")
    ap.add_argument("--repeats", type=int, default=3, help="engine steps per measurement (median); stream mode: runs "
                    "of each reported step from copies of the state before it")
    ap.add_argument("--quick", action="store_true", help="library loops on a subset of memories, scaled")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds per subset measurement (reference, --quick)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "clustering_latency_cpu"))
    args = ap.parse_args()
    global SETTINGS
    SETTINGS = [tuple(int(v) for v in s.split("/")) for s in args.settings.split(",")]
    if args.stream:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return stream(args)

    import numba

    threads = numba.config.NUMBA_NUM_THREADS
    grid = [(P, n, d, mcs, ms) for P in args.prompts for d in args.dims for mcs, ms in SETTINGS for n in args.sizes]
    progress = Progress(len(grid) * (len(LIBRARIES) + 1 + len({1, threads})))
    from threadpoolctl import threadpool_limits

    rows = []
    load_start, t_start = open("/proc/loadavg").read().split()[:3], time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        for P, n, d, mcs, ms in grid:
            rows += measure_cell(Cell(P, n, d, mcs, ms), args, numba, progress)
            with open(args.out + ".partial.json", "w") as f:
                json.dump(rows, f)
    progress.close()
    os.remove(args.out + ".partial.json")
    load, minutes, env = (load_start, open("/proc/loadavg").read().split()[:3]), (time.perf_counter() - t_start) / 60, \
        _environment()
    table = markdown(rows, args, threads, env, load, minutes)
    print(table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(table + "\n")
    with open(args.out + ".json", "w") as f:
        json.dump({"args": vars(args), "machine": platform.machine(), "cpus": os.cpu_count(), "numba_threads": threads,
                   "python": platform.python_version(), "environment": env, "loadavg_start": load[0],
                   "loadavg_end": load[1], "minutes": minutes, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
