"""Incremental HDBSCAN (the MST for min_samples = 1, the core distances for min_samples > 1): every step
bit-identical to full recomputation, through ties, duplicates, eviction, fallbacks and save/load."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meds_core import ErrorMemory, MEDSConfig
from meds_core.clustering import hdbscan_batch, hdbscan_incremental, mst_edges

pytest.importorskip("numba")

@pytest.fixture(autouse=True, scope="module")
def _reconnect_always():
    """The tests below drop rows from small memories to reach the FIFO reconnect quickly; below about 200 rows the
    engine recomputes such drops in full instead (measured cheaper there), so the rule is switched off here and
    tested on its own in ``test_small_caps_recompute_drops_in_full_and_large_caps_reconnect``."""
    from meds_core.clustering import _incremental

    saved = _incremental.RECONNECT_MIN_ROWS, _incremental.RECONNECT_ROWS_PER_DROP
    _incremental.RECONNECT_MIN_ROWS = _incremental.RECONNECT_ROWS_PER_DROP = 0
    yield
    _incremental.RECONNECT_MIN_ROWS, _incremental.RECONNECT_ROWS_PER_DROP = saved


PARAMS = [dict(min_cluster_size=2, min_samples=1), dict(min_cluster_size=5, min_samples=5),
          dict(min_cluster_size=3, min_samples=1, cluster_selection_method="leaf"),
          dict(min_cluster_size=2, min_samples=1, cluster_selection_epsilon=0.3),
          dict(min_cluster_size=4, min_samples=1, allow_single_cluster=True)]


def _stream(seed: int, n: int, d: int, decimals: int, dup: float, jitter: float = 0.0) -> np.ndarray:
    """Rows in three offset blobs, rounded (ties); a share ``dup`` are copies of others, moved by ``jitter`` (near
    duplicates: distances far below the rows' scale)."""
    rng = np.random.default_rng(seed)
    X = np.round(rng.normal(size=(n, d)) + rng.integers(0, 3, size=(n, 1)), decimals)
    copy = rng.random(n) < dup
    X[copy] = X[rng.integers(0, n, size=int(copy.sum()))] + jitter * rng.normal(size=(int(copy.sum()), d))
    return X


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), p=st.sampled_from(range(len(PARAMS))), decimals=st.sampled_from([1, 2, 8]),
       dup=st.sampled_from([0.0, 0.1, 0.3]), m=st.integers(1, 9), drop_every=st.sampled_from([0, 3]),
       jitter=st.sampled_from([0.0, 1e-9]))
def test_stream_equals_full_recomputation_every_step(seed, p, decimals, dup, m, drop_every, jitter):
    from meds_core.clustering._core_distances import core_distances_sq

    params = PARAMS[p]
    ms = params["min_samples"]
    X = _stream(seed, 70, 3, decimals, dup, jitter)
    lo, hi, n_old = 0, 0, 0
    state = np.empty((3, 0)) if ms == 1 else \
        (np.empty((ms, 0)), np.empty((ms, 0), np.int32))
    for step in range(1, 12):
        hi = min(hi + m, len(X))
        gone = min(drop_every if drop_every and step % 2 == 0 else 0, max(n_old, 0))  # FIFO: rows leave the front
        lo += gone
        rows = X[lo:hi]
        (got,), (new_state,) = hdbscan_incremental([rows], [n_old], [state], drop=[gone], **params)
        (want,) = hdbscan_batch([rows], **params)
        np.testing.assert_array_equal(got, want, err_msg=f"step {step}")
        if new_state is not None and ms > 1:  # kept lists: the full engine's core distances, bit for bit
            assert ms > 1 and new_state[0].shape == new_state[1].shape == (ms, len(rows))
            if len(rows) >= 2:
                k = min(ms, len(rows) - 1)
                np.testing.assert_array_equal(new_state[0][k - 1], core_distances_sq(np.ascontiguousarray(rows.T), k))
                listed = new_state[1][:k]  # the rows listed are other rows, at the listed distances
                assert ((listed >= 0) & (listed != np.arange(len(rows)))).all()
                np.testing.assert_allclose(((rows[listed] - rows[None]) ** 2).sum(-1), new_state[0][:k], rtol=1e-12)
        elif new_state is not None:  # a kept MST is the full engine's MST, edge for edge, sorted by weight
            (src, dst, dist), = mst_edges([rows], 1)
            assert (np.diff(new_state[2]) >= 0).all()
            want_edges = sorted(zip(np.minimum(src, dst).tolist(), np.maximum(src, dst).tolist(), (dist ** 2).tolist()))
            got_edges = sorted(zip(np.minimum(new_state[0], new_state[1]).tolist(),
                                   np.maximum(new_state[0], new_state[1]).tolist(), new_state[2].tolist()))
            assert [e[:2] for e in got_edges] == [e[:2] for e in want_edges]
            np.testing.assert_allclose([e[2] for e in got_edges], [e[2] for e in want_edges], rtol=1e-12)
        state, n_old = new_state, (len(rows) if new_state is not None else -1)


@pytest.mark.parametrize("params", [PARAMS[0], PARAMS[2], PARAMS[3]])
def test_stream_equals_hdbscan_library_on_tie_free_data(params):
    """The library as oracle (dense Prim's, ``algorithm='generic'``), every step of a growing, then sliding, stream."""
    import warnings

    hdbscan = pytest.importorskip("hdbscan")
    X = _stream(7, 150, 4, 12, 0.0)
    state, n_old, lo, incremental = np.empty((3, 0)), 0, 0, 0
    for hi in range(6, 151, 6):
        gone = max(hi - 72 - lo, 0)
        lo += gone
        (got,), (state,) = hdbscan_incremental([X[lo:hi]], [n_old], [state], drop=[gone], **params)
        incremental += state is not None
        model = hdbscan.HDBSCAN(algorithm="generic", metric="minkowski", p=2, **params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.testing.assert_array_equal(got, model.fit(X[lo:hi]).labels_, err_msg=f"rows {lo}:{hi}")
        n_old = hi - lo
    assert incremental == 25, "tie-free rows keep their MST every step"


def test_incremental_path_is_taken_on_tie_free_data_and_not_on_ties():
    X = _stream(0, 200, 4, 12, 0.0)
    state, n_old = np.empty((3, 0)), 0
    for hi in range(10, 201, 10):
        (got,), (state,) = hdbscan_incremental([X[:hi]], [n_old], [state], 2)
        assert state is not None, "tie-free rows must keep a unique MST"
        np.testing.assert_array_equal(got, hdbscan_batch([X[:hi]], 2, 1)[0])
        n_old = hi
    three = np.vstack([X[:20], X[:1], X[:1]])  # a row three times: equal zero edges, more than one MST
    (got,), (st_,) = hdbscan_incremental([three], [0], [np.empty((3, 0))], 2)
    assert st_ is None
    np.testing.assert_array_equal(got, hdbscan_batch([three], 2, 1)[0])
    kept = 0  # a sliding window (FIFO at a cap of 60 rows) keeps the MST through the drops
    state, n_old, lo = np.empty((3, 0)), 0, 0
    for hi in range(8, 201, 8):
        gone = max(hi - 60 - lo, 0)
        lo += gone
        (got,), (state,) = hdbscan_incremental([X[lo:hi]], [n_old], [state], 2, drop=[gone])
        np.testing.assert_array_equal(got, hdbscan_batch([X[lo:hi]], 2, 1)[0])
        kept += gone > 0 and state is not None
        n_old = hi - lo
    assert kept >= 15
    with pytest.raises(ValueError, match="does not match"):
        hdbscan_incremental([X[:10]], [12], [state], 2)


@pytest.mark.parametrize("min_cluster_size,min_samples", [(2, 1), (5, 5), (2, 5)])
def test_error_memory_incremental_equals_full_with_eviction_and_save_load(tmp_path, min_cluster_size, min_samples,
                                                                         monkeypatch):
    """(2, 5): the memory step leaves fewer than min_samples + 1 rows all noise, where the engine would cluster."""
    import meds_core.step.memory

    monkeypatch.setattr(meds_core.step.memory, "_INCREMENTAL_FROM", 4)  # rows <= 4: no state, rebuilt later
    rng = np.random.default_rng(min_samples)
    cfg = MEDSConfig(use_last_n_layers=6, backend="numba", min_cluster_size=min_cluster_size,
                     min_samples=min_samples, max_rows_per_memory=12, max_total_rows=150)
    inc, full = ErrorMemory(cfg), ErrorMemory(cfg)
    inc._incremental, full._incremental = True, False
    centers = rng.normal(size=(6, 6))
    kept = 0
    for step in range(16):
        keys = rng.integers(0, 8, size=24)
        feats = (centers[rng.integers(0, 6, size=24)] + 0.1 * rng.normal(size=(24, 6))).astype(np.float32)
        if step % 5 == 2:
            feats[3] = feats[4] = feats[5]  # duplicate rows
        correct = rng.integers(0, 2, size=24)
        a, b = inc.update(keys, feats, correct), full.update(keys, feats, correct)
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(a.cluster_size, b.cluster_size)
        assert inc.keys() == full.keys()
        for mk in full.keys():
            np.testing.assert_array_equal(inc.labels(*mk), full.labels(*mk), err_msg=f"step {step} {mk}")
        kept += sum(s.state is not None for s in inc._slots.values())
        if step == 7:  # the file carries no state: the loaded memory rebuilds it on its next touch
            inc.save(str(tmp_path / "m.bin"))
            inc = ErrorMemory.load(str(tmp_path / "m.bin"))
            inc._incremental = True
            assert all(s.state is None for s in inc._slots.values())
    assert kept > 0
    assert sum(s.state is not None and s.n == 12 for s in inc._slots.values()) > 0, "states must survive the cap"


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40), decimals=st.sampled_from([0, 1, 8]),
       dup=st.sampled_from([0.0, 0.2]))
def test_fast_uniqueness_check_equals_tree_walk(seed, n, decimals, dup):
    """The merge-tree-order uniqueness check (used after every full recomputation) against the tree-walk oracle."""
    from meds_core.clustering._incremental import is_unique_mst, is_unique_mst_sorted
    from meds_core.clustering._pipeline import mst_one

    X = _stream(seed, n, 2, decimals, dup)
    if n < 2:
        return
    src, dst, w = mst_one(X, 1)
    assert is_unique_mst_sorted(X, src, dst, w) == is_unique_mst(X, src, dst, w)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.sampled_from([1, 3, 8, 14, 33]),
       sizes=st.lists(st.integers(0, 300), min_size=1, max_size=8), scale=st.sampled_from([1e-6, 1.0, 1e6]))
def test_unit_rows_of_all_memories_at_once_equal_per_memory_calls(seed, d, sizes, scale):
    """ErrorMemory normalises every touched memory's rows in one call; the kept MSTs assume each row's unit vector is
    the same bits every step, whatever else is normalised with it."""
    from meds_core.step.memory import _unit_rows

    rng = np.random.default_rng(seed)
    parts = [(rng.normal(size=(s, d)) * scale).astype(np.float32) for s in sizes]
    parts[0][:1] = 0.0  # a zero row stays zero
    whole = _unit_rows(np.concatenate(parts))
    np.testing.assert_array_equal(whole.view(np.int64), np.concatenate([_unit_rows(p) for p in parts]).view(np.int64))


def test_error_memory_keeps_an_mst_from_a_memory_first_rows():
    """A new memory's MST grows from the empty one (no full recomputation plus uniqueness check later on); labels
    stay those of full recomputation at every step."""
    rng = np.random.default_rng(3)
    cfg = MEDSConfig(use_last_n_layers=5, backend="numba", min_cluster_size=2, min_samples=1, max_rows_per_memory=40)
    inc, full = ErrorMemory(cfg), ErrorMemory(cfg)
    inc._incremental, full._incremental = True, False
    for step in range(6):
        keys = np.repeat(np.arange(3), 9)
        feats = rng.normal(size=(27, 5)).astype(np.float32)
        correct = np.zeros(27, np.int64)
        a, b = inc.update(keys, feats, correct), full.update(keys, feats, correct)
        np.testing.assert_array_equal(a.label, b.label)
        for k in range(3):
            np.testing.assert_array_equal(inc.labels(k, 0), full.labels(k, 0), err_msg=f"step {step}")
            slot = inc._slots[(k, 0)]
            assert slot.state is not None and len(slot.state[0]) == slot.n - 1, f"step {step}: no MST kept"


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 60), decimals=st.sampled_from([0, 1, 8]))
def test_leaf_order_gaps_give_the_heaviest_edge_on_every_tree_path(seed, n, decimals):
    """The new-row filter reads the heaviest tree edge between two rows as the largest gap between their positions in
    the leaf order; oracle: a walk along the tree path, for every pair (ties included)."""
    from meds_core.clustering._incremental import _leaf_order

    rng = np.random.default_rng(seed)
    parent = [int(rng.integers(0, i)) for i in range(1, n)]  # a random tree over rows 0..n-1
    w = np.round(rng.random(n - 1), decimals)
    order = np.argsort(w, kind="mergesort")
    u, v, w = np.arange(1, n)[order], np.asarray(parent, dtype=np.int64)[order], w[order]
    leaf, pos, gap = _leaf_order(n, u, v, w)
    assert sorted(leaf.tolist()) == list(range(n)) and (leaf[pos] == np.arange(n)).all()
    adj = {i: [] for i in range(n)}
    for a, b, x in zip(u.tolist(), v.tolist(), w.tolist()):
        adj[a].append((b, x))
        adj[b].append((a, x))
    for a in range(n):
        heaviest, stack = {a: 0.0}, [a]
        while stack:
            x = stack.pop()
            for y, wy in adj[x]:
                if y not in heaviest:
                    heaviest[y] = max(heaviest[x], wy)
                    stack.append(y)
        for b in range(n):
            lo, hi = sorted((pos[a], pos[b]))
            assert (gap[lo:hi].max() if hi > lo else 0.0) == heaviest[b], (a, b)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 24), decimals=st.sampled_from([0, 1, 8]),
       dup=st.sampled_from([0.0, 0.3]))
def test_new_row_tree_path_maxima_are_the_minimax_distances(seed, m, decimals, dup):
    """The new-new edges offered to Kruskal are those no heavier than the heaviest edge on their path in an MST of
    the new rows alone. That path maximum is the same in every MST: the minimax distance, the least w at which the
    two rows join through pairs of distance <= w. Oracle: Floyd-Warshall on (min, max), ties and duplicates
    included; and a pair strictly above it is never an edge of the full engine's MST of the new rows."""
    from meds_core.clustering._incremental import _tree_path_maxima

    X = _stream(seed, m, 3, decimals, dup)
    D = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    pm = _tree_path_maxima(D)
    mm = D.copy()
    np.fill_diagonal(mm, 0.0)
    for k in range(m):
        mm = np.minimum(mm, np.maximum(mm[:, k:k + 1], mm[k:k + 1, :]))
    np.testing.assert_array_equal(pm, mm)
    if m >= 2:
        (src, dst, _), = mst_edges([X], 1)
        assert (D[src, dst] <= pm[src, dst]).all()
        kept = sum(int(D[a, b] <= pm[a, b]) for a in range(m) for b in range(a))
        assert kept >= m - 1


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), kept=st.integers(1, 300), decimals=st.sampled_from([0, 1, 2, 8]),
       spread=st.sampled_from([0.02, 0.2, 1.0]))
def test_path_filter_block_skips_keep_exactly_the_walks_survivors(seed, kept, decimals, spread):
    """The new-row filter over leaf positions, whole blocks passed over in one test, against its definition: ps the
    first nearest position, then every i with row[i] <= max(row[ps], largest gap between ps and i), ps first, then to
    the right ascending, then to the left descending. Data as in use: the leaf order and gaps of the MST of clustered
    2-d rows (rounded: ties), and a new row's squared distances to them in that order; ``spread`` sets how far the
    clusters lie apart against their width, so that blocks are skipped, walked, or both."""
    from meds_core.clustering._incremental import _block_gap_maxima, _leaf_order, _path_filter
    from meds_core.clustering._pipeline import mst_one

    rng = np.random.default_rng(seed)
    centres = rng.random((int(rng.integers(1, 8)), 2)) / spread
    X = np.round(centres[rng.integers(0, len(centres), kept + 1)] + rng.normal(size=(kept + 1, 2)), decimals)
    if kept > 1:
        u, v, w = mst_one(X[:kept], 1)
        order = np.argsort(w, kind="mergesort")
        leaf, _, gap = _leaf_order(kept, u[order], v[order], w[order])
    else:
        leaf, gap = np.arange(kept), np.zeros(1)
    row = ((X[leaf] - X[kept]) ** 2).sum(axis=1)
    right, left = _block_gap_maxima(gap, kept)
    surv = np.empty(kept + 1, dtype=np.int64)
    rmin = np.empty(len(right) + 1, dtype=np.int64)
    count = _path_filter(row, kept, gap, right, left, rmin, surv)
    assert surv[:count].tolist() == _filter_survivors(row, gap)


def _filter_survivors(row, gap):
    """The new-row filter by its definition (the oracle of :func:`_path_filter`)."""
    ps = int(np.argmin(row))
    return ([ps] + [i for i in range(ps + 1, len(row)) if row[i] <= max(row[ps], gap[ps:i].max())]
            + [i for i in range(ps - 1, -1, -1) if row[i] <= max(row[ps], gap[i:ps].max())])


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("big_gap, block_rows", [
    (31, ("near", 10.0, 4.0)),  # walking right: a skipped block's first gap raises the bound for the next block
    (32, ("near", 10.0, 4.0)),
    (0, ("near", 4.0, 10.0)),  # a bound raised before a block lets its rows through although its own gaps are small
    (32, (4.0, 10.0, "near")),  # walking left: the skipped block's last gap, then its first
    (63, (4.0, 10.0, "near")),
    (94, (10.0, 4.0, "near")),
])
def test_path_filter_bound_carried_over_skipped_blocks(big_gap, block_rows, mirror):
    """Three blocks of leaf positions, one big gap (5.0) among small ones (0.01); distances 10.0 (left out) or 4.0
    (kept only through the big gap) per block, and the nearest position (0.0) at the outer end of the "near" block,
    whose other rows are at 10.0. The block tests must read every gap of a block and carry the bound over a block
    they pass over, walking right and left (``mirror`` reverses both arrays)."""
    from meds_core.clustering._incremental import _SKIP, _block_gap_maxima, _path_filter

    kept = 3 * _SKIP
    gap = np.full(kept - 1, 0.01)
    gap[big_gap] = 5.0
    row = np.repeat([10.0 if r == "near" else r for r in block_rows], _SKIP)
    row[0 if block_rows[0] == "near" else kept - 1] = 0.0
    if mirror:
        row, gap = row[::-1].copy(), gap[::-1].copy()
    right, left = _block_gap_maxima(gap, kept)
    surv = np.empty(kept + 1, dtype=np.int64)
    count = _path_filter(row, kept, gap, right, left, np.empty(len(right) + 1, dtype=np.int64), surv)
    want = _filter_survivors(row, gap)
    assert len(want) > _SKIP and surv[:count].tolist() == want


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.sampled_from([1, 5, 14]),
       sizes=st.lists(st.integers(0, 50), min_size=1, max_size=6), normalize=st.booleans())
def test_rows_packed_against_numpy(seed, d, sizes, normalize):
    """The step's row kernel against numpy: float64 rows (exact), or scaled to unit norm, packed block after block:
    bit for bit its documented arithmetic (squares summed in column order, one reciprocal of the square root per row,
    one product per value; zero rows stay zero), and within 1e-15 of x / norm."""
    from meds_core.clustering import rows_packed

    rng = np.random.default_rng(seed)
    parts = [rng.normal(size=(s, d)).astype(np.float32) for s in sizes]
    parts[0][:1] = 0.0
    got, offsets = rows_packed(parts, d, normalize)
    assert offsets.tolist() == np.concatenate([[0], np.cumsum(sizes)]).tolist()
    x = np.concatenate(parts).astype(np.float64)
    if not normalize:
        np.testing.assert_array_equal(got, x)
        return
    sq = np.zeros(len(x))
    for k in range(d):
        sq = sq + x[:, k] * x[:, k]
    scale = np.where(sq > 0, 1.0 / np.sqrt(np.where(sq > 0, sq, 1.0)), 1.0)[:, None]
    np.testing.assert_array_equal(got.view(np.int64), (x * scale).view(np.int64))
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(got, x / np.where(norm > 0, norm, 1.0), rtol=1e-15, atol=0)


def test_starts_skip_rows_and_give_the_labels_of_the_sliced_problems():
    X = _stream(3, 90, 4, 12, 0.0)
    offsets = np.array([0, 40, 90])
    starts = np.array([10, 55])
    empty = np.empty((3, 0))
    got, msts = hdbscan_incremental(X, [0, 0], [empty, empty], 2, offsets=offsets, starts=starts)
    want = hdbscan_batch([X[10:40], X[55:90]], 2, 1)
    for g, w_, s in zip(got, want, msts):
        np.testing.assert_array_equal(g, w_)
        assert s is not None
    with pytest.raises(ValueError, match="starts"):
        hdbscan_incremental(X, [0, 0], [empty, empty], 2, offsets=offsets, starts=np.array([41, 55]))


def test_kept_state_owns_its_edges():
    """Each memory's MST is its own arrays: a view into the step's packed output would keep every other memory's
    edges of that step alive as long as this one memory lives (unbounded RAM when memories are touched unevenly)."""
    X = _stream(3, 120, 4, 12, 0.0)
    empty = np.empty((3, 0))
    _, states = hdbscan_incremental([X[:40], X[40:80], X[80:]], [0, 0, 0], [empty] * 3, 2)
    for state in states:
        assert state is not None and state.shape == (3, 39)
        assert state.base is None and state.flags.owndata, "the state must not be a view of the step's output"


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 14), n=st.integers(1, 40), decimals=st.sampled_from([0, 1, 8]),
       pick=st.floats(0.0, 1.0))
def test_pruned_distances_keep_every_column_within_the_cutoff_bit_for_bit(seed, d, n, decimals, pick):
    """The reconnect scan's pruned distances (blocks of four features, columns above the cutoff left after each)
    against the plain ones: every column at or below the cutoff is returned, with the same bits; the cutoff is one
    of the distances, so columns equal to it (ties) are included."""
    from meds_core.clustering._core_distances import sq_dists_from, sq_dists_upto

    rng = np.random.default_rng(seed)
    XT = np.ascontiguousarray(np.round(rng.normal(size=(d, n + 1)), decimals))
    x = XT[:, 0].copy()
    lo = int(rng.integers(0, n + 1))
    want = np.empty(n + 1)
    sq_dists_from(x, XT, lo, n + 1, want)
    want = want[:n + 1 - lo]
    cutoff = float(np.sort(want)[int(pick * (len(want) - 1))]) if len(want) else 0.0
    got, idx = np.empty(n + 1), np.empty(n + 1, dtype=np.int64)
    c = sq_dists_upto(x, XT, lo, n + 1, got, idx, cutoff)
    kept = idx[:c]
    assert (np.diff(kept) > 0).all()
    np.testing.assert_array_equal(got[kept], want[kept])
    assert set(np.flatnonzero(want <= cutoff).tolist()) <= set(kept.tolist())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.sampled_from([9, 14]), decimals=st.sampled_from([1, 8]),
       dup=st.sampled_from([0.0, 0.2]), m=st.sampled_from([4, 16]), cap=st.sampled_from([40, 96]))
def test_fifo_steps_at_the_cap_equal_full_recomputation_in_many_dimensions(seed, d, decimals, dup, m, cap):
    """At the cap every step drops the m oldest rows and adds m: the reconnect (pieces bounded by the rows next to
    the dropped ones, pruned distances over several feature blocks) gives the full engine's labels and MST."""
    X = _stream(seed, cap + 6 * m, d, decimals, dup)
    from meds_core.clustering._incremental import incremental_mst

    state, n_old, lo, hi, reconnected = np.empty((3, 0)), 0, 0, 0, 0
    while hi < len(X):
        hi = min(hi + m, len(X))
        gone = max(hi - lo - cap, 0)
        lo += gone
        rows = X[lo:hi]
        (got,), (new_state,) = hdbscan_incremental([rows], [n_old], [state], drop=[gone], **PARAMS[0])
        (want,) = hdbscan_batch([rows], **PARAMS[0])
        np.testing.assert_array_equal(got, want, err_msg=f"rows {lo}:{hi}")
        if new_state is not None:
            (src, dst, dist), = mst_edges([rows], 1)
            assert sorted(zip(np.minimum(src, dst).tolist(), np.maximum(src, dst).tolist())) == sorted(
                zip(np.minimum(new_state[0], new_state[1]).tolist(), np.maximum(new_state[0], new_state[1]).tolist()))
        if n_old >= 0 and gone > 0 and decimals == 8 and dup == 0.0:  # tie-free: the reconnect itself succeeds
            u, v, w_sq, ok = incremental_mst(rows, n_old, gone, state[0].astype(np.int64), state[1].astype(np.int64),
                                             state[2])
            assert ok and (u == new_state[0]).all() and (v == new_state[1]).all() and (w_sq == new_state[2]).all()
            reconnected += 1
        state, n_old = new_state, (len(rows) if new_state is not None else -1)
    assert reconnected >= 6 or not (decimals == 8 and dup == 0.0)


@pytest.mark.parametrize("seed,d,decimals,dup,m,cap,min_samples", [(0, 14, 8, 0.0, 16, 96, 5), (1, 9, 1, 0.2, 4, 40, 5),
                                                                   (2, 14, 2, 0.3, 16, 96, 3)])
def test_neighbour_lists_at_the_cap_equal_full_recomputation(seed, d, decimals, dup, m, cap, min_samples):
    """min_samples > 1 at the cap: rows that lost a listed neighbour to the drop are recomputed, the others keep their
    lists and take the new rows' offers; core distances and labels equal the full engine's every step, and the
    recomputation is partial (some rows keep their lists)."""
    from meds_core.clustering._core_distances import core_distances_sq
    from meds_core.clustering._incremental_core import core_lists_update
    from meds_core.clustering._pipeline import _transposed

    X = _stream(seed, cap + 6 * m, d, decimals, dup)
    params = dict(min_cluster_size=min_samples, min_samples=min_samples)
    state, n_old, lo, hi, kept_lists = (np.empty((min_samples, 0)), np.empty((min_samples, 0), np.int32)), 0, 0, 0, 0
    while hi < len(X):
        hi = min(hi + m, len(X))
        gone = max(hi - lo - cap, 0)
        lo += gone
        rows = X[lo:hi]
        (got,), (new_state,) = hdbscan_incremental([rows], [n_old], [state], drop=[gone], **params)
        (want,) = hdbscan_batch([rows], **params)
        np.testing.assert_array_equal(got, want, err_msg=f"rows {lo}:{hi}")
        K, J = new_state
        k = min(min_samples, len(rows) - 1)
        np.testing.assert_array_equal(K[k - 1], core_distances_sq(_transposed(rows), k))
        listed = J >= 0  # fewer other rows than min_samples: the rest is inf
        assert (listed == np.isfinite(K)).all() and listed[:k].all()
        np.testing.assert_allclose(((rows[J] - rows[None]) ** 2).sum(-1)[listed], K[listed], rtol=1e-12)
        if gone:  # rows whose lists survived the drop unchanged (renumbered): the update did not recompute them all
            old_K, old_J = state
            survived = (old_J[:, gone:] >= gone).all(axis=0)
            kept_lists += int(survived.sum())
            assert survived.any() and not survived.all()
            again = core_lists_update(_transposed(rows), n_old, gone, old_K, old_J, min_samples)
            np.testing.assert_array_equal(again[0], K)
        state, n_old = new_state, len(rows)
    assert kept_lists > 0


def test_small_caps_recompute_drops_in_full_and_large_caps_reconnect(monkeypatch):
    """A FIFO drop is reconnected only from n >= 192 + 16 * drop rows (where it measured cheaper than Prim's); below,
    the memory is recomputed in full and keeps no MST. Labels equal full recomputation either way."""
    from meds_core.clustering import _incremental

    monkeypatch.setattr(_incremental, "RECONNECT_MIN_ROWS", 192)
    monkeypatch.setattr(_incremental, "RECONNECT_ROWS_PER_DROP", 16)
    pays = _incremental.reconnect_pays(np.array([448, 447, 10, 208, 207]), np.array([16, 16, 0, 1, 1]))
    assert pays.tolist() == [True, False, True, True, False]
    X = _stream(5, 600, 3, 8, 0.0)
    for cap, reconnects in ((64, False), (448, True)):
        state, n_old, lo, hi, kept_at_cap = np.empty((3, 0)), 0, 0, 0, 0
        while hi < cap + 48:
            hi += 16
            gone = max(hi - lo - cap, 0)
            lo += gone
            (got,), (state,) = hdbscan_incremental([X[lo:hi]], [n_old], [state], 2, drop=[gone])
            np.testing.assert_array_equal(got, hdbscan_batch([X[lo:hi]], 2, 1)[0], err_msg=f"cap {cap} rows {lo}:{hi}")
            if gone:
                kept_at_cap += state is not None
            else:
                assert state is not None, "growing memories keep their MST"
            n_old = hi - lo if state is not None else -1
        assert kept_at_cap == (3 if reconnects else 0), cap
