"""Cost of MEDS feature capture inside a real forward, and of the fused gather kernel alone.

Part 1, capture inside a forward: a random-init Qwen2 (CPU: hidden 1024, 12 layers, seq 1024, batch 4, float32;
GPU: the Qwen2.5-1.5B and 7B configs in bf16, seq 4096), the forward an RL log-prob pass runs (full logits). Side by
side: the plain forward; the forward with a ``FeatureCapture`` armed (one row per layer per sample, the fused
kernel); the reference method (``output_hidden_states=True``, then a full-vocabulary ``lm_head`` per layer on the
sample's row, then the target logit). Wall time (best of ``--reps``) and peak memory above the pre-forward level
(CPU: resident set size sampled every 0.5 ms, since torch's CPU allocations bypass tracemalloc; GPU:
``torch.cuda.max_memory_allocated``). The capture's own work (the hooks) is also timed directly, because on a shared
CPU the difference of two forward timings is mostly noise.

Part 2, kernel alone: the fused kernel vs FeatureCapture's torch path (gather ``W_U[t]``, float32 copies of the rows,
einsum; with ``final_norm="all"`` also HF's RMSNorm in torch) for B in {64, 1024, 16384}, L = 14,
d in {1536, 3584}, bf16 rows and head. Achieved bytes/s (hidden rows + gathered W rows + output) against the memory
bandwidth measured here (a large copy: numpy on CPU, torch on GPU). B = 64 fits in the caches, so it can exceed the
DRAM figure.

    python benchmarks/feature_capture.py            # CPU part (and the GPU part where CUDA is available)
    python benchmarks/feature_capture.py --quick    # small smoke run, results not written
    python benchmarks/feature_capture.py --render benchmarks/results/feature_capture_cpu.json  # redraw
Writes benchmarks/results/feature_capture_{cpu,cuda}.{json,md}.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import threading
import time

import numpy as np
import torch
import transformers

from meds_core import FeatureCapture, MEDSConfig
from meds_core.step import _native_ops
from meds_core.step.capture import _dot_rows

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = 151936
CPU_MODEL = dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=2,
                 intermediate_size=2816)
GPU_MODELS = {  # Qwen2.5-1.5B / 7B shapes
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960),
    "qwen2.5-7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       intermediate_size=18944),
}


# ----------------------------------------------------------------------------------------------------------------------
# measurement helpers
# ----------------------------------------------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _trim() -> None:
    """Return freed heap memory to the OS so that RSS starts each measurement from the live size."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry: RSS sampled by a thread on CPU, the allocator's peak on GPU."""

    def __init__(self, device: str):
        self.device = device
        self.extra = 0

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        _trim()
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.extra = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.extra = max(self.peak, _rss()) - self.base


def memory_bandwidth(device: str) -> float:
    """Bytes/s of a large copy (read + write), best of 5."""
    if device == "cuda":
        a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
        b = torch.empty_like(a)
        best = float("inf")
        for _ in range(5):
            torch.cuda.synchronize()
            t = time.perf_counter()
            b.copy_(a)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return 2 * a.numel() / best
    a = np.ones(512 << 20, dtype=np.uint8)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best


# ----------------------------------------------------------------------------------------------------------------------
# part 1: capture inside a forward
# ----------------------------------------------------------------------------------------------------------------------

class TimedCapture(FeatureCapture):
    """FeatureCapture whose hooks add their wall time to ``self.hook_seconds``."""

    hook_seconds = 0.0

    def _timed(self, fn, *args):
        _sync(self._device().type)
        t = time.perf_counter()
        out = fn(*args)
        _sync(self._device().type)
        self.hook_seconds += time.perf_counter() - t
        return out

    def _layer_hook(self, *args):
        return self._timed(super()._layer_hook, *args)

    def _norm_pre_hook(self, *args):
        return self._timed(super()._norm_pre_hook, *args)

    def _norm_hook(self, *args):
        return self._timed(super()._norm_hook, *args)

    def _head_pre_hook(self, *args):
        return self._timed(super()._head_pre_hook, *args)

    def collect(self):
        return self._timed(super().collect)


def make_model(shape: dict, dtype: torch.dtype, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=VOCAB, max_position_embeddings=32768, **shape)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = transformers.Qwen2ForCausalLM(config)
    return model.to(dtype).eval()


def reference_features(model, input_ids, rows, targets, n_last):
    """The reference method: all hidden states, then a full-vocabulary projection per layer, pick the target."""
    out = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states[1:]
    idx = torch.arange(rows.shape[0], device=rows.device)
    vals = []
    for h in hidden[len(hidden) - n_last:]:
        logits = model.lm_head(h.reshape(-1, h.shape[-1])[rows]).float()  # [B, V]
        vals.append(logits[idx, targets])
    return out.logits, torch.stack(vals, 1)


def forward_rows(device, shape, dtype, batch, seq, n_last, reps):
    """Times and peak memory of plain / capture / reference forwards of one model."""
    model = make_model(shape, dtype, device)
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, VOCAB, (batch, seq), generator=g).to(device)
    rows = (torch.arange(batch) * seq + torch.randint(seq // 2, seq - 1, (batch,), generator=g)).to(device)
    targets = torch.randint(0, VOCAB, (batch,), generator=g).to(device)
    config = MEDSConfig(use_last_n_layers=n_last, final_norm="last")
    cap = FeatureCapture(model, config)  # the timed runs use the plain class: no syncs inside the forward

    def plain():
        return model(input_ids=input_ids, use_cache=False).logits

    def capture():
        cap.arm(rows, targets)
        logits = model(input_ids=input_ids, use_cache=False).logits
        return logits, cap.collect()

    def reference():
        return reference_features(model, input_ids, rows, targets, n_last)

    variants = {"plain forward": plain, "forward + FeatureCapture": capture, "reference method": reference}
    times = {k: [] for k in variants}
    with torch.no_grad():
        check_cap = capture()[1]
        check_ref = reference()[1]
        max_diff = float((check_cap - check_ref).abs().max())  # the two methods agree (bf16 head: ~1e-2)
        del check_cap, check_ref
        for _ in range(reps):
            for name, fn in variants.items():
                _sync(device)
                t = time.perf_counter()
                out = fn()
                _sync(device)
                times[name].append(time.perf_counter() - t)
                del out
        peak = {}
        for name, fn in variants.items():
            _trim()
            with PeakMemory(device) as pm:
                out = fn()
                _sync(device)
            del out
            peak[name] = pm.extra
        cap.remove()
        hook = []  # the capture's own work, timed hook by hook (with device syncs) in separate forwards
        with TimedCapture(model, config) as timed:
            for _ in range(reps):
                timed.hook_seconds = 0.0
                timed.arm(rows, targets)
                model(input_ids=input_ids, use_cache=False)
                timed.collect()
                hook.append(timed.hook_seconds)
    base_t, base_m = min(times["plain forward"]), peak["plain forward"]
    result = []
    for name in variants:
        t, m = min(times[name]), peak[name]
        result.append({"method": name, "seconds": t, "seconds_all": times[name], "peak_extra_bytes": m,
                       "time_vs_plain_pct": 100 * (t - base_t) / base_t,
                       "memory_vs_plain_pct": 100 * (m - base_m) / base_m})
    hook_s = min(hook)
    cap_extra = max(peak["forward + FeatureCapture"] - base_m, 0)
    ref_extra = peak["reference method"] - base_m
    summary = {"hook_seconds": hook_s, "hook_pct_of_plain": 100 * hook_s / base_t,
               "capture_extra_bytes": cap_extra, "reference_extra_bytes": ref_extra,
               "capture_buffer_bytes": n_last * batch * shape["hidden_size"] * torch.finfo(dtype).bits // 8,
               "reference_over_capture_buffer": ref_extra / max(1, n_last * batch * shape["hidden_size"]
                                                                * torch.finfo(dtype).bits // 8),
               "capture_vs_reference_max_abs_diff": max_diff}
    return result, summary


# ----------------------------------------------------------------------------------------------------------------------
# part 2: kernel alone
# ----------------------------------------------------------------------------------------------------------------------

def _kernel_pair(hidden, weight, targets, norm, final_norm):
    """(fused kernel, torch path) computing the same [B, L] values; "all": RMSNorm on layers 1..L-1, the last
    layer as captured after the model's own final norm."""
    n_layers = hidden.shape[0]
    norm_layers = (0, n_layers - 1) if final_norm == "all" else (0, 0)

    def fused():
        return _native_ops.gather_dot(hidden, weight, targets, norm_weight=norm.weight, eps=norm.variance_epsilon,
                                      norm_layers=norm_layers, hf_rounding=True)

    def torch_path():
        w = weight.index_select(0, targets)
        if final_norm == "all":
            return _dot_rows(list(norm(hidden[:-1]).unbind(0)) + [hidden[-1]], w)
        return _dot_rows(list(hidden), w)

    return fused, torch_path


def kernel_rows(device, batches, dims, n_layers, reps, bandwidth):
    """Fused kernel vs torch path, final_norm "last" (no norm on the captured rows) and "all" (RMSNorm on 13)."""
    dtype = torch.bfloat16
    rows = []
    for d in dims:
        weight = (torch.randn(VOCAB, d, device=device) * 0.02).to(dtype)
        norm = transformers.models.qwen2.modeling_qwen2.Qwen2RMSNorm(d).to(device=device, dtype=dtype)
        for batch in batches:
            hidden = torch.randn(n_layers, batch, d, device=device).to(dtype)
            targets = torch.randint(0, VOCAB, (batch,), device=device)
            nbytes = hidden.numel() * 2 + batch * d * 2 + batch * n_layers * 4 + batch * 8
            for final_norm in ("last", "all"):
                fused, torch_path = _kernel_pair(hidden, weight, targets, norm, final_norm)
                res = {}
                with torch.no_grad():
                    for name, fn in (("fused kernel", fused), ("torch path", torch_path)):
                        fn()
                        ts = []
                        for _ in range(reps if batch < 16384 else max(1, reps // 2)):
                            _sync(device)
                            t = time.perf_counter()
                            fn()
                            _sync(device)
                            ts.append(time.perf_counter() - t)
                        res[name] = min(ts)
                    diff = float((fused() - torch_path()).abs().max())
                rows.append({"B": batch, "L": n_layers, "d": d, "final_norm": final_norm, "bytes": nbytes,
                             "kernel_seconds": res["fused kernel"], "torch_seconds": res["torch path"],
                             "speedup": res["torch path"] / res["fused kernel"],
                             "kernel_GBps": nbytes / res["fused kernel"] / 1e9,
                             "kernel_fraction_of_bandwidth": nbytes / res["fused kernel"] / bandwidth,
                             "torch_GBps": nbytes / res["torch path"] / 1e9, "max_abs_diff": diff})
            del hidden, targets
            gc.collect()
        del weight
        gc.collect()
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------------

def _mb(n):
    return f"{n / 2**20:,.1f}"


def report(data: dict) -> str:
    """Markdown tables from the JSON results (also used by ``--render`` to redraw a saved run)."""
    device, runs, kernels = data["device"], data["forward"], data["kernel"]
    lines = [f"# MEDS feature capture cost ({device.upper()})", ""]
    lines.append(f"Machine: {data['machine']}, {data['cpus']} CPUs, torch {data['torch']} ({data['threads']} threads), "
                 f"{data.get('gpu') or 'no GPU'}; measured memory bandwidth {data['bandwidth_bytes_per_s'] / 1e9:.1f} "
                 f"GB/s (large copy, read + write). {data['note']}")
    lines.append("")
    for run in runs:
        lines.append(f"## Capture inside a forward: {run['model']} ({run['dtype']}, batch {run['batch']}, "
                     f"seq {run['seq']}, {run['n_last']} layers captured, full logits)")
        lines.append("")
        lines.append("| method | time s, best | median | worst | best vs plain | peak memory above start MiB | "
                     "vs plain |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in run["rows"]:
            ts = r["seconds_all"]
            lines.append(f"| {r['method']} | {min(ts):.3f} | {statistics.median(ts):.3f} | {max(ts):.3f} | "
                         f"{r['time_vs_plain_pct']:+.2f}% | {_mb(r['peak_extra_bytes'])} | "
                         f"{r['memory_vs_plain_pct']:+.2f}% |")
        s = run["summary"]
        plain = run["rows"][0]
        time_ok = s["hook_pct_of_plain"] < 2.0
        mem_ok = 100 * s["capture_extra_bytes"] / plain["peak_extra_bytes"] < 1.0
        lines.append("")
        lines.append(f"- Capture's own work (its hooks and `collect()`, timed inside the forward): "
                     f"{s['hook_seconds'] * 1e3:.2f} ms = {s['hook_pct_of_plain']:.3f}% of the plain forward "
                     f"(target < 2%: {'met' if time_ok else 'NOT met'}). The hooks are the only code the capture adds "
                     "to a forward, so the spread of the forward timings above is machine noise, not capture cost.")
        lines.append(f"- Memory: capture buffer {s['capture_buffer_bytes'] / 1024:.0f} KiB; measured extra peak "
                     f"{_mb(s['capture_extra_bytes'])} MiB = "
                     f"{100 * s['capture_extra_bytes'] / plain['peak_extra_bytes']:.2f}% of the plain forward's "
                     f"(target < 1%: {'met' if mem_ok else 'NOT met'}). Reference method's extra peak: "
                     f"{_mb(s['reference_extra_bytes'])} MiB = {s['reference_over_capture_buffer']:,.0f}x the capture "
                     f"buffer"
                     + (f", {s['reference_extra_bytes'] / s['capture_extra_bytes']:.1f}x the capture's measured extra"
                        if s["capture_extra_bytes"] > 0 else "") + ".")
        lines.append(f"- Capture vs reference values: max |diff| {s['capture_vs_reference_max_abs_diff']:.2e}.")
        lines.append("")
    lines.append(f"## Kernel alone (bf16 rows and head, L = {kernels[0]['L'] if kernels else 14}, "
                 f"{data['threads']} threads)")
    lines.append("")
    lines.append("`last`: no norm on the captured rows (the last layer is read after the model's own final norm); "
                 "`all`: HF RMSNorm (with its bf16 roundings) on layers 1..L-1 inside the kernel. Torch path: "
                 "FeatureCapture's fallback (gather W rows, float32 copies, einsum; HF RMSNorm module for `all`). "
                 "max abs diff `all`: rare 1-ulp bf16 flips where the two mean(x^2) sums differ in the last bit.")
    lines.append("")
    lines.append("| B | d | final_norm | fused kernel ms | torch path ms | speedup | kernel GB/s | "
                 "kernel / bandwidth | torch GB/s | max abs diff |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in kernels:
        lines.append(f"| {r['B']} | {r['d']} | {r['final_norm']} | {r['kernel_seconds'] * 1e3:.2f} | "
                     f"{r['torch_seconds'] * 1e3:.2f} | {r['speedup']:.1f}x | {r['kernel_GBps']:.1f} | "
                     f"{100 * r['kernel_fraction_of_bandwidth']:.0f}% | {r['torch_GBps']:.1f} | "
                     f"{r['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, nothing written")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per variant (best is reported)")
    ap.add_argument("--skip-forward", action="store_true", help="kernel part only")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--render", metavar="JSON", help="only redraw the markdown of a saved run")
    ap.add_argument("--note", default="Shared 2-core machine: other jobs ran at the same time, so timings are "
                                      "noisy; the run was done once.")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            text = report(json.load(f))
        with open(os.path.splitext(args.render)[0] + ".md", "w") as f:
            f.write(text)
        print(text)
        return
    if not _native_ops.available("cpu"):
        raise SystemExit("meds_core._native is not built: pip install -e . first.")

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and _native_ops.available("cuda") else [])
    for device in devices:
        bandwidth = memory_bandwidth(device)
        runs = []
        if not args.skip_forward:
            if device == "cpu":
                plan = [("qwen2 h1024 x 12 layers", CPU_MODEL, torch.float32, 4, 256 if args.quick else 1024, 12)]
            else:
                plan = [(name, shape, torch.bfloat16, 4, 512 if args.quick else 4096, 14)
                        for name, shape in GPU_MODELS.items()]
            for name, shape, dtype, batch, seq, n_last in plan:
                rows, summary = forward_rows(device, shape, dtype, batch, seq, n_last, args.reps)
                runs.append({"model": name, "shape": shape, "dtype": str(dtype).removeprefix("torch."),
                             "batch": batch, "seq": seq, "n_last": n_last, "rows": rows, "summary": summary})
        batches = [64, 1024] if args.quick else [64, 1024, 16384]
        kernels = kernel_rows(device, batches, [1536, 3584], 14, args.reps, bandwidth)
        data = {"device": device, "bandwidth_bytes_per_s": bandwidth, "forward": runs, "kernel": kernels,
                "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
                "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
                "reps": args.reps, "note": args.note}
        text = report(data)
        print(text)
        if not args.quick:
            os.makedirs(args.out_dir, exist_ok=True)
            base = os.path.join(args.out_dir, f"feature_capture_{device}")
            with open(base + ".md", "w") as f:
                f.write(text)
            with open(base + ".json", "w") as f:
                json.dump(data, f, indent=2)
            print(f"wrote {base}.json and {base}.md")


if __name__ == "__main__":
    main()
