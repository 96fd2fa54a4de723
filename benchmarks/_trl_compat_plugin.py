"""pytest plugin of ``benchmarks/trl_compat.py``: runs TRL's own GRPO tests stock or with ``MEDSGRPOTrainer``.

Loaded with ``-p _trl_compat_plugin`` (this folder on ``PYTHONPATH``); configured by environment variables:

- ``MEDS_TRL_COMPAT_MODE``: ``stock`` (TRL's ``GRPOTrainer`` untouched) or ``meds``: every collected test module that
  imported ``GRPOTrainer`` gets :class:`MEDSGRPOTrainerUnderTRLTests` under that name instead, so each
  ``GRPOTrainer(...)`` the tests build (and each ``patch.object(GRPOTrainer, ...)``) is a ``MEDSGRPOTrainer`` with
  :data:`MEDS_SETTINGS`. Nothing else in the tests changes.
- ``MEDS_TRL_COMPAT_FP32=1`` (``--fp32``, both modes alike): configs whose ``bf16`` a test leaves unset train in
  float32 instead of TRL's bf16 default.
- ``MEDS_TRL_COMPAT_REPORT``: JSON file rewritten after every test (so a run stopped at a time limit still reports
  the tests it finished): per test id its outcome (``pass``, ``fail``, ``error``, ``skip``, ``xfail``, ``xpass``), a
  one-line reason for non-passes, its seconds, and in MEDS mode, read from
  :func:`meds_core.step.rl_step.meds_step`'s result (unchanged): the rollouts MEDS scored and those with a non-zero
  penalty, the MEDS steps and those with a non-zero penalty, and the mean raw and shaped reward over the rollouts of
  the penalised steps (so the table shows the shaping was active while TRL's raw metrics were checked).

One shim, for the test file's helper module only: ``trl.import_utils.is_joblib_available`` (imported by TRL's
``tests/testing_utils.py`` at the pinned commit, absent from trl 1.16) is added when missing, answering whether
``joblib`` is importable.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

MODE = os.environ.get("MEDS_TRL_COMPAT_MODE", "stock")
if MODE not in ("stock", "meds"):
    raise ValueError(f"MEDS_TRL_COMPAT_MODE={MODE!r}: use 'stock' or 'meds'.")
REPORT = os.environ.get("MEDS_TRL_COMPAT_REPORT")
# The answer marker is a space: every filler word of the stand-in tokenizer (tests/trl_standins.py) starts with one, so
# a random model writes it in nearly every completion, and so do the tool-call and plain-text completions that TRL's
# tool and environment tests hard-code (" x" is in none of those). The stand-in models have 2 decoder layers.
ANSWER_MARKER = " "
LAYERS = 2

_trl_import_utils = importlib.import_module("trl.import_utils")
if not hasattr(_trl_import_utils, "is_joblib_available"):
    _trl_import_utils.is_joblib_available = lambda: importlib.util.find_spec("joblib") is not None

# --fp32 of the harness (both runs alike): TRL's configs turn bf16 mixed precision on when a test leaves ``bf16`` unset.
# On a CPU without bf16 matrix instructions TRL's chunked log-prob matmuls then dominate every training test (~40x
# slower than float32 at the stand-ins' shapes), so the harness can ask for float32 there. A test that sets bf16 or
# fp16 itself keeps its setting.
if os.environ.get("MEDS_TRL_COMPAT_FP32") == "1":
    from trl import GRPOConfig

    _post_init = GRPOConfig.__post_init__

    def _fp32_post_init(self):
        if self.bf16 is None and not self.fp16:
            self.bf16 = False
        _post_init(self)

    GRPOConfig.__post_init__ = _fp32_post_init

_results: dict[str, dict] = {}
# test id -> [rollouts scored, rollouts penalised, steps, steps penalised, raw sum, shaped sum, rollouts of the
# penalised steps]
_penalties: dict[str, list[float]] = {}
_current: list[str] = [""]


# TRL's test rewards often rate every completion of a group alike (e.g. by length: all "correct"), so shape every
# group and penalise both correctness groups, to make sure the MEDS run really shapes.
MEDS_SETTINGS = {"answer_marker": ANSWER_MARKER, "use_last_n_layers": LAYERS, "cluster_penalty_target": "both",
                 "mixed_groups_only": False}


def meds_config():
    from meds_core import MEDSConfig

    return MEDSConfig(**MEDS_SETTINGS)


def _meds_trainer_class():
    from meds_core.adapters.trl import MEDSGRPOTrainer
    from meds_core.adapters.trl import meds_state as step_module  # where both TRL paths call meds_step

    class MEDSGRPOTrainerUnderTRLTests(MEDSGRPOTrainer):
        """``MEDSGRPOTrainer`` with the harness's ``meds_config`` as default (the tests pass none)."""

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("meds_config", meds_config())
            super().__init__(*args, **kwargs)

    step = step_module.meds_step

    def counted_meds_step(*args, **kwargs):
        out = step(*args, **kwargs)
        seen = _penalties.setdefault(_current[0], [0, 0, 0, 0, 0.0, 0.0, 0])
        penalised = int(np.count_nonzero(out.penalty))
        seen[0] += len(out.penalty)
        seen[1] += penalised
        seen[2] += 1
        if penalised:
            raw = np.asarray(kwargs["rewards"] if "rewards" in kwargs else args[4], dtype=np.float64)
            ok = np.isfinite(raw)  # None-returning rewards arrive as NaN
            seen[3] += 1
            seen[4] += float(raw[ok].sum())
            seen[5] += float(out.shaped[ok].sum())
            seen[6] += int(ok.sum())
        return out

    step_module.meds_step = counted_meds_step
    return MEDSGRPOTrainerUnderTRLTests


_collected: list[str] = []  # the tests selected to run (after -k and --deselect)


def pytest_collection_finish(session):
    _collected[:] = [item.nodeid for item in session.items]


def pytest_collection_modifyitems(session, config, items):
    if MODE != "meds":
        return
    cls = _meds_trainer_class()
    for module in {item.module for item in items if getattr(item, "module", None) is not None}:
        if hasattr(module, "GRPOTrainer"):
            module.GRPOTrainer = cls


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _current[0] = item.nodeid


def _reason(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    text = getattr(report, "longreprtext", "") or ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("E ")]
    return (lines[-1][1:].strip() if lines else text.strip().splitlines()[-1] if text.strip() else "")[:300]


def pytest_runtest_logreport(report):
    # "unfinished" until the test's last phase is logged (see pytest_runtest_logfinish): a run stopped at its time
    # limit mid-test reports that test as unfinished, not as passed
    entry = _results.setdefault(report.nodeid, {"outcome": "unfinished", "reason": "", "seconds": 0.0})
    entry["seconds"] += float(getattr(report, "duration", 0.0))
    if hasattr(report, "wasxfail"):
        entry["outcome"] = "xfail" if report.skipped else "xpass"
        entry["reason"] = entry["reason"] or str(report.wasxfail)
    elif report.failed:
        entry["outcome"] = "fail" if report.when == "call" else "error"
        entry["reason"] = entry["reason"] or _reason(report)
    elif report.skipped:
        entry["outcome"] = "skip"
        entry["reason"] = _reason(report)


def _write_report(done: bool) -> None:
    if not REPORT:
        return
    for nodeid, (scored, penalised, steps, steps_pen, raw, shaped, n) in _penalties.items():
        if nodeid in _results:
            _results[nodeid].update(meds_rollouts=scored, meds_penalised=penalised, meds_steps=steps,
                                    meds_steps_penalised=steps_pen, raw_mean_penalised_steps=raw / n if n else None,
                                    shaped_mean_penalised_steps=shaped / n if n else None)
    with open(REPORT + ".part", "w", encoding="utf-8") as f:
        json.dump({"mode": MODE, "done": done, "collected": _collected, "results": _results}, f, indent=1)
    os.replace(REPORT + ".part", REPORT)


def pytest_runtest_logstart(nodeid, location):
    _results[nodeid] = {"outcome": "unfinished", "reason": "", "seconds": 0.0}
    _write_report(done=False)


def pytest_runtest_logfinish(nodeid, location):
    entry = _results.get(nodeid)
    if entry is not None and entry["outcome"] == "unfinished":
        entry["outcome"] = "pass"
    _write_report(done=False)


def pytest_sessionfinish(session, exitstatus):
    _write_report(done=True)
