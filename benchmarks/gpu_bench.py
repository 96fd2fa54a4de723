"""The GPU benchmarks of benchmarks/gpu_suite.sh, one part at a time, each writing ``<part>_gpu.{json,md}``.

* ``clustering``: one batched clustering step (HDBSCAN*, min_cluster_size 2, min_samples 1, euclidean) of P = 512
  problems of n in {64, 256, 1024} rows, d = 14, 1-6 modes each: the ``cuda`` engine (features already on the GPU;
  device stages and the host tree stage also timed apart), the CPU engine (``numba``, all threads) and cuML (one call
  per problem, on a subset of the problems, scaled to P and labelled) on the same data. Medians of ``--reps`` steps
  after one warm-up (which compiles). Checks that the ``cuda`` labels equal the CPU engine's on every problem.
* ``capture``: feature_capture.py's GPU part: the fused gather kernel's achieved bytes/s as a fraction of the HBM
  bandwidth measured by a large device copy, and the capture's cost inside a bf16 forward of random
  Qwen2.5-1.5B- and 7B-shaped models at sequence length 4096.
* ``trl``: a few TRL GRPO steps on the GPU (trl_step_overhead.py's tiny random Qwen2 on its toy task), plain vs MEDS,
  seconds per step and MEDS's own seconds per generation batch.

``--dry-run`` runs what needs no GPU (``clustering`` at a small size: the CPU engine, and the ``cuda`` engine where
numba's CUDA simulator is on) and writes its files marked ``"dry_run": true``; the other parts print what they would
run.

    python benchmarks/gpu_bench.py clustering capture trl --out-dir benchmarks/results
    python benchmarks/gpu_bench.py clustering --dry-run --out-dir /tmp/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[gpu_bench {time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def _machine() -> dict:
    info = {"loadavg": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None,
            "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = info["gpu"] = None
    return info


def _check_api(module: str, names: list[str]) -> None:
    """A dry run's check that the benchmark code a GPU part calls still exists (so the suite cannot rot)."""
    import importlib

    sys.path.insert(0, HERE)
    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        raise SystemExit(f"{module} lacks {missing}: update benchmarks/gpu_bench.py")
    say(f"{module}: {', '.join(names)} present")


def _write(out_dir: str, name: str, data: dict, md: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"{name}_gpu")
    with open(base + ".json", "w") as f:
        json.dump(data, f, indent=2)
    with open(base + ".md", "w") as f:
        f.write(md)
    say(f"wrote {base}.json and {base}.md")


# ----------------------------------------------------------------------------------------------------- clustering
def _problems(P: int, n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    modes = rng.integers(1, 7, size=P)
    rows = []
    for p in range(P):
        centres = rng.normal(scale=4.0, size=(modes[p], d))
        rows.append(centres[rng.integers(0, modes[p], size=n)] + rng.normal(size=(n, d)))
    return np.concatenate(rows)


def _median_ms(fn, reps: int, sync=lambda: None) -> float:
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def clustering(args) -> None:
    import numba

    from meds_core.clustering import cuda_status, hdbscan_batch

    status = cuda_status()
    gpu = status["usable"] and (args.dry_run or not status["simulator"])  # a dry run uses the simulator if it is on
    P, sizes, d = (4, [24], 14) if args.dry_run else (args.prompts, args.sizes, 14)
    say(f"clustering: P={P} n={sizes} d={d}; cuda engine: {'yes' if gpu else 'no'} ({status['reason']})")
    cuml = None
    if gpu:
        try:
            import cuml.cluster as cuml  # noqa: F811
        except ImportError:
            cuml = None
    rows = []
    for n in sizes:
        X = _problems(P, n, d, seed=n)
        offsets = np.arange(P + 1, dtype=np.int64) * n
        cpu_labels = hdbscan_batch(X, 2, 1, offsets=offsets)  # warm-up: compiles the CPU engine once
        row = {"P": P, "n": n, "d": d, "cpu_threads": numba.get_num_threads(),
               "cpu_ms": _median_ms(lambda X=X, o=offsets: hdbscan_batch(X, 2, 1, offsets=o), args.reps)}
        if gpu:
            from numba import cuda

            from meds_core.clustering._cuda_engine import _device_mst, hdbscan_batch_cuda

            Xd = cuda.to_device(X)  # the features come from the GPU
            labels = hdbscan_batch_cuda(Xd, 2, 1, offsets=offsets)  # warm-up: compiles the kernels
            row["identical_problems"] = int(sum(np.array_equal(a, b) for a, b in zip(labels, cpu_labels)))
            row["cuda_ms"] = _median_ms(lambda Xd=Xd, o=offsets: hdbscan_batch_cuda(Xd, 2, 1, offsets=o), args.reps,
                                        cuda.synchronize)
            XT = cuda.to_device(np.ascontiguousarray(X.T))  # the device stages' layout: points as columns
            row["cuda_device_ms"] = _median_ms(lambda XT=XT, o=offsets: _device_mst(XT, o, 1, 2), args.reps,
                                               cuda.synchronize)
            row["cuda_tree_ms"] = row["cuda_ms"] - row["cuda_device_ms"]
            row["speedup_vs_cpu"] = row["cpu_ms"] / row["cuda_ms"]
        if cuml is not None:
            sub = min(P, args.cuml_subset)
            row["cuml_problems_timed"] = sub

            def run_cuml(X=X, n=n, sub=sub):
                for p in range(sub):
                    cuml.HDBSCAN(min_cluster_size=2, min_samples=1, output_type="numpy").fit_predict(
                        X[p * n:(p + 1) * n].astype(np.float32))

            run_cuml()
            row["cuml_ms"] = _median_ms(run_cuml, 1) * P / sub
            if "cuda_ms" in row:
                row["speedup_vs_cuml"] = row["cuml_ms"] / row["cuda_ms"]
        say(f"clustering n={n}: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in row.items()))
        rows.append(row)
    data = {"part": "clustering", "dry_run": args.dry_run, "settings": "min_cluster_size 2, min_samples 1",
            "reps": args.reps, "cuda_status": status, "rows": rows, **_machine()}
    lines = [f"# Batched clustering step on the GPU ({data['gpu'] or 'no GPU'})", "",
             f"{'DRY RUN (CPU side only). ' if args.dry_run else ''}HDBSCAN* min_cluster_size 2, min_samples 1; "
             f"median of {args.reps} steps after a warm-up; loadavg {data['loadavg']}. cuda: features already on the "
             "GPU, device stages (core distances + MST) and host tree stage; cuML: one call per problem on a subset, "
             "scaled to P.", "",
             "| P | n | d | CPU engine ms | cuda ms | (device / tree) | cuML ms | speed-up vs CPU | vs cuML | "
             "identical labels |", "|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, fmt="{:.2f}"):
        return fmt.format(v) if isinstance(v, (int, float)) else "n/a"

    for r in rows:
        lines.append(f"| {r['P']} | {r['n']} | {r['d']} | {f(r['cpu_ms'])} | {f(r.get('cuda_ms'))} | "
                     f"{f(r.get('cuda_device_ms'))} / {f(r.get('cuda_tree_ms'))} | {f(r.get('cuml_ms'))} | "
                     f"{f(r.get('speedup_vs_cpu'), '{:.1f}x')} | {f(r.get('speedup_vs_cuml'), '{:.1f}x')} | "
                     + (f"{r['identical_problems']}/{r['P']} |" if "identical_problems" in r else "n/a |"))
    _write(args.out_dir, "clustering", data, "\n".join(lines) + "\n")


# -------------------------------------------------------------------------------------------------------- capture
def capture(args) -> None:
    if args.dry_run:
        say("capture: would time the fused gather kernel against a device copy's bandwidth and the capture inside "
            "bf16 forwards of Qwen2.5-1.5B/7B-shaped random models at seq 4096 (needs CUDA)")
        _check_api("feature_capture", ["memory_bandwidth", "kernel_rows", "forward_rows", "report", "GPU_MODELS"])
        return
    import torch

    sys.path.insert(0, HERE)
    import feature_capture as fc

    from meds_core.step import _native_ops

    if not (torch.cuda.is_available() and _native_ops.available("cuda")):
        raise SystemExit("capture: needs a CUDA GPU and meds_core._native_cuda (build with MEDS_FORCE_CUDA=1)")
    bandwidth = fc.memory_bandwidth("cuda")
    say(f"capture: device copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    kernels = fc.kernel_rows("cuda", [64, 1024, 16384], [1536, 3584], 14, args.reps, bandwidth)
    say("capture: kernel rows done")
    runs = []
    for name, shape in fc.GPU_MODELS.items():
        rows, summary = fc.forward_rows("cuda", shape, torch.bfloat16, 4, 4096, 14, max(2, args.reps - 1))
        runs.append({"model": name, "shape": shape, "dtype": "bfloat16", "batch": 4, "seq": 4096, "n_last": 14,
                     "rows": rows, "summary": summary})
        say(f"capture: {name}: {summary}")
        torch.cuda.empty_cache()
    data = {"device": "cuda", "bandwidth_bytes_per_s": bandwidth, "forward": runs, "kernel": kernels,
            "threads": torch.get_num_threads(), "reps": args.reps,
            "note": "One lent GPU machine, run once by benchmarks/gpu_suite.sh.", **_machine()}
    _write(args.out_dir, "feature_capture", data, fc.report(data))


# ------------------------------------------------------------------------------------------------------------ trl
def trl(args) -> None:
    if args.dry_run:
        say(f"trl: would run {args.trl_steps} TRL GRPO steps (+2 warm-up) plain and with MEDS on the GPU, tiny random "
            "Qwen2 on the toy task, extra-forward and reuse paths")
        _check_api("trl_step_overhead", ["build", "run", "WARMUP"])
        import inspect

        import trl_step_overhead

        if "device" not in inspect.signature(trl_step_overhead.run).parameters:
            raise SystemExit("trl_step_overhead.run() takes no device: update benchmarks/gpu_bench.py")
        return
    import logging
    import warnings

    import torch

    sys.path.insert(0, HERE)
    import trl_step_overhead as tso

    if not torch.cuda.is_available():
        raise SystemExit("trl: needs a CUDA GPU")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    task, tok, state = tso.build("tiny", seed=0)
    results = []
    for path in ("extra-forward", "reuse"):
        row = {"path": path}
        for meds in (False, True):
            r = tso.run("tiny", path, meds, args.trl_steps + tso.WARMUP, task, tok, state, seed=0, coef=0.0,
                        device="cuda")
            row["meds_step_s" if meds else "plain_step_s"] = statistics.median(r["step_s"])
            if meds:
                row["meds_own_s"] = statistics.median(r["meds_s"]) if r["meds_s"] else None
        row["overhead_pct"] = 100 * (row["meds_step_s"] / row["plain_step_s"] - 1)
        say(f"trl {path}: {row}")
        results.append(row)
    data = {"part": "trl", "model": "tiny random Qwen2 (hidden 64, 4 layers)", "steps": args.trl_steps,
            "rows": results, **_machine()}
    lines = [f"# TRL GRPO steps on the GPU ({data['gpu']}), plain vs MEDS", "",
             f"{args.trl_steps} steps after {tso.WARMUP} warm-up steps, medians; loadavg {data['loadavg']}.", "",
             "| path | plain s/step | MEDS s/step | overhead | MEDS own s / generation batch |",
             "|---|---|---|---|---|"]
    for r in results:
        own = f"{r['meds_own_s']:.4f}" if r["meds_own_s"] is not None else "n/a"
        lines.append(f"| {r['path']} | {r['plain_step_s']:.4f} | {r['meds_step_s']:.4f} | {r['overhead_pct']:+.1f}% "
                     f"| {own} |")
    _write(args.out_dir, "trl_step", data, "\n".join(lines) + "\n")


PARTS = {"clustering": clustering, "capture": capture, "trl": trl}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="+", choices=list(PARTS))
    ap.add_argument("--dry-run", action="store_true", help="CPU side only; GPU parts print their plan")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--cuml-subset", type=int, default=32, help="problems cuML is timed on (scaled to P)")
    ap.add_argument("--trl-steps", type=int, default=4)
    args = ap.parse_args()
    for part in args.parts:
        PARTS[part](args)


if __name__ == "__main__":
    main()
