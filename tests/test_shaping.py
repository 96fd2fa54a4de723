"""penalties / shape_rewards against a literal per-rollout float64 oracle; types and gating."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meds_core import penalties, shape_rewards


def oracle(rewards, sizes, correct, coef, cap, target, group_ids, mixed_only):
    """One rollout at a time, straight from the paper."""
    mixed = {}
    if group_ids is not None and mixed_only:
        for g in set(group_ids):
            cs = [c for c, gg in zip(correct, group_ids) if gg == g]
            mixed[g] = (1 in cs) and (0 in cs)
    out_r, out_p = [], []
    for i, (r, s, c) in enumerate(zip(rewards, sizes, correct)):
        p = coef * min(math.log(s + 1), cap)
        gated = group_ids is not None and mixed_only and not mixed[group_ids[i]]
        if c == 0 and target in ("wrong", "both") and not gated:
            out_r.append(r - p), out_p.append(p)
        elif c == 1 and target in ("right", "both") and not gated:
            out_r.append(r / (1 + p)), out_p.append(p)
        else:
            out_r.append(float(r)), out_p.append(0.0)
    return np.array(out_r), np.array(out_p)


cases = st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-2, 2), min_size=n, max_size=n),
    st.lists(st.integers(0, 500), min_size=n, max_size=n),
    st.lists(st.sampled_from([1, 0, -1]), min_size=n, max_size=n),
    st.lists(st.integers(0, 4), min_size=n, max_size=n),
))


@settings(max_examples=200, deadline=None)
@given(cases, st.sampled_from(["wrong", "right", "both", "none"]), st.floats(0, 1), st.floats(0, 3),
       st.booleans(), st.booleans())
def test_matches_literal_oracle(case, target, coef, cap, use_groups, mixed_only):
    rewards, sizes, correct, groups = case
    gids = groups if use_groups else None
    want_r, want_p = oracle(rewards, sizes, correct, coef, cap, target, gids, mixed_only)
    kw = dict(penalty_coef=coef, cap=cap, target=target, group_ids=gids, mixed_groups_only=mixed_only)
    np.testing.assert_allclose(penalties(np.array(sizes), np.array(correct), **kw), want_p, rtol=1e-12)
    np.testing.assert_allclose(shape_rewards(np.array(rewards), np.array(sizes), np.array(correct), **kw), want_r,
                               rtol=1e-12, atol=1e-15)


def test_reference_numbers():
    sizes = np.array([0, 1, 6, 100, 100])
    p = penalties(sizes, [0, 0, 0, 0, 1])
    np.testing.assert_allclose(p, [0, 0.1 * math.log(2), 0.1 * math.log(7), 0.2, 0.0])
    r = shape_rewards(np.array([0.0, 0, 0, 0, 1]), sizes, [0, 0, 0, 0, 1], target="both")
    np.testing.assert_allclose(r, [0, -0.1 * math.log(2), -0.1 * math.log(7), -0.2, 1 / 1.2])


def test_unknown_correctness_is_never_penalised():
    r = shape_rewards(np.ones(3), np.full(3, 50), [-1, -1, -1], target="both")
    np.testing.assert_array_equal(r, 1.0)


def test_mixed_groups_only_gates_whole_groups():
    correct = [1, 0, 0, 0, 0, 0, 1, 1]
    groups = ["a", "a", "a", "b", "b", "c", "c", "c"]  # a mixed, b all wrong, c mixed
    p = penalties(np.full(8, 10), correct, group_ids=groups)
    assert (p[[1, 2, 5]] > 0).all() and (p[[0, 3, 4, 6, 7]] == 0).all()
    p = penalties(np.full(8, 10), correct, group_ids=groups, mixed_groups_only=False)
    assert (p[[1, 2, 3, 4, 5]] > 0).all()
    p = penalties(np.full(8, 10), correct)  # no group ids: no gating
    assert (p[[3, 4]] > 0).all()


def test_unknown_does_not_make_a_group_mixed():
    p = penalties(np.full(3, 10), [0, -1, 0], group_ids=[0, 0, 0])
    np.testing.assert_array_equal(p, 0)


def test_torch_type_dtype_and_device_are_preserved():
    torch = pytest.importorskip("torch")
    rewards = torch.tensor([1.0, 0.0, 0.0], dtype=torch.bfloat16)
    sizes = torch.tensor([3, 3, 0])
    out = shape_rewards(rewards, sizes, torch.tensor([True, False, False]))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and out.device == rewards.device
    want = shape_rewards(np.array([1.0, 0, 0]), np.array([3, 3, 0]), np.array([1, 0, 0]))
    np.testing.assert_allclose(out.float().numpy(), want, rtol=1e-2)
    p = penalties(sizes, torch.tensor([1, 0, 0]))
    assert isinstance(p, torch.Tensor) and p.dtype == torch.float32
    devices = ["cuda"] if torch.cuda.is_available() else []
    for dev in devices:
        out = shape_rewards(rewards.to(dev), sizes.to(dev), torch.tensor([1, 0, 0], device=dev))
        assert out.device.type == "cuda"


@pytest.mark.parametrize("kw, match", [
    (dict(target="worng"), r"target='worng' is not valid; use one of \['wrong', 'right', 'both', 'none'\]"),
    (dict(penalty_coef=-1.0), r"penalty_coef=-1.0 must be a finite number >= 0"),
    (dict(cap=float("nan")), r"cap=nan must be"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        penalties(np.zeros(2), [0, 1], **kw)


def test_bad_shapes_and_values():
    with pytest.raises(ValueError, match=r"correct holds \[3\]"):
        penalties(np.zeros(2), [0, 3])
    with pytest.raises(ValueError, match=r"correct has shape \(3,\)"):
        penalties(np.zeros(2), [0, 1, 1])
    with pytest.raises(ValueError, match="cluster_size must hold counts >= 0"):
        penalties(np.array([-1, 0]), [0, 1])
    with pytest.raises(ValueError, match=r"rewards has shape \(3,\)"):
        shape_rewards(np.zeros(3), np.zeros(2), [0, 1])
    with pytest.raises(ValueError, match=r"group_ids has shape \(1,\)"):
        penalties(np.zeros(2), [0, 1], group_ids=[0])


def test_equal_penalties_vanish_under_group_normalisation():
    """the paper: MEDS acts only through penalty differences inside a group."""
    def norm(x):
        return (x - x.mean()) / x.std()

    base = norm(np.array([1.0, 0, 0, 0]))
    flat = norm(shape_rewards(np.array([1.0, 0, 0, 0]), np.array([0, 5, 5, 5]), [1, 0, 0, 0]))
    spread = norm(shape_rewards(np.array([1.0, 0, 0, 0]), np.array([0, 0, 5, 50]), [1, 0, 0, 0]))
    np.testing.assert_allclose(flat, base)
    assert not np.allclose(spread, base)
