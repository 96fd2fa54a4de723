"""meds_core.step.step_stats: the meds/* metrics both adapters log, checked against hand-computed values."""

import numpy as np
import pytest

from meds_core import ErrorMemory, MEDSConfig, penalties
from meds_core.step.step_stats import METRIC_NAMES, step_metrics


def _memory_and_step(target="wrong"):
    cfg = MEDSConfig(use_last_n_layers=2, cluster_method="single", cluster_penalty_target=target)
    mem = ErrorMemory(cfg)
    keys = ["a"] * 4 + ["b"] * 4
    feats = np.arange(16, dtype=np.float32).reshape(8, 2) + 1.0
    feats[7] = np.nan  # no answer
    correct = np.array([1, 0, 0, 0, 1, 1, 0, 0])
    mem.update(keys, feats, correct)
    step = mem.update(keys, feats, correct)
    pen = penalties(step.cluster_size, correct, **cfg.shaping_kwargs(), group_ids=keys)
    return mem, step, keys, np.asarray(pen), ~np.isfinite(feats).all(1)


def test_values_match_hand_computation():
    mem, step, keys, pen, miss = _memory_and_step()
    out = step_metrics(mem, step, keys, pen, miss)
    assert tuple(out) == METRIC_NAMES
    # 'single': size = stored rows of the memory before the step; wrong rows: a->3 stored, b->1 stored (row 7 no answer)
    expect = 0.1 * np.log1p(np.array([3, 3, 3, 1]))
    np.testing.assert_allclose(pen[[1, 2, 3, 6]], expect)
    assert out["meds/penalty_mean"] == pytest.approx(expect.mean())
    assert out["meds/penalized_frac"] == pytest.approx(4 / 8)
    assert out["meds/clusters_mean"] == pytest.approx(1.0)  # 'single' labels every row 0: one cluster per memory
    assert out["meds/memory_rows"] == 14.0
    assert out["meds/no_answer_frac"] == pytest.approx(1 / 8)
    assert out["meds/cluster_seconds"] == 0.0


def test_target_none_gives_zero_and_bad_shapes_are_named():
    mem, step, keys, pen, miss = _memory_and_step("none")
    assert step_metrics(mem, step, keys, np.zeros(8), miss)["meds/penalty_mean"] == 0.0
    with pytest.raises(ValueError, match="penalties has shape"):
        step_metrics(mem, step, keys, np.zeros(3), miss)
    with pytest.raises(ValueError, match="keys has length 2"):
        step_metrics(mem, step, keys[:2], pen, miss)
