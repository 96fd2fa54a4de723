"""RAM, file size and save/load time of a full ErrorMemory: P prompts x 2 correctness groups at the default settings.

The memory is filled to the default ``max_total_rows`` budget (8,000,000 rows of F=14 float32 features, so
40 rows per memory for 100k prompts) from a synthetic state (clustering 200k memories is not what is measured
here), then, each in a fresh interpreter:

- ``save``:  load_state_dict + save; seconds of ``save``; RSS after.
- ``load``:  ``ErrorMemory.load``; seconds; RSS after (VmRSS) and its peak (VmHWM).
- ``steps``: after the load, S update steps of 512 new prompts x 16 rollouts; rows stored, prompts evicted, RSS.

RSS is reported both absolute and above the interpreter's RSS right before (imports done). Anchor, side by side:
the same state through another meds_core checkout (``--anchor DIR``, e.g. the code before the compact storage),
which has no global budget (its ``steps`` phase grows the memory instead of evicting).

    python benchmarks/memory_footprint.py                       # 100k prompts, 3 repeats
    python benchmarks/memory_footprint.py --anchor /tmp/anchor  # + the anchor checkout side by side
    python benchmarks/memory_footprint.py --prompts 2000 --repeats 1   # quick
Writes benchmarks/results/memory_footprint_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _status(field: str) -> float:
    """/proc/self/status field (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _state(prompts: int, dim: int, config) -> dict:
    """A state of ``prompts`` x 2 memories sharing the default row budget equally (clusters of 4 rows)."""
    import numpy as np

    rng = np.random.default_rng(0)
    budget = getattr(config, "max_total_rows", 8_000_000)
    per = min(budget // (2 * prompts), config.max_rows_per_memory)
    n = 2 * prompts * per
    labels = np.tile(np.arange(per, dtype=np.int64) // 4, 2 * prompts)
    return {"format_version": 1, "config": config.to_dict(), "dim": dim, "step": 100,
            "keys": np.repeat(np.arange(prompts), 2).tolist(),
            "groups": np.tile(np.array([0, 1], np.int8), prompts),
            "lengths": np.full(2 * prompts, per, np.int64),
            "rows": rng.standard_normal((n, dim), dtype=np.float32), "labels": labels}


def child(phase: str, path: str, prompts: int, steps: int) -> dict:
    import numpy as np

    from meds_core import ErrorMemory, MEDSConfig

    config = MEDSConfig()
    dim = config.use_last_n_layers
    out: dict = {"phase": phase}
    if phase == "save":
        base = _status("VmRSS")
        state = _state(prompts, dim, config)
        memory = ErrorMemory(config)
        memory.load_state_dict(state)
        del state
        out["rows"] = memory.num_rows
        out["rss_mib"] = _status("VmRSS")
        out["rss_above_start_mib"] = out["rss_mib"] - base
        t0 = time.perf_counter()
        memory.save(path)
        out["save_s"] = time.perf_counter() - t0
        out["file_mib"] = os.path.getsize(path) / 2**20
        return out
    base = _status("VmRSS")
    t0 = time.perf_counter()
    memory = ErrorMemory.load(path)
    out["load_s"] = time.perf_counter() - t0
    out["rows"] = memory.num_rows
    out["rss_mib"], out["peak_rss_mib"] = _status("VmRSS"), _status("VmHWM")
    out["rss_above_start_mib"] = out["rss_mib"] - base
    if phase == "steps":
        rng = np.random.default_rng(1)
        evicted = 0
        for s in range(steps):
            keys = np.repeat(np.arange(512) + prompts + 512 * s, 16)
            feats = rng.standard_normal((len(keys), dim), dtype=np.float32)
            stats = memory.update(keys, feats, rng.integers(0, 2, len(keys))).stats
            evicted += stats.get("evicted_prompts", 0)
        out.update(steps=steps, rows_after_steps=memory.num_rows, evicted_prompts=evicted,
                   rss_after_steps_mib=_status("VmRSS"), peak_after_steps_mib=_status("VmHWM"))
    return out


def run(code_dir: str, phase: str, path: str, prompts: int, steps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=code_dir)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", phase, "--path", path, "--prompts", str(prompts),
           "--steps", str(steps)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=code_dir)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--anchor", default=None, help="another meds_core checkout to measure side by side")
    ap.add_argument("--child", default=None)
    ap.add_argument("--path", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "memory_footprint_cpu"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.path, args.prompts, args.steps)))
        return
    codes = [("this checkout", ROOT)] + ([("anchor", os.path.abspath(args.anchor))] if args.anchor else [])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, code in codes:
            path = os.path.join(tmp, f"{name.replace(' ', '_')}.bin")
            runs = []
            for r in range(args.repeats):
                load_avg = open("/proc/loadavg").read().split()[:3]
                save = run(code, "save", path, args.prompts, args.steps)
                phase = "steps" if r == 0 else "load"
                load = run(code, phase, path, args.prompts, args.steps)
                runs.append({"loadavg": load_avg, **save, **{f"load_{k}": v for k, v in load.items()}})
                print(name, json.dumps(runs[-1]), flush=True)
            results[name] = runs
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "prompts": args.prompts, "repeats": args.repeats}
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    write_md(args.out + ".md", meta, results)


def write_md(path: str, meta: dict, results: dict) -> None:
    lines = [f"# ErrorMemory footprint: {meta['prompts']:,} prompts x 2 groups, default settings (F=14)", "",
             f"Machine: {meta['machine']}. Each phase in a fresh interpreter; {meta['repeats']} repeats. "
             "RSS in MiB; 'above start' subtracts the interpreter's RSS before the memory existed.", "",
             "| code | run | loadavg (1/5/15 min) | rows | file MiB | save s | load s | RSS after load | above start "
             "| peak RSS during load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        for i, r in enumerate(runs):
            lines.append(f"| {name} | {i + 1} | {' '.join(r['loadavg'])} | {r['rows']:,} | {r['file_mib']:.0f} | "
                         f"{r['save_s']:.2f} | {r['load_load_s']:.2f} | {r['load_rss_mib']:.0f} | "
                         f"{r['load_rss_above_start_mib']:.0f} | {r['load_peak_rss_mib']:.0f} |")
    lines += ["", "After the first load of each code: 3 update steps of 512 new prompts x 16 rollouts.", "",
              "| code | rows after steps | prompts evicted | RSS after steps MiB | peak RSS MiB |",
              "|---|---|---|---|---|"]
    for name, runs in results.items():
        r = runs[0]
        lines.append(f"| {name} | {r['load_rows_after_steps']:,} | {r['load_evicted_prompts']} | "
                     f"{r['load_rss_after_steps_mib']:.0f} | {r['load_peak_after_steps_mib']:.0f} |")
    if len(results) == 2:
        (a, ra), (b, rb) = results.items()

        def med(rs, k):
            return sorted(x[k] for x in rs)[len(rs) // 2]

        rss = "load_rss_above_start_mib"
        lines += ["", f"Ratios, {b} / {a} (medians): file {med(rb, 'file_mib') / med(ra, 'file_mib'):.2f}x, "
                  f"RSS above start after load {med(rb, rss) / med(ra, rss):.2f}x, "
                  f"load time {med(rb, 'load_load_s') / med(ra, 'load_load_s'):.2f}x, "
                  f"save time {med(rb, 'save_s') / med(ra, 'save_s'):.2f}x."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
