"""veRL 0.9's real training loop on CPU, end to end: ``adapters/verl/run_meds_cpu.sh`` (the recipe scaled down, through
``main_meds``, veRL's sync v1 trainer, Ray, TransferQueue, FSDP2 on gloo, the ``hf_cpu`` rollout, veRL's DAPO math
reward and dynamic sampling) on a tiny random Qwen2 and 32 toy problems. Nothing is mocked.

What runs (one asset folder shared by all runs; about 14 minutes on 2 cores):

* a 4-step MEDS run, checkpoints at steps 2 and 4; its first batch is entirely filtered out by dynamic sampling
  (the first 4 of the 12 problems are hopeless, ``data.shuffle=False``);
* a resumed run: a copy of that run's step-2 checkpoint, ``trainer.resume_mode=auto``, steps 3-4 again;
* the baseline (``run_dapo.sh``, nothing of MEDS) for 2 steps;
* MEDS with 2 data-parallel actor workers for 2 steps;
* bad input in the real loop: a dataset without ``extra_info.index``, and checkpoints whose memory is missing,
  truncated or from another feature setting (runs that resume at step 2 of 2: start-up and restore only).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="the veRL adapter's tests run in the veRL environment (.[verl-dev])")

from meds_core.step.memory import ErrorMemory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "adapters" / "verl" / "run_meds_cpu.sh"
TIMEOUT = 900


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verl_cpu_assets")
    subprocess.run([sys.executable, "-m", "meds_core.demo.verl_assets", "--out", str(out), "--hopeless", "4"],
                   check=True, cwd=ROOT, timeout=TIMEOUT)
    return out


def run_cpu(out: Path, assets: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """One ``run_meds_cpu.sh`` run into ``out``; its own Ray cluster, stopped with the process group."""
    environ = dict(os.environ, MEDS_CPU_OUT=str(out), MEDS_CPU_ASSETS=str(assets), **(env or {}))
    environ.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(["bash", str(SCRIPT), *overrides], cwd=ROOT, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    (out / "console.log").write_text(output)
    return subprocess.CompletedProcess(proc.args, proc.returncode, output, None)


def steps(out: Path, run: int = 1) -> dict[int, dict]:
    """veRL's logged metrics of run ``run`` (its file logger), by step."""
    lines = (out / f"metrics-run{run}.jsonl").read_text().splitlines()
    return {rec["step"]: rec["data"] for rec in map(json.loads, lines)}


def tail(result: subprocess.CompletedProcess, n: int = 40) -> str:
    return "\n".join(result.stdout.splitlines()[-n:])


@pytest.fixture(scope="module")
def full_run(assets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("meds4")
    result = run_cpu(out, assets)
    assert result.returncode == 0, tail(result)
    return out


def test_four_meds_steps_log_meds_metrics_and_checkpoint_the_memory(full_run):
    logged = steps(full_run)
    assert sorted(logged) == [1, 2, 3, 4]
    rows = [logged[s]["meds/memory_rows"] for s in (1, 2, 3, 4)]
    assert all(b > a for a, b in zip(rows, rows[1:])), rows  # every step adds rollouts to the memory
    for s in (1, 2, 3, 4):
        m = logged[s]
        for name in ("meds/penalty_mean", "meds/penalized_frac", "meds/clusters_mean", "meds/no_answer_frac",
                     "meds/raw_reward_mean", "meds/shaped_reward_mean"):
            assert name in m, (s, name)
        # the raw mean sits beside the shaped one; the shaped one is lower by the penalties applied
        assert m["meds/shaped_reward_mean"] <= m["meds/raw_reward_mean"] + 1e-9
        # veRL's own score metrics stay raw (what the reward returned); its reward metrics show what trained
        assert m["critic/score/mean"] == pytest.approx(m["meds/raw_reward_mean"], abs=1e-6)
        assert m["critic/rewards/mean"] == pytest.approx(m["meds/shaped_reward_mean"], abs=1e-6)
    later = [logged[s] for s in (2, 3, 4)]  # memories are non-empty from step 2 on
    assert max(m["meds/penalty_mean"] for m in later) > 0
    assert any(m["meds/shaped_reward_mean"] < m["meds/raw_reward_mean"] for m in later)
    for s in (2, 4):
        memory = ErrorMemory.load(full_run / f"global_step_{s}" / "meds_memory.bin")
        assert memory.num_rows == logged[s]["meds/memory_rows"]
    assert (full_run / "latest_checkpointed_iteration.txt").read_text().strip() == "4"


def test_dynamic_sampling_survives_a_batch_with_every_group_filtered(full_run):
    first = steps(full_run)[1]
    evicted = {k: v for k, v in first.items() if "filter_groups/evicted" in k}
    assert evicted and max(evicted.values()) >= 4, evicted  # the whole first batch (4 hopeless groups) went
    assert first["meds/memory_rows"] > 0  # and the step still trained on refilled groups


def test_resume_from_step_two_continues_the_uninterrupted_run(full_run, assets, tmp_path):
    """``trainer.resume_mode=auto`` resumes at step 3 with the step-2 memory restored: the memory holds the
    checkpoint's rows plus the new step's, and returning prompts are penalised at once. The rollouts themselves are
    not reproducible on CPU under dynamic sampling (resumes from one checkpoint sampled different rollouts, at
    step 4 and, in CI, at step 3), so this run is not compared value by value with the uninterrupted one; that the
    restored memory gives the saved memory's penalties on the same rollouts is tested in
    ``test_verl_trainer.test_memory_saved_with_checkpoint_and_restored``."""
    shutil.copytree(full_run / "global_step_2", tmp_path / "global_step_2")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("2")
    saved = ErrorMemory.load(full_run / "global_step_2" / "meds_memory.bin")
    assert saved.num_rows == steps(full_run)[2]["meds/memory_rows"]
    result = run_cpu(tmp_path, assets, "trainer.resume_mode=auto")
    assert result.returncode == 0, tail(result)
    resumed = steps(tmp_path)
    assert sorted(resumed) == [3, 4]
    assert resumed[3]["meds/memory_rows"] > saved.num_rows  # restored, then grown: not an empty memory
    assert resumed[3]["meds/penalty_mean"] > 0
    assert resumed[4]["meds/memory_rows"] > resumed[3]["meds/memory_rows"]
    memory = ErrorMemory.load(tmp_path / "global_step_4" / "meds_memory.bin")
    assert memory.num_rows == resumed[4]["meds/memory_rows"] and memory.step == 4


def test_baseline_recipe_runs_two_steps(assets, tmp_path):
    result = run_cpu(tmp_path, assets, "trainer.total_training_steps=2", "trainer.save_freq=-1",
                     env={"MEDS_CPU_BASELINE": "1"})
    assert result.returncode == 0, tail(result)
    logged = steps(tmp_path)
    assert sorted(logged) == [1, 2]
    assert not any(k.startswith("meds/") for m in logged.values() for k in m)  # nothing of MEDS ran


def test_two_data_parallel_workers(assets, tmp_path):
    result = run_cpu(tmp_path, assets, "trainer.total_training_steps=2", env={"MEDS_CPU_WORKERS": "2"})
    assert result.returncode == 0, tail(result)
    logged = steps(tmp_path)
    assert sorted(logged) == [1, 2]
    assert logged[2]["meds/memory_rows"] > logged[1]["meds/memory_rows"] > 0
    assert ErrorMemory.load(tmp_path / "global_step_2" / "meds_memory.bin").num_rows == logged[2]["meds/memory_rows"]


def test_dataset_without_prompt_index_is_refused_at_start(assets, tmp_path):
    broken = tmp_path / "broken"
    subprocess.run([sys.executable, "-m", "meds_core.demo.verl_assets", "--out", str(broken),
                    "--broken-index"], check=True, cwd=ROOT, timeout=TIMEOUT)
    result = run_cpu(tmp_path / "out", assets, f"data.train_files={broken / 'train.parquet'}")
    assert result.returncode != 0
    assert "have no extra_info.index" in result.stdout and "Started a local Ray instance" not in result.stdout


def _resume_with(full_run: Path, out: Path, edit) -> None:
    shutil.copytree(full_run / "global_step_2", out / "global_step_2")
    (out / "latest_checkpointed_iteration.txt").write_text("2")
    edit(out / "global_step_2" / "meds_memory.bin")


@pytest.mark.parametrize("damage", ["missing", "truncated", "other_config"])
def test_checkpoint_memory_missing_damaged_or_foreign(full_run, assets, tmp_path, damage):
    """Resuming at step 2 of 2 (no training step: start-up, restore, stop). A missing memory is a stated warning
    and an empty memory; a truncated one or one saved under other feature settings stops the run, naming the file
    and the fix."""
    overrides = ["trainer.total_training_steps=2", "trainer.resume_mode=auto"]
    if damage == "missing":
        _resume_with(full_run, tmp_path, lambda p: p.unlink())
    elif damage == "truncated":
        _resume_with(full_run, tmp_path, lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]))
    else:
        _resume_with(full_run, tmp_path, lambda p: None)
        overrides.append("meds.use_last_n_layers=2")
    result = run_cpu(tmp_path, assets, *overrides)
    if damage == "missing":
        assert result.returncode == 0, tail(result)
        assert "has no meds_memory.bin" in result.stdout and "starting with an empty memory" in result.stdout
        return
    assert result.returncode != 0
    assert "MemoryFileError" in result.stdout and "MEDS cannot resume from" in result.stdout, tail(result)
    assert "global_step_2/meds_memory.bin" in result.stdout
    if damage == "other_config":
        assert "use_last_n_layers" in result.stdout


def test_backend_dedup_only_drops_identical_repeats():
    from meds_core.adapters.verl.cpu import dedup_backend

    assert dedup_backend("cpu:gloo,cpu:gloo") == "cpu:gloo"
    assert dedup_backend("cpu:gloo,cuda:nccl") == "cpu:gloo,cuda:nccl"
    assert dedup_backend("cpu:gloo,cpu:mpi") == "cpu:gloo,cpu:mpi"  # a real conflict reaches torch's own error
    assert dedup_backend("gloo") == "gloo" and dedup_backend(None) is None
