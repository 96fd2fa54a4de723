"""The numba HDBSCAN* engine and k-NN vote against their oracles: the hdbscan library and the numpy vote.

Oracle: ``hdbscan.HDBSCAN(algorithm='generic', metric='minkowski', p=2)``, the library's dense Prim's on the exact
distance sqrt(sum (x - y)^2). (Its default metric 'euclidean' takes scikit-learn's |x|^2 + |y|^2 - 2 x.y form, whose
rounding noise moves near-tied mutual-reachability weights; the partitions agree all the same where nothing is tied.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import hdbscan
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from meds_core import ErrorMemory, MEDSConfig
from meds_core.clustering import (
    HDBSCANParams,
    _registry,
    backend_for,
    cluster_batch,
    get_backend,
    hdbscan_batch,
    mst_edges,
    resolve_backend,
)
from meds_core.testing import blob_stream, brute_vote, knn_memories, registered_backend, vote_problem

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="session", autouse=True)
def compiled():
    """Compile (or load from the disk cache) every kernel once for the whole file."""
    X = np.random.default_rng(0).normal(size=(12, 3))
    hdbscan_batch([X], 3, 2)
    mst_edges([X], 2)
    backend_for("numba").vote([X], [np.zeros(12, np.int64)], X[:2], np.array([2]), 3)


def blobs(seed, n, d, modes=None):
    """n rows [n, d] float64 around 1-4 gaussian modes of different spreads (continuous: no exact ties)."""
    r = np.random.default_rng(seed)
    k = modes or int(r.integers(1, 5))
    centers = r.normal(size=(k, d)) * 4
    mode = r.integers(0, k, size=n)
    return centers[mode] + r.normal(size=(n, d)) * r.uniform(0.3, 1.5, size=k)[mode, None]


def library(X, mcs, ms, method="eom", single=False, eps=0.0, **kw):
    model = hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=ms, cluster_selection_method=method,
                            allow_single_cluster=single, cluster_selection_epsilon=eps, algorithm="generic",
                            metric="minkowski", p=2, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(X)


SHAPES = [(n, d) for n in (6, 17, 40, 120, 300) for d in (1, 3, 14)]
PROBLEMS = [blobs(1000 + i, n, d) for i, (n, d) in enumerate(SHAPES * 3)]


@pytest.mark.parametrize("ms", [1, 2, 5])
def test_mst_is_the_librarys_edge_for_edge(ms):
    for X, (src, dst, dist) in zip(PROBLEMS, mst_edges(PROBLEMS, ms)):
        ref = library(X, 2, ms, gen_min_span_tree=True)._min_spanning_tree
        np.testing.assert_allclose(dist.sum(), ref[:, 2].sum(), rtol=1e-12)  # bit-equal on x86-64
        np.testing.assert_array_equal(src, ref[:, 0])
        np.testing.assert_array_equal(dst, ref[:, 1])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 120), d=st.sampled_from([1, 3, 14]),
       decimals=st.sampled_from([0, 1, 8]), dup=st.booleans())
def test_min_samples_1_prim_without_core_distances_is_the_same_tree(seed, n, d, decimals, dup):
    """With one neighbour the engine's Prim's runs on zero core distances (the mutual reachability is the distance
    itself): the same edges, order and weights, bit for bit, as Prim's on the 1-NN core distances, here with exact
    ties (rounded coordinates) and duplicate rows."""
    from meds_core.clustering._core_distances import core_distances_sq
    from meds_core.clustering._mst import prim_mst
    from meds_core.clustering._pipeline import _transposed, mst_one

    rng = np.random.default_rng(seed)
    X = np.round(rng.normal(size=(n, d)), decimals)
    if dup and n > 2:
        X[rng.integers(0, n, n // 3)] = X[rng.integers(0, n)]
    XT = _transposed(X)
    want = prim_mst(XT, core_distances_sq(XT, 1))
    for got, ref in zip(mst_one(X, 1), want):
        np.testing.assert_array_equal(got, ref)


SETTINGS = [  # (min_cluster_size, cluster_selection_method, allow_single_cluster, epsilon)
    (2, "eom", False, 0.0), (5, "eom", False, 0.0), (3, "leaf", False, 0.0), (4, "eom", True, 0.0),
    (3, "leaf", True, 0.0), (5, "eom", False, 0.8), (2, "leaf", False, 1.5), (3, "eom", True, 2.0),
]


@pytest.mark.parametrize("mcs,method,single,eps", SETTINGS)
def test_labels_equal_the_library_on_tie_free_data(mcs, method, single, eps):
    # min_samples=1: a mutual-reachability weight equals a core distance only on the nearest-neighbour edge itself,
    # so continuous data has no tied weights and the partition is unique.
    got = hdbscan_batch(PROBLEMS, mcs, 1, method, single, eps)
    for X, labels in zip(PROBLEMS, got):
        ref = library(X, mcs, 1, method, single, eps).labels_ if len(X) >= mcs else np.full(len(X), -1)
        np.testing.assert_array_equal(labels, ref)


def test_min_samples_5_equals_the_library_on_continuous_features():
    problems = [blobs(s, n, 14) for s in range(12) for n in (30, 100, 250)]
    for X, labels in zip(problems, hdbscan_batch(problems, 5, 5)):
        assert adjusted_rand_score(library(X, 5, 5).labels_, labels) == 1.0


@pytest.mark.parametrize("mcs,method,single,eps", SETTINGS)
def test_tree_stage_is_the_librarys_given_the_same_merge_order(mcs, method, single, eps):
    """Tied merges aside, everything after the MST is hdbscan's own code path, bit for bit: feed our MST,
    stably sorted, through the library's single linkage + condensed tree + selection + labels."""
    from hdbscan._hdbscan_linkage import label
    from hdbscan.hdbscan_ import _tree_to_labels

    r = np.random.default_rng(mcs)
    problems = [np.round(X, 1) for X in PROBLEMS[::2]]  # rounded: many tied weights
    problems += [np.repeat(blobs(s, 8, 2), 3, axis=0) for s in range(4)]  # duplicates: lambda = inf
    problems += [np.ones((9, 3)), np.r_[np.zeros((6, 2)), np.ones((6, 2))], r.integers(0, 3, size=(40, 2)) * 1.0]
    for ms in (1, 3):
        got = hdbscan_batch(problems, mcs, ms, method, single, eps)
        checked = 0
        for X, labels, (src, dst, dist) in zip(problems, got, mst_edges(problems, ms)):
            if len(X) < mcs:
                continue
            merges = np.c_[src, dst, dist][np.argsort(dist, kind="stable")]
            ref = _tree_to_labels(X, label(merges), mcs, method, single, False, eps)[0]
            np.testing.assert_array_equal(labels, ref)
            checked += 1
        assert checked >= len(problems) - 2, (checked, len(problems))  # at most the two 9- and 12-row ones skipped


def test_mean_ari_where_ties_exist():
    # Coordinates rounded to 0.1: 15-40 % of the MST weights are tied. The library orders tied merges by numpy's
    # unstable sort, the engine by MST order; both are valid single-linkage trees, and where tied merges decide a
    # split the partitions differ (as the library's own do under a row permutation).
    r = np.random.default_rng(5)
    problems = [np.round(r.normal(size=(n, 4)) + 6 * r.integers(0, 3, size=(n, 1)), 1) for n in (16, 64, 256)
                for _ in range(12)]
    for mcs, ms, bound in ((2, 1, 0.99), (3, 2, 0.99), (5, 5, 0.98)):
        got = hdbscan_batch(problems, mcs, ms)
        ari = [adjusted_rand_score(library(X, mcs, ms).labels_, g) for X, g in zip(problems, got)]
        assert np.mean(ari) >= bound, (mcs, ms, np.mean(ari))


def test_edge_cases():
    r = np.random.default_rng(0)
    out = hdbscan_batch([np.empty((0, 3)), np.ones((1, 3)), r.normal(size=(4, 3)), r.normal(size=(5, 3))], 5, 1)
    assert [o.tolist() for o in out[:3]] == [[], [-1], [-1] * 4]  # n < min_cluster_size: noise
    assert out[3].dtype == np.int64 and out[3].shape == (5,)
    # n < min_cluster_size stays noise also with allow_single_cluster (the library would call it one cluster)
    assert hdbscan_batch([r.normal(size=(4, 3))], 5, 1, allow_single_cluster=True)[0].tolist() == [-1] * 4
    same = np.ones((10, 3))  # all rows identical: every distance 0, every lambda inf
    assert hdbscan_batch([same], 3, 2)[0].tolist() == library(same, 3, 2).labels_.tolist() == [-1] * 10
    assert hdbscan_batch([same], 3, 2, allow_single_cluster=True)[0].tolist() == [0] * 10
    two = np.r_[np.zeros((6, 2)), np.ones((6, 2))]  # two stacks of duplicates
    assert hdbscan_batch([two], 2, 1)[0].tolist() == library(two, 2, 1).labels_.tolist() == [0] * 6 + [1] * 6
    dup = np.repeat(blobs(3, 20, 4, modes=3), 3, axis=0)
    for ms in (1, 2, 5):
        np.testing.assert_array_equal(hdbscan_batch([dup], 4, ms)[0], library(dup, 4, ms).labels_)
    line = blobs(4, 50, 1, modes=3)  # d = 1
    np.testing.assert_array_equal(hdbscan_batch([line], 5, 1)[0], library(line, 5, 1).labels_)
    small = r.normal(size=(6, 2))  # min_samples >= n: clipped to n - 1, as the library does
    np.testing.assert_array_equal(hdbscan_batch([small], 2, 10)[0], library(small, 2, 10).labels_)


def test_row_permutation_only_relabels():
    problems = [blobs(s, n, 14) for s in range(8) for n in (40, 200)]
    base = hdbscan_batch(problems, 3, 1)
    r = np.random.default_rng(1)
    perms = [r.permutation(len(X)) for X in problems]
    moved = hdbscan_batch([X[p] for X, p in zip(problems, perms)], 3, 1)
    for b, m, p in zip(base, moved, perms):
        assert adjusted_rand_score(b[p], m) == 1.0


def test_eom_and_leaf_pick_different_levels():
    # two far groups, each made of three close sub-blobs: eom keeps the two groups, leaf the six sub-blobs
    r = np.random.default_rng(2)
    sub = np.array([[0, 0], [1.5, 0], [0, 1.5]])
    X = np.concatenate([g + s + r.normal(scale=0.3, size=(15, 2)) for g in ([0, 0], [60, 60]) for s in sub])
    eom, leaf = hdbscan_batch([X], 10, 1)[0], hdbscan_batch([X], 10, 1, "leaf")[0]
    assert len(set(eom) - {-1}) == 2 and len(set(leaf) - {-1}) == 6
    np.testing.assert_array_equal(eom, library(X, 10, 1).labels_)
    np.testing.assert_array_equal(leaf, library(X, 10, 1, "leaf").labels_)
    wide = hdbscan_batch([X], 10, 1, "leaf", cluster_selection_epsilon=10.0)[0]  # epsilon merges the sub-blobs
    assert len(set(wide) - {-1}) == 2
    np.testing.assert_array_equal(wide, library(X, 10, 1, "leaf", eps=10.0).labels_)


def test_allow_single_cluster():
    X = np.random.default_rng(3).normal(size=(60, 3))  # one gaussian mode
    plain, single = hdbscan_batch([X], 5, 1)[0], hdbscan_batch([X], 5, 1, allow_single_cluster=True)[0]
    assert len(set(plain) - {-1}) == 2 and set(single) == {-1, 0}  # the root wins once it may be selected
    np.testing.assert_array_equal(plain, library(X, 5, 1).labels_)
    np.testing.assert_array_equal(single, library(X, 5, 1, single=True).labels_)
    wide = hdbscan_batch([X], 5, 1, allow_single_cluster=True, cluster_selection_epsilon=1.0)[0]
    assert (wide == 0).sum() > (single == 0).sum()  # with epsilon the root keeps every point of lambda >= 1 / eps
    np.testing.assert_array_equal(wide, library(X, 5, 1, single=True, eps=1.0).labels_)


def test_deterministic_across_runs_threads_and_packing():
    import numba

    problems = [np.round(blobs(s, n, 5), 1) for s in range(10) for n in (16, 90, 300)]
    first = hdbscan_batch(problems, 2, 1)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = hdbscan_batch(problems, 2, 1)
    finally:
        numba.set_num_threads(threads)
    offsets = np.cumsum([0] + [len(X) for X in problems])
    packed = hdbscan_batch(np.concatenate(problems), 2, 1, offsets=offsets)
    for a, b, c, d in zip(first, hdbscan_batch(problems, 2, 1), one, packed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(a, d)
    mixed = hdbscan_batch([problems[0], problems[1][:, :3]], 2, 1)  # different d: one call per d, same results
    np.testing.assert_array_equal(mixed[0], first[0])
    np.testing.assert_array_equal(mixed[1], hdbscan_batch([problems[1][:, :3]], 2, 1)[0])


@pytest.mark.parametrize("kwargs,match", [
    ({"min_cluster_size": 1}, r"min_cluster_size=1 must be an integer >= 2"),
    ({"min_samples": 0}, r"min_samples=0 must be an integer >= 1"),
    ({"cluster_selection_method": "max"}, r"cluster_selection_method='max'; use 'eom' or 'leaf'"),
    ({"cluster_selection_epsilon": -1.0}, r"cluster_selection_epsilon=-1.0 must be a finite number >= 0"),
    ({"allow_single_cluster": 1}, r"allow_single_cluster=1 must be True or False"),
    ({"backend": "cuda"}, r"hdbscan_batch backend='cuda'; use 'auto' or 'numba'"),
])
def test_errors_name_the_value_and_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hdbscan_batch([np.zeros((3, 2))], **kwargs)


def test_input_errors():
    with pytest.raises(ValueError, match=r"problem 1 row 2 is not finite; drop or impute"):
        hdbscan_batch([np.zeros((3, 2)), np.array([[0, 0], [1, 1], [np.nan, 0.0]])])
    with pytest.raises(ValueError, match=r"problem 0 has shape \(3,\); each problem must be an array of shape"):
        hdbscan_batch([np.zeros(3)])
    with pytest.raises(ValueError, match=r"offsets must be non-decreasing, start at 0 and end at N=4"):
        hdbscan_batch(np.zeros((4, 2)), offsets=[0, 3])


# ----------------------------------------------------------------------------------------------------- k-NN vote
@settings(max_examples=60, deadline=None)
@given(knn_memories(min_queries=0), st.integers(1, 5), st.booleans())
def test_numba_vote_equals_the_numpy_vote(specs, k, discrete):
    stored, labels, queries = vote_problem(specs, discrete)  # discrete coordinates create exact distance ties
    counts = np.array([len(q) for q in queries])
    Q = np.concatenate(queries)
    want = backend_for("hdbscan", load=False).vote(stored, labels, Q, counts, k)  # numpy
    got = backend_for("numba").vote(stored, labels, Q, counts, k)  # the numba kernel
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    owner = np.repeat(np.arange(len(stored)), counts)
    np.testing.assert_array_equal(got[1], [(labels[o] == v).sum() for o, v in zip(owner, got[0])])
    for S, lab, q, g in zip(stored, labels, queries, np.split(got[0], np.cumsum(counts)[:-1])):
        np.testing.assert_array_equal(g, brute_vote(S, lab, q, k))


def test_numba_vote_ties():
    S = np.array([[1.0, 0], [0, 1.0], [1.0, 1.0], [1.0, 0]])
    S /= np.linalg.norm(S, axis=1, keepdims=True)
    q = np.array([[1.0, 0.0]])

    def vote(labels, k, rows=S):
        return backend_for("numba").vote([rows], [np.array(labels)], q, np.array([1]), k)[0].tolist()

    assert vote([5, 7, 2, 9], 3) == [2]  # neighbours rows 0, 3 (equal: older first), 2: one vote each -> smallest
    assert vote([5, 7, 2, 9], 1) == [5]  # the older of two equal distances
    assert vote([4, 7, 4, -1], 3) == [4]  # majority
    assert vote([3], 3, S[:1]) == [3]  # k = min(k, n)


# ------------------------------------------------------------------------------------------ registry and memory
def test_auto_is_numba_and_agrees_with_the_reference_backend():
    assert resolve_backend("auto") == "numba"
    params = HDBSCANParams(3, 1)
    problems = [blobs(s, 60, 4, modes=3) for s in range(6)]
    ours, theirs = cluster_batch(problems, params, "auto"), cluster_batch(problems, params, "hdbscan")
    assert np.mean([adjusted_rand_score(a, b) for a, b in zip(ours, theirs)]) == 1.0


def test_auto_falls_back_to_hdbscan_with_one_warning_without_numba(monkeypatch):
    monkeypatch.setattr(_registry, "_AUTO", [])
    monkeypatch.setattr(_registry.importlib.util, "find_spec", lambda name: None)
    with pytest.warns(RuntimeWarning, match=r"numba is not installed: clustering falls back to backend='hdbscan'"):
        assert resolve_backend("auto") == "hdbscan"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided once: no second warning
        assert resolve_backend("auto") == "hdbscan"


def test_cuml_backend_names_the_extra_when_missing():
    pytest.importorskip("numpy")
    try:
        import cuml  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'meds_core\[cuml\]'"):
            get_backend("cuml")
    else:  # pragma: no cover - only on a machine with RAPIDS
        pytest.skip("cuML is installed")


def _numba_clustering_numpy_vote():
    real = get_backend("numba")
    return lambda problems, params: real(problems, params)


@pytest.fixture
def numba_numpy_vote():
    with registered_backend("numba-numpy-vote", _numba_clustering_numpy_vote) as name:
        yield name


def test_memory_with_numba_backend_matches_the_numpy_vote(numba_numpy_vote):
    config = dict(use_last_n_layers=6, min_cluster_size=3, min_samples=2, max_rows_per_memory=40)
    fast = ErrorMemory(MEDSConfig(backend="numba", **config))
    oracle = ErrorMemory(MEDSConfig(backend=numba_numpy_vote, **config))  # same clustering, numpy k-NN vote
    assert ErrorMemory(MEDSConfig(use_last_n_layers=6))._backend == "numba"  # the default on CPU
    seen = 0
    for keys, feats, correct in blob_stream(11, steps=7):
        a, b = fast.update(keys, feats, correct), oracle.update(keys, feats, correct)
        np.testing.assert_array_equal(a.cluster_size, b.cluster_size)
        np.testing.assert_array_equal(a.label, b.label)
        assert a.stats["backend_calls"] == 1
        seen += int((a.cluster_size > 1).sum())
    assert seen > 50


def test_import_does_not_import_numba_and_cache_switch():
    code = "import sys, meds_core, meds_core.clustering; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    code = "import meds_core.clustering._jit as j; print(j.CACHE)"
    env = dict(os.environ, MEDS_NUMBA_CACHE="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 300), decimals=st.sampled_from([0, 1, 8]))
def test_merge_tree_is_the_librarys_node_for_node(seed, n, decimals):
    """The single-linkage merge tree (which node merges with which, at what distance, how large) against the hdbscan
    library's own union-find on the same sorted tree: random trees, tied weights included (a chain of equal merges
    exercises the union-find's ranks and path halving)."""
    from hdbscan._hdbscan_linkage import label

    from meds_core.clustering._condensed_tree import single_linkage

    rng = np.random.default_rng(seed)
    parent = np.array([int(rng.integers(0, i)) for i in range(1, n)], dtype=np.int64)
    src, dst = np.arange(1, n, dtype=np.int64), parent
    flip = rng.random(n - 1) < 0.5
    src, dst = np.where(flip, dst, src), np.where(flip, src, dst)
    w_sq = np.round(rng.random(n - 1), decimals) ** 2
    left, right, dist, size = single_linkage(src, dst, w_sq)
    order = np.argsort(np.sqrt(w_sq), kind="mergesort")
    ref = label(np.c_[src[order], dst[order], np.sqrt(w_sq)[order]].astype(np.float64))
    np.testing.assert_array_equal(left, ref[:, 0].astype(np.int64))
    np.testing.assert_array_equal(right, ref[:, 1].astype(np.int64))
    np.testing.assert_array_equal(dist, ref[:, 2])
    np.testing.assert_array_equal(size, ref[:, 3].astype(np.int64))


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([0, 1, 7, 255, 256, 257, 700, 3000]),
       pool=st.sampled_from(["normal", "rounded", "signed zeros and extremes", "positive weights"]))
def test_stable_argsort_equals_numpy_stable_argsort(seed, n, pool):
    """The engine's argsort (radix from 256 values) gives numpy's stable permutation exactly: equal values keep their
    input order, -0.0 and +0.0 are equal, negatives, infinities and subnormals order as values."""
    from meds_core.clustering._sort import stable_argsort

    rng = np.random.default_rng(seed)
    if pool == "normal":
        x = rng.normal(size=n) * 10.0 ** rng.integers(-5, 5)
    elif pool == "rounded":
        x = np.round(rng.normal(size=n), 1)
    elif pool == "signed zeros and extremes":
        x = rng.choice(np.array([0.0, -0.0, 5e-324, -5e-324, 1.0, -1.0, np.inf, -np.inf, 1e308, -2.5e-310]), size=n)
    else:
        x = np.round(rng.random(n) ** 2, 6)  # squared weights: non-negative, ties
    np.testing.assert_array_equal(stable_argsort(x), np.argsort(x, kind="stable"))
    one_off = np.ones(300)  # a single value that differs in the lowest digit only: that pass must not be skipped
    one_off[min(seed % 300, 298)] = np.nextafter(1.0, 2.0)
    np.testing.assert_array_equal(stable_argsort(one_off), np.argsort(one_off, kind="stable"))
