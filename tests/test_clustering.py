"""Backend interface, trivial problems, library backends agree, the batched k-NN vote vs a brute oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from meds_core.clustering import (
    HDBSCANParams,
    available_backends,
    cluster_batch,
    get_backend,
    knn_vote,
    resolve_backend,
    unregister_backend,
)
from meds_core.testing import brute_vote, knn_memories, registered_backend, vote_problem


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@settings(max_examples=60, deadline=None)
@given(knn_memories(), st.integers(1, 5), st.booleans())
def test_knn_vote_matches_brute_force(specs, k, discrete):
    stored, labels, queries = vote_problem(specs, discrete)  # discrete coordinates create exact distance ties
    got = knn_vote(stored, labels, queries, k)
    for S, lab, Q, g in zip(stored, labels, queries, got):
        np.testing.assert_array_equal(g, brute_vote(S, lab, Q, k))


def test_knn_vote_ties_go_to_smallest_label_and_older_rows():
    S = _unit(np.array([[1.0, 0], [0, 1.0], [1.0, 1.0], [1.0, 0]]))
    q = _unit(np.array([[1.0, 0.0]]))
    # neighbours of q: rows 0 and 3 (distance 0; row 0 is older), then row 2
    assert knn_vote([S], [np.array([5, 7, 2, 9])], [q], k=3)[0].tolist() == [2]   # 1 vote each -> smallest
    assert knn_vote([S], [np.array([5, 7, 2, 9])], [q], k=1)[0].tolist() == [5]   # the older of two equals
    assert knn_vote([S], [np.array([4, 7, 4, -1])], [q], k=3)[0].tolist() == [4]  # majority wins
    assert knn_vote([S[:1]], [np.array([3])], [q], k=3)[0].tolist() == [3]        # k = min(k, n)


def test_trivial_problems_are_noise_without_a_backend_call():
    params = HDBSCANParams(min_cluster_size=3, min_samples=1)
    out = cluster_batch([np.zeros((0, 2)), np.zeros((1, 2)), np.ones((2, 2))], params, backend="hdbscan")
    assert [o.tolist() for o in out] == [[], [-1], [-1, -1]]


def _blobs(seed, n_per=12, centers=3, d=5):
    r = np.random.default_rng(seed)
    c = r.normal(size=(centers, d)) * 10
    return np.concatenate([c[i] + r.normal(scale=0.2, size=(n_per, d)) for i in range(centers)])


@pytest.mark.parametrize("params", [HDBSCANParams(2, 1), HDBSCANParams(5, 3), HDBSCANParams(4, 2, "leaf")])
def test_sklearn_backend_agrees_with_hdbscan_library(params):
    problems = [_blobs(s) for s in range(8)]
    a = cluster_batch(problems, params, backend="hdbscan")
    b = cluster_batch(problems, params, backend="sklearn")
    for x, y in zip(a, b):
        assert adjusted_rand_score(x, y) == 1.0
    assert all(len(np.unique(x[x >= 0])) >= 3 for x in a)


def test_registry_names_and_errors():
    assert {"hdbscan", "sklearn"} <= set(available_backends())
    assert resolve_backend("auto") in available_backends()
    with pytest.raises(ValueError, match=r"unknown clustering backend 'nope'; use 'auto' or one of"):
        get_backend("nope")


def test_a_registered_test_backend_is_gone_after_its_block():
    with registered_backend("test-only-hdbscan", lambda: get_backend("hdbscan")) as name:
        assert name in available_backends()
        assert [x.tolist() for x in cluster_batch([_blobs(0)], HDBSCANParams(2, 1), name)] == \
            [x.tolist() for x in cluster_batch([_blobs(0)], HDBSCANParams(2, 1), "hdbscan")]
    assert "test-only-hdbscan" not in available_backends()
    with pytest.raises(ValueError, match=r"clustering backend 'test-only-hdbscan' is not registered"):
        unregister_backend("test-only-hdbscan")


def test_hdbscan_params_are_validated_once_when_built():
    import dataclasses

    assert HDBSCANParams() == HDBSCANParams(5, 5, "eom", False, 0.0)  # the hdbscan library's defaults
    p = HDBSCANParams(np.int64(3), np.int64(4), "leaf", np.bool_(True), 1)
    assert (p.min_cluster_size, p.min_samples, p.allow_single_cluster, p.cluster_selection_epsilon) == (3, 4, True, 1.0)
    assert type(p.min_cluster_size) is int and type(p.cluster_selection_epsilon) is float and p.leaf
    assert (p.min_rows, p.engine_min_rows) == (5, 3)  # the step needs min_samples + 1 rows, the engine clips
    assert p.kwargs() == dict(min_cluster_size=3, min_samples=4, cluster_selection_method="leaf",
                              allow_single_cluster=True, cluster_selection_epsilon=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.min_cluster_size = 1
    for kwargs, match in [(dict(min_cluster_size=1), r"min_cluster_size=1 must be an integer >= 2"),
                          (dict(min_cluster_size=2.0), r"min_cluster_size=2.0 must be an integer >= 2"),
                          (dict(min_samples=0), r"min_samples=0 must be an integer >= 1 .*or None"),
                          (dict(cluster_selection_method="x"), r"cluster_selection_method='x'; use 'eom' or 'leaf'"),
                          (dict(allow_single_cluster=1), r"allow_single_cluster=1 must be True or False"),
                          (dict(cluster_selection_epsilon=-1.0), r"cluster_selection_epsilon=-1.0 must be a finite")]:
        with pytest.raises(ValueError, match=match):
            HDBSCANParams(**kwargs)
    # the step's rule: fewer than min_rows rows is noise without a backend call, also where the engine would cluster
    out = cluster_batch([_blobs(0)[:4], _blobs(0)[:5]], HDBSCANParams(2, 4), backend="hdbscan")
    assert out[0].tolist() == [-1] * 4 and len(out[1]) == 5


@pytest.mark.parametrize("n", [500, 512, 1008, 1024, 1030])
def test_numba_vote_with_padded_scratch_rows_matches_brute_force(n):
    """Near multiples of 512 stored rows the numba vote pads its scratch rows (cache sets); votes and supports
    stay those of the brute-force rule, with ties from discrete coordinates."""
    pytest.importorskip("numba")
    from meds_core.clustering._vote import knn_vote_rows_numba

    rng = np.random.default_rng(n)
    S = _unit(np.c_[rng.integers(-2, 3, size=(n, 4)), np.ones(n)])  # no zero rows; many exact ties
    lab = rng.integers(-1, 6, size=n)
    Q = _unit(np.c_[rng.integers(-2, 3, size=(9, 4)), np.ones(9)])
    got, support = knn_vote_rows_numba(S, np.array([0]), np.array([n]), lab, Q, np.array([9]), 3)
    want = brute_vote(S, lab, Q, 3)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(support, [(lab == w).sum() for w in want])
