"""Incremental MST for ``min_samples = 1``: each step's MST from the previous one, the rows dropped and the rows added.

With ``min_samples = 1`` the core distance of a row is its nearest-neighbour distance, so every mutual-reachability
weight equals the squared euclidean distance (bit for bit: core and edge come from the same sums). The state is the
previous rows' MST, UNIQUE (every non-tree edge strictly heavier than the heaviest edge on its tree path), as its n-1
edges sorted by weight.

* FIFO drop (:func:`_reconnect`): the old tree edges between kept rows form a forest F that lies in every MST of the
  kept rows; only the lightest edge between two components of F can join them, and only if it is no heavier than
  the bound that the rows next to the dropped ones give (:func:`_bridge_bounds`), so each search starts from that
  bound and leaves columns above it after every block of four features. Cost O(outside * kept * d), outside =
  rows not in F's largest component (no sort of those pairs).
* New rows (:func:`_insertion_candidates`): old non-tree edges stay strictly heavier than
  the new tree paths, so the new MST is the MST of the kept rows' tree plus edges incident to a new row; of those,
  an edge (j, z) is left out when it is strictly heavier than both z's lightest edge (to j*) and the heaviest tree
  edge between j and j*, read as a running maximum over the tree's single-linkage leaf order (typically a few edges
  per new row remain); a new-new edge is left out when it is strictly heavier than its path in an MST of the new
  rows alone. Kruskal merges the sorted old tree with the few sorted candidates, one class of bit-equal
  weights at a time, and checks that the result is unique (:func:`_kruskal_merge`); then it is the unique MST of all
  rows, the tree the full engine's Prim's builds. Cost O(n * m * d) for m new rows, plus the tree stage.
* Tree stage (:func:`labels_from_sorted_mst`): the merge order is the sorted order where no two tree distances are
  equal (Prim's orientation from rooting the tree at row 0); otherwise Prim's order is rebuilt from the tree.

Any tie that could change the tree gives ``ok = False``, and the caller recomputes in full.
"""

from __future__ import annotations

import heapq

import numpy as np
from numba import prange

from meds_core.clustering._condensed_tree import _root, merge_in_order
from meds_core.clustering._core_distances import min_bits, sq_dists_from, sq_dists_upto
from meds_core.clustering._jit import kernel
from meds_core.clustering._pipeline import _transposed, labels_from_merges, mst_one, tree_labels
from meds_core.clustering._sort import stable_argsort


@kernel
def _tree_adjacency(n, tu, tv, tw):
    """Adjacency (CSR) of a tree's n-1 edges (tu, tv [n-1] int64, tw [n-1] f64): row r's neighbours are
    nb[start[r]:start[r + 1]] with edge weights nw[same] -> start [n+1] int64, nb [2(n-1)] int64, nw [2(n-1)] f64."""
    E = tu.shape[0]  # n - 1 for a tree; fewer for a forest
    deg = np.zeros(n + 1, dtype=np.int64)
    for e in range(E):
        deg[tu[e] + 1] += 1
        deg[tv[e] + 1] += 1
    start = np.cumsum(deg)
    fill = start[:-1].copy()
    nb = np.empty(2 * E, dtype=np.int64)
    nw = np.empty(2 * E)
    for e in range(E):
        a, b = tu[e], tv[e]
        nb[fill[a]], nw[fill[a]] = b, tw[e]
        fill[a] += 1
        nb[fill[b]], nw[fill[b]] = a, tw[e]
        fill[b] += 1
    return start, nb, nw


@kernel
def _heaviest_on_paths(s, start, nb, nw, pm, up, stack):
    """One walk of a tree (or forest) given as adjacency (start, nb, nw of :func:`_tree_adjacency`) from row s:
    pm[v] ([n] f64) = the heaviest edge on the path from s to v, up[v] ([n] int64) = v's neighbour towards s
    (up[s] = s); rows not reached keep their values. stack: [n] int64 scratch."""
    pm[s], up[s] = 0.0, s
    stack[0], top = s, 1
    while top > 0:
        top -= 1
        a = stack[top]
        for z in range(start[a], start[a + 1]):
            b = nb[z]
            if b != up[a]:
                up[b] = a
                pm[b] = nw[z] if nw[z] > pm[a] else pm[a]
                stack[top] = b
                top += 1


@kernel
def _prim_on_tree(n, tu, tv, tw):
    """Prim's order of a spanning tree (tu, tv [n-1] int64, tw [n-1] f64): from row 0, smallest weight first, equal
    weights smallest row first. -> src, dst [n-1] int64 (dst joins through src), weight [n-1] f64."""
    start, nb, nw = _tree_adjacency(n, tu, tv, tw)
    src = np.empty(n - 1, dtype=np.int64)
    dst = np.empty(n - 1, dtype=np.int64)
    weight = np.empty(n - 1)
    seen = np.zeros(n, dtype=np.bool_)
    seen[0] = True
    heap = [(0.0, np.int64(0), np.int64(0))]
    heap.pop()
    for z in range(start[0], start[1]):
        heapq.heappush(heap, (nw[z], nb[z], np.int64(0)))
    for it in range(n - 1):
        w, v, u = heapq.heappop(heap)  # v has one tree neighbour in the tree: no stale entries
        src[it], dst[it], weight[it] = u, v, w
        seen[v] = True
        for z in range(start[v], start[v + 1]):
            if not seen[nb[z]]:
                heapq.heappush(heap, (nw[z], nb[z], v))
    return src, dst, weight


@kernel
def _bridging(parent, u, v, lo, hi):
    """How many edges (u[z], v[z]), z in [lo, hi), join two different components of ``parent`` (nothing linked)."""
    c = 0
    for z in range(lo, hi):
        c += _root(parent, u[z]) != _root(parent, v[z])
    return c


@kernel
def _link_run(parent, size, u, v, w, lo, hi, tu, tv, tw, t):
    """Kruskal over edges z in [lo, hi) in order: link each edge that joins two components (union by size) and
    append it to the tree arrays (tu, tv, tw) at position t. Returns the new tree length."""
    for z in range(lo, hi):
        a, b = _root(parent, u[z]), _root(parent, v[z])
        if a != b:
            _link(parent, size, a, b)
            tu[t], tv[t], tw[t] = u[z], v[z], w[z]
            t += 1
    return t


@kernel
def _link(parent, size, a, b):
    """Join the components of roots a != b: the smaller under the larger (size [n] int64 counts a root's rows)."""
    if size[a] > size[b]:
        a, b = b, a
    parent[a] = b
    size[b] += size[a]


@kernel
def _kruskal_merge(n, au, av, aw, bu, bv, bw):
    """Kruskal over two edge lists, each sorted by weight ascending (au, av [A] int64, aw [A] f64 squared; same for
    b), merged on the fly, one class of bit-equal weights at a time. -> (tu, tv [t] int64, tw [t] f64 in weight order,
    ok): ok is False when a class holds more edges that join two components before it than it can add (the MST is
    then not unique). Components are over rows 0..n-1."""
    parent = np.arange(max(n, 1))
    size = np.ones(max(n, 1), dtype=np.int64)
    tu = np.empty(max(n - 1, 0), dtype=np.int64)
    tv = np.empty(max(n - 1, 0), dtype=np.int64)
    tw = np.empty(max(n - 1, 0))
    A, B = aw.shape[0], bw.shape[0]
    i = j = t = 0
    while (i < A or j < B) and t < n - 1:
        wq = aw[i] if j >= B or (i < A and aw[i] <= bw[j]) else bw[j]
        i1, j1 = i, j
        while i1 < A and aw[i1] == wq:
            i1 += 1
        while j1 < B and bw[j1] == wq:
            j1 += 1
        if i1 - i + j1 - j == 1:  # a class of one edge (the usual case): no tie, two finds instead of four
            x, y, wx = (au[i], av[i], aw[i]) if i1 > i else (bu[j], bv[j], bw[j])
            ra, rb = _root(parent, x), _root(parent, y)
            if ra != rb:
                _link(parent, size, ra, rb)
                tu[t], tv[t], tw[t] = x, y, wx
                t += 1
            i, j = i1, j1
            continue
        usable = _bridging(parent, au, av, i, i1) + _bridging(parent, bu, bv, j, j1)
        t0 = t
        t = _link_run(parent, size, au, av, aw, i, i1, tu, tv, tw, t)
        t = _link_run(parent, size, bu, bv, bw, j, j1, tu, tv, tw, t)
        if usable != t - t0:
            return tu[:t], tv[:t], tw[:t], False
        i, j = i1, j1
    return tu[:t], tv[:t], tw[:t], True


@kernel
def _sorted_by_weight(u, v, w):
    """The edges (u, v [k] int64, w [k] f64) sorted by w, stable. -> u, v, w."""
    order = stable_argsort(w)
    return u[order], v[order], w[order]


@kernel
def _bridge_pairs(drop, u_old, v_old):
    """Pairs of kept rows that the old tree (u_old, v_old [n_old-1] int64) joined through dropped rows (0..drop-1):
    per group of dropped rows connected in the tree, every pair of the kept rows next to the group. Together they
    join every piece the drop leaves. -> pu, pv [p] int64, numbered as kept rows (old index - drop)."""
    grp = np.arange(max(drop, 1))
    E = u_old.shape[0]
    for e in range(E):
        if u_old[e] < drop and v_old[e] < drop:
            a, b = _root(grp, u_old[e]), _root(grp, v_old[e])
            grp[a] = b
    deg = np.zeros(drop + 1, dtype=np.int64)
    for e in range(E):
        a, b = u_old[e], v_old[e]
        if (a < drop) != (b < drop):
            deg[_root(grp, min(a, b)) + 1] += 1
    start = np.cumsum(deg)
    fill = start[:-1].copy()
    nb = np.empty(start[-1], dtype=np.int64)
    for e in range(E):
        a, b = u_old[e], v_old[e]
        if (a < drop) != (b < drop):
            g = _root(grp, min(a, b))
            nb[fill[g]] = max(a, b) - drop
            fill[g] += 1
    cnt = 0
    for g in range(drop):
        k = start[g + 1] - start[g]
        cnt += k * (k - 1) // 2
    pu = np.empty(cnt, dtype=np.int64)
    pv = np.empty(cnt, dtype=np.int64)
    z = 0
    for g in range(drop):
        for i in range(start[g], start[g + 1]):
            for j in range(i + 1, start[g + 1]):
                pu[z], pv[z] = nb[i], nb[j]
                z += 1
    return pu, pv


@kernel
def _bridge_bounds(XT, c, k, pu, pv):
    """For every pair of pieces (c [kept] int64: each kept row's piece, 0..k-1), the heaviest edge on their path in a
    spanning tree U of the pieces made of the bridge pairs (pu, pv [p] int64; squared weights from XT [d, n] f64 by
    the scan's own formula) -> tau [k, k] f64 (inf where U does not join them). Once the pieces are contracted, an
    edge between pieces a and b strictly heavier than tau[a, b] is the strict maximum of a cycle of real edges, so it
    is in no MST."""
    d = XT.shape[0]
    p = pu.shape[0]
    pw = np.empty(p)
    x = np.empty(d)
    one = np.empty(1)
    for z in range(p):
        for q in range(d):
            x[q] = XT[q, pu[z]]
        sq_dists_from(x, XT, pv[z], pv[z] + 1, one)
        pw[z] = one[0]
    parent = np.arange(k)
    ua = np.empty(max(k - 1, 0), dtype=np.int64)
    ub = np.empty(max(k - 1, 0), dtype=np.int64)
    uw = np.empty(max(k - 1, 0))
    t = 0
    for z in stable_argsort(pw):
        a, b = c[pu[z]], c[pv[z]]
        ra, rb = _root(parent, a), _root(parent, b)
        if ra != rb:
            parent[ra] = rb
            ua[t], ub[t], uw[t] = a, b, pw[z]
            t += 1
    start, nb, nw = _tree_adjacency(k, ua[:t], ub[:t], uw[:t])
    tau = np.full((k, k), np.inf)
    up = np.empty(k, dtype=np.int64)
    stack = np.empty(k, dtype=np.int64)
    for s in range(k):
        _heaviest_on_paths(s, start, nb, nw, tau[s], up, stack)
    return tau


@kernel
def _first_at_least(key, lo, hi, y):
    """First position in [lo, hi) of the ascending key [n] f64 with key >= y (hi if none)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if key[mid] < y:
            lo = mid + 1
        else:
            hi = mid
    return lo


@kernel
def _first_above(key, lo, hi, y):
    """First position in [lo, hi) of the ascending key [n] f64 with key > y (hi if none)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if key[mid] <= y:
            lo = mid + 1
        else:
            hi = mid
    return lo


# A FIFO drop is reconnected (:func:`_reconnect`) only where that is cheaper than recomputing the memory in full:
# n rows after the step >= RECONNECT_MIN_ROWS + RECONNECT_ROWS_PER_DROP * drop. Otherwise the memory is recomputed in
# full and keeps no MST (rebuilding it would add a uniqueness check for nothing: a memory at its cap stays there).
# Measured per memory at the cap, one thread, d = 14, stream rows (reconnect and new rows + tree stage, against Prim's +
# tree stage): drop 16: 135 vs 102 us at n = 256, 178 vs 181 at 384, 243 vs 443 at 512; drop 8: 57 vs 38 at 128,
# 103 vs 137 at 256; drop 4: 27 vs 18 at 64, 65 vs 61 at 192, 79 vs 104 at 256.
RECONNECT_MIN_ROWS = 192
RECONNECT_ROWS_PER_DROP = 16


def reconnect_pays(n: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """Where a FIFO drop of ``drop`` rows ([P] int64) from a memory of ``n`` rows after the step ([P] int64) is
    reconnected rather than recomputed in full (see the constants above): [P] bool, True where nothing is dropped."""
    return (drop <= 0) | (n >= RECONNECT_MIN_ROWS + RECONNECT_ROWS_PER_DROP * drop)


@kernel
def _reconnect(XT, kept, fu, fv, fw, pu, pv):
    """The unique MST of the kept rows (columns 0..kept-1 of XT [d, n] f64) from the forest F (fu, fv [f] int64, fw [f]
    f64 squared, sorted) that the old unique MST leaves after rows were dropped, or ok False when it is not unique.

    Every edge of F is the strict minimum across a cut of the old rows, so also of the kept rows: F lies in every MST.
    Contracting F's components, only the lightest edge between each pair of components can join the MST (a tie for
    that lightest edge is kept twice, so that Kruskal's class check sees it). Rows outside the largest component are
    compared with the rows of the largest and of every component after their own (each pair once), laid out
    component by component and sorted by one coordinate, so that each lightest edge is the minimum of a contiguous
    run, cut to the rows within the best distance so far in that coordinate (plus rounding margins): at worst
    O(outside * kept * d) time, no sort of those pairs. The search between two pieces starts from their bound in
    :func:`_bridge_bounds` (from the bridge pairs pu, pv [p] int64 of :func:`_bridge_pairs`) instead of infinity: only
    edges up to it can join the MST, so the windows are narrow from the first row on. -> tu, tv, tw (sorted), ok."""
    if fu.shape[0] == kept - 1 or kept < 2:
        return fu, fv, fw, True
    comp = np.arange(kept)
    size = np.ones(kept, dtype=np.int64)
    for e in range(fu.shape[0]):  # union by size: shallow trees (24 -> 15 us per 1,024-row memory at the cap)
        a, b = _root(comp, fu[e]), _root(comp, fv[e])
        if size[a] > size[b]:
            a, b = b, a
        comp[a] = b
        size[b] += size[a]
    for i in range(kept):
        comp[i] = _root(comp, i)
        size[i] = 0
    for i in range(kept):
        size[comp[i]] += 1
    ids = np.full(kept, -1, dtype=np.int64)
    k = 0
    for r in range(kept):
        if size[r] > 0:
            ids[r] = k
            k += 1
    big = ids[np.argmax(size)]
    c = np.empty(kept, dtype=np.int64)
    for i in range(kept):
        c[i] = ids[comp[i]]
    best = _bridge_bounds(XT, c, k, pu, pv)  # then the lightest edge found so far, where found
    found = np.zeros((k, k), dtype=np.bool_)
    ties = np.zeros((k, k), dtype=np.bool_)
    bu = np.zeros((k, k), dtype=np.int64)
    bv = np.zeros((k, k), dtype=np.int64)
    # Lay the rows out component by component (the largest first, then by size), each component's rows sorted by the
    # coordinate of largest spread: the lightest edge from a row to a component is the minimum of one contiguous run
    # of its distances, and only the run within sqrt(best so far) of the row's coordinate can hold it (a distance is
    # at least the gap in any one coordinate), so the rest of the run is skipped.
    d = XT.shape[0]
    qa, spread = 0, -1.0
    for q in range(d):
        lo_q, hi_q = XT[q, 0], XT[q, 0]
        for i in range(kept):
            lo_q = min(lo_q, XT[q, i])
            hi_q = max(hi_q, XT[q, i])
        if hi_q - lo_q > spread:
            qa, spread = q, hi_q - lo_q
    rank = np.empty(k, dtype=np.int64)
    of_rank = np.empty(k, dtype=np.int64)
    sz = np.zeros(k, dtype=np.int64)
    for i in range(kept):
        sz[c[i]] += 1
    sz[big] = -1  # the largest first, then by size ascending: a piece's rows search the pieces ranked after it,
    for r, q in enumerate(np.argsort(sz, kind="mergesort")):  # so large pieces search few (fewer searches in all)
        rank[q] = r
        of_rank[r] = q
    start = np.zeros(k + 1, dtype=np.int64)
    for i in range(kept):
        start[rank[c[i]] + 1] += 1
    for q in range(k):
        start[q + 1] += start[q]
    fill = start[:k].copy()
    perm = np.empty(kept, dtype=np.int64)
    for i in stable_argsort(XT[qa, :kept]):
        r = rank[c[i]]
        perm[fill[r]] = i
        fill[r] += 1
    XP = np.empty((d, kept))
    for q in range(d):
        for t in range(kept):
            XP[q, t] = XT[q, perm[t]]
    key = XP[qa]
    x = np.empty(d)
    row = np.empty(kept)
    idx = np.empty(kept, dtype=np.int64)
    nb = start[1]  # rows of the largest component: positions 0..nb-1
    for pi in range(nb, kept):  # every row outside it, against the largest and the components after its own
        i = perm[pi]
        ci = c[i]
        rc = rank[ci]
        for q in range(d):
            x[q] = XP[q, pi]
        for rt in range(k):
            if rt != 0 and rt <= rc:
                continue
            lo, hi = start[rt], start[rt + 1]
            cj = of_rank[rt]
            a, b = (ci, cj) if ci < cj else (cj, ci)
            if best[a, b] < np.inf:  # margins keep every pair that rounding could bring to the minimum
                h = np.sqrt(best[a, b]) * (1.0 + 1e-9) + 1e-12 * (abs(x[qa]) + spread)
                if hi <= lo or key[lo] > x[qa] + h or key[hi - 1] < x[qa] - h:
                    continue
                lo, hi = _first_at_least(key, lo, hi, x[qa] - h), _first_above(key, lo, hi, x[qa] + h)
            if hi <= lo:
                continue
            w, at, many = np.inf, lo, False
            for s in range(sq_dists_upto(x, XP, lo, hi, row, idx, best[a, b])):
                t = idx[s]  # ascending: the first of equal minima is the same one a full scan finds
                v = row[t]
                if v < w:
                    w, at, many = v, lo + t, False
                elif v == w:
                    many = True
            if w < best[a, b] or (w == best[a, b] and not found[a, b]):
                best[a, b], ties[a, b], bu[a, b], bv[a, b], found[a, b] = w, many, i, perm[at], True
            elif w == best[a, b]:
                ties[a, b] = True
    cnt = 0
    for a in range(k):
        for b in range(a + 1, k):
            cnt += found[a, b] * (1 + ties[a, b])
    eu = np.empty(cnt, dtype=np.int64)
    ev = np.empty(cnt, dtype=np.int64)
    ew = np.empty(cnt)
    z = 0
    for a in range(k):
        for b in range(a + 1, k):
            for _ in range(found[a, b] * (1 + ties[a, b])):
                eu[z], ev[z], ew[z] = bu[a, b], bv[a, b], best[a, b]
                z += 1
    eu, ev, ew = _sorted_by_weight(eu, ev, ew)
    tu, tv, tw, ok = _kruskal_merge(kept, fu, fv, fw, eu, ev, ew)
    return tu, tv, tw, ok and tu.shape[0] == kept - 1


@kernel
def _leaf_order(n, u, v, w):
    """Single linkage's leaf order of a spanning tree (u, v [n-1] int64, w [n-1] f64 sorted ascending) over rows
    0..n-1 -> leaf [n] int64 (the rows in that order), pos [n] int64 (its inverse), gap [n-1] f64: gap[i] is the
    weight at which leaf[i] and leaf[i + 1] first join. Kruskal with each component a linked list: a link appends
    one list to the other and records the edge's weight at the junction. So the weight at which rows a and b first
    join, which is the heaviest edge on their tree path, is the largest gap between their positions."""
    parent = np.arange(n)
    head = np.arange(n)  # a root's first and last row
    tail = np.arange(n)
    nxt = np.full(n, -1, dtype=np.int64)
    after = np.zeros(n)  # after[r]: the gap between row r and nxt[r]
    for e in range(u.shape[0]):
        a, b = _root(parent, u[e]), _root(parent, v[e])
        nxt[tail[a]], after[tail[a]] = head[b], w[e]
        parent[b] = a
        tail[a] = tail[b]
    r = _root(parent, 0)
    leaf = np.empty(n, dtype=np.int64)
    pos = np.empty(n, dtype=np.int64)
    gap = np.empty(max(n - 1, 0))
    x = head[r]
    for i in range(n):
        leaf[i], pos[x] = x, i
        if i < n - 1:
            gap[i] = after[x]
        x = nxt[x]
    return leaf, pos, gap


@kernel
def _leaf_major(X, leaf, kept):
    """X [n, d] f64 transposed, the kept rows in the order leaf [kept] int64, then the new rows (kept..n-1) in order
    -> [d, n] f64."""
    n, d = X.shape
    XL = np.empty((d, n))
    for q in range(d):  # contiguous writes, as in _transposed
        for i in range(kept):
            XL[q, i] = X[leaf[i], q]
        for i in range(kept, n):
            XL[q, i] = X[i, q]
    return XL


@kernel
def _grown(u, v, w):
    """The edge arrays (u, v [c] int64, w [c] f64) copied into arrays twice as long."""
    c = u.shape[0]
    u2, v2, w2 = np.empty(2 * c, dtype=np.int64), np.empty(2 * c, dtype=np.int64), np.empty(2 * c)
    u2[:c], v2[:c], w2[:c] = u, v, w
    return u2, v2, w2


_SKIP = 32  # block of leaf positions that the path filter can pass over in one test


@kernel
def _block_gap_maxima(gap, kept):
    """Per block k of _SKIP leaf positions (gap [kept-1] f64): the largest gap that the path filter's walk to the
    right (gaps kB-1 .. kB+B-2) and to the left (gaps kB .. kB+B-1) reads inside it, clipped to the gaps that exist.
    -> right, left [ceil(kept / B)] f64."""
    nb = (kept + _SKIP - 1) // _SKIP
    right, left = np.zeros(nb), np.zeros(nb)
    for k in range(nb):
        r = 0.0
        for g in range(max(k * _SKIP - 1, 0), min(k * _SKIP + _SKIP - 1, kept - 1)):
            r = gap[g] if gap[g] > r else r
        right[k] = r
        ll = 0.0
        for g in range(k * _SKIP, min(k * _SKIP + _SKIP, kept - 1)):
            ll = gap[g] if gap[g] > ll else ll
        left[k] = ll
    return right, left


@kernel
def _path_filter(row, kept, gap, right, left, rmin, surv):
    """Leaf positions i of the kept rows whose distance row[i] (row [>= kept] f64, squared, in leaf order) is at most
    max(row[ps], largest gap between ps and i), ps the first nearest position: ps first, then outwards to the right,
    then to the left, into surv [>= kept] int64. -> count. A block of _SKIP positions whose smallest distance is above
    the largest bound it can reach (the running maximum so far or the block's largest gap, ``right``/``left`` from
    :func:`_block_gap_maxima`) is passed over in one test: no position in it survives, and the running maximum after
    it is exactly that bound. rmin [>= ceil(kept / B)] int64: scratch. Distances are >= +0.0, so their bit patterns
    (int64 views) order like the values: the block minima vectorise as integer minima."""
    bits = row.view(np.int64)
    nb = (kept + _SKIP - 1) // _SKIP
    best = bits[0]
    for k in range(nb):
        lo, hi = k * _SKIP, min(k * _SKIP + _SKIP, kept)
        rmin[k] = min_bits(bits[lo:hi], hi - lo)
        best = rmin[k] if rmin[k] < best else best
    k = 0
    while rmin[k] != best:
        k += 1
    ps = k * _SKIP
    while bits[ps] != best:
        ps += 1
    surv[0], nk = ps, 1
    lim = row[ps]
    i = ps + 1
    while i < kept:
        end = min(i - i % _SKIP + _SKIP, kept)
        if i % _SKIP == 0 and end - i == _SKIP:
            k = i // _SKIP
            u = right[k] if right[k] > lim else lim
            if rmin[k] > np.float64(u).view(np.int64):
                lim, i = u, end
                continue
        for j in range(i, end):
            lim = gap[j - 1] if gap[j - 1] > lim else lim
            surv[nk] = j
            nk += row[j] <= lim
        i = end
    lim = row[ps]
    i = ps - 1
    while i >= 0:
        lo = i - i % _SKIP
        if i - lo == _SKIP - 1:
            k = i // _SKIP
            u = left[k] if left[k] > lim else lim
            if rmin[k] > np.float64(u).view(np.int64):
                lim, i = u, lo - 1
                continue
        for j in range(i, lo - 1, -1):
            lim = gap[j] if gap[j] > lim else lim
            surv[nk] = j
            nk += row[j] <= lim
        i = lo - 1
    return nk


@kernel
def _insertion_candidates(X, kept, tu, tv, tw):
    """Edges incident to the new rows (rows kept..n-1 of X [n, d] f64) that can be in the MST of all rows, given the
    unique MST T (tu, tv, tw) of the kept rows: the new-new edges no heavier than their path in an MST of the new
    rows alone (:func:`_tree_path_maxima`: about m of the m(m-1)/2; the others are strictly the heaviest edge of a
    cycle), and per new row a the edges to kept rows j that survive the path filter. With j* the row of a's lightest
    edge, the edge (j, a) is left out when it is strictly heavier than both (a, j*) and the heaviest edge of T on
    the path from j to j*: it is then strictly the heaviest edge of the cycle (j, a) + (a, j*) + path(j*, j), so it
    is in no MST. Every edge left out is in no MST, so the MST of the candidates is unique exactly when the MST of
    all rows is. That heaviest path edge is the largest gap between j and j* in T's :func:`_leaf_order`; the kept
    rows' distances are computed in that order, so the filter is one walk outwards from j* per new row, carrying the
    running maximum and passing over whole blocks that cannot hold a survivor (:func:`_path_filter`; typically a few
    edges per new row remain). O(m * kept * d) distances, O(m * kept / B) block tests plus the blocks walked, plus
    O(m^2) for the new rows' tree. -> u, v [c] int64, w [c] f64 sorted by w."""
    n, d = X.shape
    m = n - kept
    if kept >= 2:
        leaf, pos, gap = _leaf_order(kept, tu, tv, tw)
    else:
        leaf, gap = np.arange(kept), np.zeros(1)
    right, left = _block_gap_maxima(gap, kept)
    rmin = np.empty(right.shape[0] + 1, dtype=np.int64)
    XL = _leaf_major(X, leaf, kept)
    c = 16 * m + 8
    u, v, w = np.empty(c, dtype=np.int64), np.empty(c, dtype=np.int64), np.empty(c)
    row = np.empty(n)
    surv = np.empty(kept + 1, dtype=np.int64)
    x = np.empty(d)
    dn = np.empty((m, m))
    k = 0
    for a in range(m):
        for q in range(d):
            x[q] = XL[q, kept + a]
        sq_dists_from(x, XL, 0, kept + a, row)
        for b in range(a):
            dn[a, b] = dn[b, a] = row[kept + b]
        if kept == 0:
            continue
        nk = _path_filter(row, kept, gap, right, left, rmin, surv)
        while k + nk > u.shape[0]:
            u, v, w = _grown(u, v, w)
        for t in range(nk):
            i = surv[t]
            u[k], v[k], w[k] = leaf[i], kept + a, row[i]
            k += 1
    pm = _tree_path_maxima(dn)
    for a in range(m):
        while k + a > u.shape[0]:
            u, v, w = _grown(u, v, w)
        for b in range(a):
            u[k], v[k], w[k] = kept + b, kept + a, dn[a, b]
            k += dn[a, b] <= pm[a, b]
    return _sorted_by_weight(u[:k], v[:k], w[:k])


@kernel
def _tree_path_maxima(D):
    """For the rows of a full distance matrix D [m, m] f64 (squared, symmetric): pm [m, m] f64, pm[a, b] the heaviest
    edge on the path between a and b in an MST of D (Prim's from row 0; which MST does not matter). A pair with
    D[a, b] > pm[a, b] is strictly the heaviest edge of a cycle, so it is in no MST of any graph that holds this
    one; the pairs with D[a, b] <= pm[a, b] are the tree's edges and the pairs tied with their tree path. O(m^2):
    a row that joins through (p, x) at weight w is at pm[p, y] max w from every row y already in the tree."""
    m = D.shape[0]
    pm = np.zeros((m, m))
    key = np.full(m, np.inf)
    via = np.zeros(m, dtype=np.int64)
    joined = np.zeros(m, dtype=np.int64)  # rows in the tree, in joining order
    out = np.ones(m, dtype=np.bool_)
    cur = 0
    for t in range(m):
        out[cur] = False
        joined[t] = cur
        if t == m - 1:
            break
        nxt, best = -1, np.inf
        for j in range(m):
            if out[j]:
                if D[cur, j] < key[j]:
                    key[j], via[j] = D[cur, j], cur
                if nxt < 0 or key[j] < best:
                    nxt, best = j, key[j]
        p = via[nxt]
        for s in range(t + 1):
            y = joined[s]
            g = pm[p, y] if pm[p, y] > best else best
            pm[nxt, y] = pm[y, nxt] = g
        cur = nxt
    return pm


@kernel
def incremental_mst(X, n_old, drop, u_old, v_old, w_old):
    """The MST of X [n, d] f64 from the unique MST of the previous rows (u_old, v_old [n_old-1] int64, w_old [n_old-1]
    f64 squared, sorted by weight, over n_old rows) after dropping their first ``drop`` rows: X holds the kept previous
    rows (n_old - drop, same order), then the new ones. -> (u, v [n-1] int64, w_sq [n-1] f64 sorted by weight, ok): ok
    is False (edges then meaningless) when the new MST is not provably unique.

    Dropped rows: :func:`_reconnect`. New rows: Kruskal on the kept rows' MST (already sorted) merged with the
    :func:`_insertion_candidates` (sorted, few): every edge between kept rows outside their unique MST is strictly
    heavier than its tree path, so it stays out when rows are added."""
    n = X.shape[0]
    kept = n_old - drop
    if drop > 0:
        f = 0
        for e in range(u_old.shape[0]):
            f += u_old[e] >= drop and v_old[e] >= drop
        fu, fv, fw = np.empty(f, dtype=np.int64), np.empty(f, dtype=np.int64), np.empty(f)
        f = 0
        for e in range(u_old.shape[0]):
            if u_old[e] >= drop and v_old[e] >= drop:
                fu[f], fv[f], fw[f] = u_old[e] - drop, v_old[e] - drop, w_old[e]
                f += 1
        pu, pv = _bridge_pairs(drop, u_old, v_old)
        tu, tv, tw, ok = _reconnect(_transposed(X), kept, fu, fv, fw, pu, pv)
        if not ok:
            return tu, tv, tw, False
    else:
        tu, tv, tw = u_old, v_old, w_old
    if n == kept:
        return tu, tv, tw, True
    cu, cv, cw = _insertion_candidates(X, kept, tu, tv, tw)
    su, sv, sw, ok = _kruskal_merge(n, tu, tv, tw, cu, cv, cw)
    return su, sv, sw, ok and su.shape[0] == max(n - 1, 0)


@kernel
def labels_from_sorted_mst(u, v, w_sq, min_cluster_size, leaf, allow_single_cluster, epsilon):
    """HDBSCAN* labels [n] int64 from the unique MST as edges sorted by weight (u, v [n-1] int64, w_sq [n-1] f64),
    equal to :func:`tree_labels` on the same tree in Prim order. Where no two edges have the same distance (after the
    square root) the merge order is the sorted order and only each edge's orientation matters (Prim's src is the end
    nearer row 0): the tree is rooted at row 0 in O(n), no sort. Otherwise the edges are put in Prim's order first."""
    n = u.shape[0] + 1
    dist = np.sqrt(w_sq)
    for e in range(n - 2):
        if dist[e] == dist[e + 1]:
            s, dd, w = _prim_on_tree(n, u, v, w_sq)
            return tree_labels(s, dd, w, min_cluster_size, leaf, allow_single_cluster, epsilon)
    start, nb, nw = _tree_adjacency(n, u, v, w_sq)
    up = np.full(n, -1, dtype=np.int64)
    up[0] = 0
    stack = np.empty(n, dtype=np.int64)
    stack[0], top = 0, 1
    while top > 0:
        top -= 1
        a = stack[top]
        for z in range(start[a], start[a + 1]):
            b = nb[z]
            if up[b] == -1:
                up[b] = a
                stack[top] = b
                top += 1
    src = np.empty(n - 1, dtype=np.int64)
    dst = np.empty(n - 1, dtype=np.int64)
    for e in range(n - 1):
        a, b = u[e], v[e]
        src[e], dst[e] = (a, b) if up[b] == a else (b, a)
    merges = merge_in_order(src, dst, dist, np.arange(n - 1))
    return labels_from_merges(merges, min_cluster_size, leaf, allow_single_cluster, epsilon)


@kernel
def is_unique_mst(X, src, dst, weight_sq):
    """True when the spanning tree (src, dst [n-1] int64, weight_sq [n-1] f64) of X [n, d] f64 is the UNIQUE
    euclidean MST: every non-tree pair is strictly farther (squared, bit for bit) than the heaviest edge on its tree
    path. O(n^2 * d) time, O(n * d) memory (one tree walk and one distance row per row)."""
    n, d = X.shape
    if n < 3:
        return True
    XT = _transposed(X)
    start, nb, nw = _tree_adjacency(n, src, dst, weight_sq)
    pm = np.empty(n)
    up = np.empty(n, dtype=np.int64)
    stack = np.empty(n, dtype=np.int64)
    row = np.empty(n)
    x = np.empty(d)
    for u in range(n - 1):
        _heaviest_on_paths(u, start, nb, nw, pm, up, stack)
        for c in range(d):
            x[c] = XT[c, u]
        sq_dists_from(x, XT, u + 1, n, row)
        for j in range(n - 1 - u):
            v = u + 1 + j
            if row[j] < pm[v] or (row[j] == pm[v] and up[v] != u):
                return False
    return True


@kernel
def is_unique_mst_sorted(X, src, dst, weight_sq):
    """:func:`is_unique_mst` (the same answer), in about a full clustering's time: the heaviest edge on the tree
    path between two rows is the weight at which single linkage first joins them, i.e. the largest gap between them
    in the merge tree's leaf order. Rows are visited in that order, so each row's pairs need one running max over a
    contiguous gap array instead of a tree walk. X [n, d] f64; src, dst [n-1] int64, weight_sq [n-1] f64 (any order)."""
    n, d = X.shape
    if n < 3:
        return True
    left, right, dist, size = merge_in_order(src, dst, weight_sq, stable_argsort(weight_sq))
    leaf = np.empty(n, dtype=np.int64)
    gap = np.empty(n - 1)  # gap[i]: squared weight of the merge that joins leaf[i] and leaf[i + 1]
    stack = np.empty(3 * n, dtype=np.int64)
    stack[0], top, pos = 2 * n - 2, 1, 0
    while top > 0:
        top -= 1
        x = stack[top]
        if x < 0:  # between the left and the right subtree of merge -x-1
            gap[pos - 1] = dist[-x - 1 - n]
        elif x < n:
            leaf[pos] = x
            pos += 1
        else:
            stack[top], stack[top + 1], stack[top + 2] = right[x - n], -x - 1, left[x - n]
            top += 3
    XP = np.empty((d, n))
    for q in range(d):
        for i in range(n):
            XP[q, i] = X[leaf[i], q]
    start, nb, nw = _tree_adjacency(n, src, dst, weight_sq)
    row = np.empty(n)
    x = np.empty(d)
    for i in range(n - 1):
        for q in range(d):
            x[q] = XP[q, i]
        sq_dists_from(x, XP, i + 1, n, row)
        pm = 0.0
        for j in range(n - 1 - i):
            g = gap[i + j]
            pm = g if g > pm else pm
            if row[j] <= pm:
                if row[j] < pm:
                    return False
                a, b = leaf[i], leaf[i + 1 + j]  # equal: fine only for the tree edge (a, b) itself
                edge = False
                for z in range(start[a], start[a + 1]):
                    edge |= nb[z] == b
                if not edge:
                    return False
    return True


@kernel(parallel=True)
def incremental_packed(X, starts, offsets, n_old, drop, edges, e_offsets, out_offsets, order, min_cluster_size,
                       min_samples, want_state, leaf, allow_single_cluster, epsilon):
    """One step over packed problems (rows starts[p]:offsets[p + 1] of X [N, d] f64; rows offsets[p]:starts[p] are
    skipped). Problem p with n_old[p] >= 0 is updated from its old unique MST over n_old[p] rows, the first drop[p]
    of them gone: columns e_offsets[p]:e_offsets[p + 1] of edges [3, E] f64 (rows: u, v as integral values, squared
    weight; sorted by weight). n_old[p] = -1, or a tie, means full recomputation, after which the MST is kept
    (checked unique) where want_state[p] and min_samples == 1. -> labels [N] int64 (-1 on skipped rows), the new
    MSTs as out [3, out_offsets[-1]] f64 in the same layout, packed by out_offsets (n_p - 1 columns each; filled only
    where ok), ok [P] bool (MST stored and provably unique)."""
    P = offsets.shape[0] - 1
    labels = np.full(X.shape[0], -1, dtype=np.int64)
    out = np.empty((3, out_offsets[-1]))
    ok = np.zeros(P, dtype=np.bool_)
    for t in prange(order.shape[0]):
        p = order[t]
        a, b, o = starts[p], offsets[p + 1], out_offsets[p]
        n = b - a
        good = False
        if n_old[p] >= 0:
            ea, eb = e_offsets[p], e_offsets[p + 1]
            s, dd, w, good = incremental_mst(X[a:b], n_old[p], drop[p], edges[0, ea:eb].astype(np.int64),
                                             edges[1, ea:eb].astype(np.int64), edges[2, ea:eb])
            if good and n >= 2:
                out[0, o:o + n - 1], out[1, o:o + n - 1], out[2, o:o + n - 1] = s, dd, w
                if n >= max(2, min_cluster_size):
                    labels[a:b] = labels_from_sorted_mst(s, dd, w, min_cluster_size, leaf, allow_single_cluster,
                                                         epsilon)
        if not good and n >= 2 and (n >= min_cluster_size or (want_state[p] and min_samples == 1)):
            s, dd, w = mst_one(X[a:b], min_samples)  # the full engine's MST
            good = want_state[p] and min_samples == 1 and is_unique_mst_sorted(X[a:b], s, dd, w)
            if good:
                out[0, o:o + n - 1], out[1, o:o + n - 1], out[2, o:o + n - 1] = _sorted_by_weight(s, dd, w)
            if n >= max(2, min_cluster_size):
                labels[a:b] = tree_labels(s, dd, w, min_cluster_size, leaf, allow_single_cluster, epsilon)
        elif not good and n < 2 and want_state[p] and min_samples == 1:
            good = True  # no edges: trivially unique
        ok[p] = good
    return labels, out, ok
