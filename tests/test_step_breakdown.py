"""benchmarks/step_breakdown.py cannot rot: it wraps private parts of ErrorMemory and the incremental engine by name,
so a small run must still find them all, time the incremental kernel where memories keep a state, and account for
the whole step."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_small_run_finds_every_part_and_adds_up(tmp_path):
    out = tmp_path / "breakdown"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "step_breakdown.py"), "--prompts", "4",
                          "--new-rows", "8", "--dims", "6", "--cap", "32", "--sizes", "16", "32", "--cap-steps", "1",
                          "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["n"], r["at_cap"]) for r in rows] == [(16, False), (32, False), (32, True)]
    for r in rows:
        parts = r["parts_ms"]
        assert set(parts) == {"checks + split", "step rows", "vote + sizes", "staging", "engine kernel",
                              "around the kernel", "other"}
        assert abs(sum(parts.values()) - r["total_ms"]) < 1e-6 * max(1.0, r["total_ms"])
        assert all(v >= 0 for k, v in parts.items() if k != "other"), parts
    assert rows[0]["parts_ms"]["engine kernel"] > 0  # growing memories keep a state: the incremental kernel ran
    md = out.with_suffix(".md").read_text()
    assert md.startswith("# Where one incremental MEDS step spends its time") and "| 32 (at cap, step 5) |" in md
