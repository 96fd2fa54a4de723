"""pass@k, diversity and memory statistics against slow oracles: math.comb for pass@k, explicit eigen formulas,
loops over a memory."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meds_core import ErrorMemory, MEDSConfig
from meds_core.evaluation.diversity import effective_rank, effective_rank_dynamics, top1_eigen_ratio
from meds_core.evaluation.pass_at_k import default_ks, mean_at_n, pass_at_k
from meds_core.inspection.memory_stats import memory_stats


# ---------------------------------------------------------------------------------------------------- pass@k
def pass_at_k_oracle(n: int, c: int, k: int) -> float:
    """1 - C(n - c, k) / C(n, k) in exact rationals (math.comb is 0 when n - c < k)."""
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


problem = st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n)))


@settings(max_examples=300, deadline=None)
@given(problem)
def test_pass_at_k_matches_math_comb(case):
    n, c, k = case
    got = pass_at_k(n, c, k)
    assert isinstance(got, float)
    assert math.isclose(got, pass_at_k_oracle(n, c, k), rel_tol=1e-12, abs_tol=1e-15)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 64), min_size=1, max_size=30), st.integers(1, 64), st.integers(0, 2 ** 31))
def test_pass_at_k_vectorised_equals_per_problem(extra, k, seed):
    rng = np.random.default_rng(seed)
    n = np.array([k + e for e in extra])
    c = np.array([rng.integers(0, m + 1) for m in n])
    got = pass_at_k(n, c, k)
    assert got.shape == n.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, [pass_at_k_oracle(int(a), int(b), k) for a, b in zip(n, c)], rtol=1e-12,
                               atol=1e-15)


def test_pass_at_k_large_n_keeps_relative_precision():
    # C(n-1, 1) / C(n, 1) = (n-1)/n: pass@1 = 1/n exactly; binomials of n = 10^5 would overflow float64
    assert math.isclose(pass_at_k(100_000, 1, 1), 1e-5, rel_tol=1e-12)
    assert math.isclose(pass_at_k(4096, 3, 1024), pass_at_k_oracle(4096, 3, 1024), rel_tol=1e-12)
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 1, 8) == 1.0


def test_pass_at_k_shape_and_broadcast():
    np.testing.assert_allclose(pass_at_k(16, [0, 4, 16], 4), [pass_at_k_oracle(16, c, 4) for c in (0, 4, 16)])
    assert pass_at_k(np.array([[4, 4]]), np.array([[1, 2]]), 2).shape == (1, 2)


@pytest.mark.parametrize("n, c, k, match", [
    (4, 5, 1, r"0 <= c <= n; got c=\[5\]"),
    (4, -1, 1, r"0 <= c <= n"),
    (0, 0, 1, r"n must be >= 1"),
    (4, 2, 5, r"k=5 exceeds the samples"),
    (4, 2, 0, r"k=0 must be an integer >= 1"),
    (4, 2, 1.5, r"k=1.5 must be an integer"),
    (4.5, 2, 1, r"n must hold whole numbers"),
])
def test_pass_at_k_errors_name_the_value(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def test_mean_at_n_is_mean_accuracy_and_pass_at_1():
    n, c = np.array([4, 4, 8]), np.array([1, 4, 2])
    assert math.isclose(mean_at_n(n, c), (1 / 4 + 1 + 2 / 8) / 3)
    assert math.isclose(mean_at_n(n, c), float(np.mean(pass_at_k(n, c, 1))))


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(12) == [1, 2, 4, 8, 12]
    with pytest.raises(ValueError, match="n=0"):
        default_ks(0)


# ---------------------------------------------------------------------------------------------------- diversity
def effective_rank_oracle(X: np.ndarray) -> float:
    """Singular values as square roots of the eigenvalues of X^T X (float64), entropy term by term."""
    ev = np.linalg.eigvalsh(X.T @ X if X.shape[0] >= X.shape[1] else X @ X.T)
    s = [math.sqrt(max(e, 0.0)) for e in ev]
    total = sum(s)
    h = -sum(v / total * math.log(v / total) for v in s if v / total > 1e-15)
    return math.exp(h)


def top1_oracle(X: np.ndarray) -> float:
    ev = np.linalg.eigvalsh(np.cov(X, rowvar=False, ddof=1).reshape(X.shape[1], X.shape[1]))
    return float(ev.max() / ev.sum())


matrices = st.tuples(st.integers(2, 24), st.integers(1, 16), st.integers(0, 2 ** 31), st.floats(1e-3, 1e3))


@settings(max_examples=150, deadline=None)
@given(matrices)
def test_effective_rank_matches_eigen_oracle(case):
    n, d, seed, scale = case
    X = np.random.default_rng(seed).standard_normal((n, d)) * scale
    er = effective_rank(X)
    assert math.isclose(er, effective_rank_oracle(X), rel_tol=1e-6)
    assert 1.0 - 1e-9 <= er <= min(n, d) + 1e-9
    assert math.isclose(effective_rank(X * 7.5), er, rel_tol=1e-9)  # scale invariant, no centring


@settings(max_examples=150, deadline=None)
@given(matrices)
def test_top1_eigen_ratio_matches_covariance_oracle(case):
    n, d, seed, scale = case
    X = np.random.default_rng(seed).standard_normal((n, d)) * scale + 3.0 * scale  # offset: centring matters
    r = top1_eigen_ratio(X)
    assert math.isclose(r, top1_oracle(X), rel_tol=1e-7)
    assert 1.0 / min(n - 1, d) - 1e-9 <= r <= 1.0 + 1e-9


def test_diversity_extremes():
    e = np.eye(5)
    assert math.isclose(effective_rank(e), 5.0)  # equal singular values: the full rank
    rank1 = np.outer(np.arange(1, 7), [1.0, -2.0, 0.5])
    assert math.isclose(effective_rank(rank1), 1.0)
    assert math.isclose(top1_eigen_ratio(rank1), 1.0)  # the rows vary along one direction
    assert effective_rank(np.zeros((3, 4))) == 0.0
    assert math.isnan(top1_eigen_ratio(np.ones((4, 3)) * 0.1))  # no variance: undefined
    assert math.isnan(top1_eigen_ratio(np.ones((1, 3))))
    # a constant offset changes the effective rank (no centring) but not the eigen ratio (centred)
    X = np.random.default_rng(0).standard_normal((10, 4))
    assert not math.isclose(effective_rank(X + 5), effective_rank(X))
    assert math.isclose(top1_eigen_ratio(X + 5), top1_eigen_ratio(X), rel_tol=1e-9)


def test_diversity_rejects_bad_input():
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        effective_rank(np.ones(3))
    with pytest.raises(ValueError, match=r"NaN/inf in rows \[1\]"):
        top1_eigen_ratio(np.array([[1.0, 2.0], [np.nan, 0.0]]))


def test_effective_rank_dynamics():
    d = effective_rank_dynamics([1.0, 2.0, 4.0, 3.0])
    np.testing.assert_array_equal(d.first, [1.0, 2.0, -1.0])
    np.testing.assert_array_equal(d.second, [1.0, -3.0])
    mats = [np.eye(3), np.outer([1, 2], [1, 1, 1.0]), np.eye(2)]
    d = effective_rank_dynamics(mats)
    np.testing.assert_allclose(d.rank, [3.0, 1.0, 2.0])
    np.testing.assert_allclose(d.first, [-2.0, 1.0])
    np.testing.assert_allclose(d.second, [3.0])
    with pytest.raises(ValueError, match="numbers .* or of 2-D"):
        effective_rank_dynamics([np.ones(3)])


# ---------------------------------------------------------------------------------------------------- memory
def build_memory(seed: int = 0, steps: int = 4) -> ErrorMemory:
    """4 prompts x 12 rollouts per step; features near 3 centres per prompt, some outliers, some NaN."""
    rng = np.random.default_rng(seed)
    mem = ErrorMemory(MEDSConfig(use_last_n_layers=3, penalty_coef=0.3))
    centres = rng.standard_normal((4, 3, 3)) * 3
    for _ in range(steps):
        keys = np.repeat(["p0", "p1", "p2", "p3"], 12)
        pick = rng.integers(0, 3, size=48)
        feats = centres[np.arange(48) // 12, pick] + 0.01 * rng.standard_normal((48, 3))
        outlier = rng.random(48) < 0.15
        feats[outlier] = rng.standard_normal((int(outlier.sum()), 3)) * 10
        feats[rng.random(48) < 0.05] = np.nan
        correct = (pick == 0).astype(np.int64)
        correct[:12] = 0  # p0 is never right
        mem.update(list(keys), feats, correct)
    return mem


def test_memory_stats_against_loops_over_the_state():
    mem = build_memory()
    st_ = memory_stats(mem)
    state = mem.state_dict()  # an independent route to the stored labels
    ends = np.cumsum(state["lengths"])
    want = {"rows": {0: 0, 1: 0}, "clusters": {0: 0, 1: 0}, "noise": {0: 0, 1: 0}, "repeat": 0}
    sizes = {0: [], 1: []}
    for group, end, n in zip(state["groups"].tolist(), ends, state["lengths"]):
        labels = state["labels"][end - n:end].tolist()
        seen, repeats = set(), 0
        for lab in labels:  # arrival order: a row repeats when an earlier row has its (non-noise) label
            if lab >= 0 and lab in seen:
                repeats += 1
            seen.add(lab)
        clusters = {lab for lab in labels if lab >= 0}
        want["rows"][group] += len(labels)
        want["clusters"][group] += len(clusters)
        want["noise"][group] += labels.count(-1)
        sizes[group] += [labels.count(lab) for lab in clusters]
        if group == 0:
            want["repeat"] += repeats
    assert st_.num_memories(0) == 4 and st_.num_memories(1) == 3 == len(mem) - 4  # p0 is never right
    for g in (0, 1):
        assert st_.total_rows(g) == want["rows"][g]
        assert int(st_.clusters[st_.select(g)].sum()) == want["clusters"][g]
        assert math.isclose(st_.clusters_per_memory(g), want["clusters"][g] / st_.num_memories(g))
        assert math.isclose(st_.noise_share(g), want["noise"][g] / want["rows"][g])
        assert sorted(st_.cluster_sizes[g].tolist()) == sorted(sizes[g])
    assert st_.total_rows() == mem.num_rows
    assert want["repeat"] > 0 and want["noise"][0] > 0
    assert math.isclose(st_.repeated_error_rate(), want["repeat"] / want["rows"][0])


def test_memory_stats_of_empty_and_single_memories():
    st_ = memory_stats(ErrorMemory(MEDSConfig(use_last_n_layers=2)))
    assert st_.num_memories() == 0 and math.isnan(st_.repeated_error_rate()) and math.isnan(st_.noise_share())
    single = ErrorMemory(MEDSConfig(use_last_n_layers=2, cluster_method="single"))
    single.update(["a"] * 3, np.ones((3, 2)), [0, 0, 1])
    st_ = memory_stats(single)
    # count-only ablation: one cluster (label 0) per memory, every later row repeats the first
    assert st_.clusters.tolist() == [1, 1] and st_.repeated.tolist() == [1, 0]
    assert math.isclose(st_.repeated_error_rate(), 0.5)
