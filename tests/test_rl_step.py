"""meds_step, the step every adapter runs, against its parts run by hand: update, penalties, shaped rewards, metrics."""

from __future__ import annotations

import numpy as np
import pytest

from meds_core import ErrorMemory, MEDSConfig, penalties, shape_rewards
from meds_core.step.rl_step import meds_step
from meds_core.step.step_stats import METRIC_NAMES, step_metrics
from meds_core.testing import blob_stream

TIMED = "meds/cluster_seconds"  # wall time: differs between two runs of the same step


def _config(**kw):
    return MEDSConfig(use_last_n_layers=6, backend="hdbscan", **kw)


def _batch(keys, feats, correct):
    """Step inputs: outcome rewards (unknown correctness -> 0.5), GRPO group = prompt, no answer = NaN feature."""
    rewards = np.where(correct == 1, 1.0, np.where(correct == 0, 0.0, 0.5))
    return dict(keys=keys, features=feats, correct=correct, rewards=rewards, group_ids=[str(k) for k in keys],
                no_answer=~np.isfinite(feats).all(axis=1))


def _by_hand(memory, b, rows=None):
    """The step's parts, run one after the other; ``rows`` restricts the metrics as ``metric_rows`` does."""
    step = memory.update(b["keys"], b["features"], b["correct"])
    kw = dict(memory.config.shaping_kwargs(), group_ids=np.asarray(b["group_ids"]))
    pen = penalties(step.cluster_size, b["correct"], **kw)
    shaped = shape_rewards(b["rewards"], step.cluster_size, b["correct"], **kw)
    m = np.ones(len(pen), bool) if rows is None else rows
    sub = type(step)(step.cluster_size[m], step.label[m], step.group[m], step.valid[m], step.stats)
    metrics = step_metrics(memory, sub, [k for k, keep in zip(b["keys"], m) if keep], pen[m], b["no_answer"][m])
    metrics["meds/raw_reward_mean"] = float(b["rewards"][m].mean()) if m.any() else 0.0
    metrics["meds/shaped_reward_mean"] = float(shaped[m].mean()) if m.any() else 0.0
    return step, pen, shaped, metrics


@pytest.mark.parametrize("target", ["wrong", "both"])
def test_meds_step_equals_its_parts(target):
    config = _config(cluster_penalty_target=target, penalty_coef=0.3)
    ours, theirs = ErrorMemory(config), ErrorMemory(config)
    penalised = 0
    for keys, feats, correct in blob_stream(3, steps=5):
        b = _batch(keys, feats, correct)
        got = meds_step(ours, **b)
        step, pen, shaped, metrics = _by_hand(theirs, b)
        np.testing.assert_array_equal(got.step.cluster_size, step.cluster_size)
        np.testing.assert_array_equal(got.step.label, step.label)
        np.testing.assert_array_equal(got.penalty, pen)
        np.testing.assert_array_equal(got.shaped, shaped)
        assert got.shaped.dtype == got.penalty.dtype == np.float64
        assert set(got.metrics) == set(METRIC_NAMES) | {"meds/raw_reward_mean", "meds/shaped_reward_mean"}
        assert {k: v for k, v in got.metrics.items() if k != TIMED} == {k: v for k, v in metrics.items() if k != TIMED}
        penalised += int((got.penalty > 0).sum())
    assert penalised > 20  # the comparison covered penalised rows, not only zeros
    assert ours.state_dict()["keys"] == theirs.state_dict()["keys"]


def test_metric_rows_limit_the_metrics_not_the_step():
    """Rows outside ``metric_rows`` (e.g. veRL's padding samples) are stored and shaped, but not described."""
    everything, masked, by_hand = (ErrorMemory(_config()) for _ in range(3))
    rng = np.random.default_rng(0)
    differed = 0
    for keys, feats, correct in blob_stream(7, steps=5):
        b = _batch(keys, feats, correct)
        rows = rng.random(len(keys)) < 0.6
        full, part = meds_step(everything, **b), meds_step(masked, **b, metric_rows=rows)
        _, _, _, metrics = _by_hand(by_hand, b, rows)
        np.testing.assert_array_equal(part.shaped, full.shaped)
        np.testing.assert_array_equal(part.penalty, full.penalty)
        np.testing.assert_array_equal(part.step.cluster_size, full.step.cluster_size)
        assert {k: v for k, v in part.metrics.items() if k != TIMED} == {k: v for k, v in metrics.items() if k != TIMED}
        assert part.metrics["meds/raw_reward_mean"] == pytest.approx(b["rewards"][rows].mean())
        differed += part.metrics["meds/penalized_frac"] != full.metrics["meds/penalized_frac"]
    assert differed >= 2  # the mask changed what the metrics describe
    assert masked.num_rows == everything.num_rows


def test_metric_rows_all_false_gives_zero_means():
    keys, feats, correct = next(blob_stream(1, steps=1))
    out = meds_step(ErrorMemory(_config()), **_batch(keys, feats, correct), metric_rows=np.zeros(len(keys), bool))
    assert out.metrics["meds/raw_reward_mean"] == out.metrics["meds/shaped_reward_mean"] == 0.0
    assert out.metrics["meds/penalized_frac"] == out.metrics["meds/no_answer_frac"] == 0.0


def test_sizes_hook_replaces_the_sizes_of_the_penalty_only():
    config = _config(penalty_coef=0.5)
    hooked, plain = ErrorMemory(config), ErrorMemory(config)
    seen = []

    def hook(sizes, correct, group_ids):
        seen.append(len(sizes))
        return np.full_like(sizes, 3)

    for keys, feats, correct in blob_stream(5, steps=3):
        b = _batch(keys, feats, correct)
        got, ref = meds_step(hooked, **b, sizes_hook=hook), meds_step(plain, **b)
        np.testing.assert_array_equal(got.step.cluster_size, ref.step.cluster_size)  # the memory is updated alike
        want = penalties(np.full(len(keys), 3), correct, **config.shaping_kwargs(), group_ids=b["group_ids"])
        np.testing.assert_array_equal(got.penalty, want)
    assert seen == [96, 96, 96]
    with pytest.raises(ValueError, match=r"the cluster-size hook returned shape \(2,\); expected \(96,\)"):
        meds_step(hooked, **b, sizes_hook=lambda s, c, g: s[:2])
