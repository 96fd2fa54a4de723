"""benchmarks/gpu_suite.sh cannot rot: its dry run prints the whole plan and runs the CPU-side parts (the clustering
benchmark at a small size, the cuda engine on numba's CUDA simulator), and bad arguments exit 2 with one line."""

import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "benchmarks", "gpu_suite.sh")


def _run(*args, out=None):
    env = dict(os.environ, PYTHON=sys.executable, **({"OUT": str(out)} if out else {}))
    return subprocess.run(["bash", SUITE, *args], capture_output=True, text=True, env=env, timeout=600)


def test_dry_run_prints_the_plan_and_runs_the_cpu_side(tmp_path):
    res = _run("--dry-run", out=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    for step in ("1 wheels", "2 build: MEDS_FORCE_CUDA=1", "3 tests", "test_verl_capture_gpu.py", "4 clustering",
                 "5 capture", "6 trl", "capture: would time", "trl: would run", "feature_capture: memory_bandwidth",
                 "trl_step_overhead: build, run, WARMUP present", "dry run done"):
        assert step in res.stdout, step
    data = json.loads((tmp_path / "benchmarks" / "results" / "clustering_gpu.json").read_text())
    assert data["dry_run"] and data["rows"] and data["rows"][0]["cpu_ms"] > 0
    row = data["rows"][0]
    if importlib.util.find_spec("numba_cuda") is not None:  # the cuda engine ran (simulator), same labels as the CPU
        assert row["identical_problems"] == row["P"]
    md = (tmp_path / "benchmarks" / "results" / "clustering_gpu.md").read_text()
    assert md.startswith("# Batched clustering step on the GPU") and "DRY RUN" in md
    assert "dry run done" in (tmp_path / "gpu_suite.log").read_text()


def test_bad_argument_is_one_line_and_exit_2():
    res = _run("--no-such-flag")
    assert res.returncode == 2
    assert res.stderr.strip() == ("gpu_suite.sh: unknown argument '--no-such-flag'; use --dry-run, --fetch-wheels or "
                                  "--help")
    assert res.stdout == ""


def test_help_describes_every_mode():
    res = _run("--help")
    assert res.returncode == 0
    assert "--dry-run" in res.stdout and "--fetch-wheels" in res.stdout and "$OUT" in res.stdout
