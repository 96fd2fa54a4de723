"""The worker's real ``init_model``: veRL builds the actor's FSDP2 engine on CPU, then MEDS hooks it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="the veRL adapter's tests run in the veRL environment (.[verl-dev])")

HERE = Path(__file__).resolve().parent


def test_init_model_builds_veRLs_engine_and_installs_the_capture():
    out = subprocess.run([sys.executable, str(HERE / "verl_worker_init.py")], capture_output=True, text=True,
                         timeout=600, start_new_session=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["capture"] and report["same_engine_capture"], report
    assert report["engine"] == "FSDPEngineWithLMHead" and report["hooked"] == "FeatureCapture", report
    assert report["layers"] == 3 and report["module"] == "FSDPQwen2ForCausalLM", report  # fully_shard ran
    # a second init with fused kernels on is refused before veRL builds anything
    assert "set actor_rollout_ref.model.use_fused_kernels=False" in report["fused_error"], report
