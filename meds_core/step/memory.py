"""ErrorMemory: per-(prompt, correctness) memory of rollout features, cluster sizes, persistence.

One RL step, for every memory the batch touches:
  1. each new row is labelled by a k-NN vote (cosine) over the STORED rows' labels;
  2. its cluster size is the number of STORED rows with that label (rows of this step never count);
  3. the new rows are appended, the oldest rows beyond ``max_rows_per_memory`` are dropped, and every
     touched memory is re-clustered through ONE call into the clustering backend;
  4. while more than ``max_total_rows`` rows are stored, the least recently visited prompt is evicted whole
     (both its correctness memories); prompts of the current batch are never evicted.

Storage: rows float32 and labels int32 per row between steps (the unit rows used by the vote and the clustering are
recomputed, in float64, for the memories a step touches, into one buffer that is kept for the next step: 8 bytes per
feature per row of the largest step so far); with the numba backend also each memory's state for the incremental
clustering (``min_samples = 1``: its MST, n - 1 edges of 24 bytes; ``min_samples > 1``: each row's ``min_samples``
nearest rows, 12 bytes each), kept in memory only, never in the file (a loaded memory rebuilds it on its first
touch).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

import numpy as np

from meds_core.clustering import HDBSCANParams, backend_for, rows_packed
from meds_core.step._arrays import correctness_groups, to_numpy
from meds_core.step._memory_io import read_state, write_state
from meds_core.step.config import MEDSConfig
from meds_core.step.memory_file import FORMAT_VERSION, MemoryFileError, check_state, settings_mismatch

Key = Union[str, int]
__all__ = ["FORMAT_VERSION", "ErrorMemory", "MemoryFileError", "StepResult"]


@dataclass
class StepResult:
    """What one :meth:`ErrorMemory.update` did to each row of the batch (all arrays of length B).

    ``cluster_size`` (int64): stored members of the row's voted cluster (0 for skipped rows and first visits;
    under ``noise_policy='ignore'`` 0 for rows voted into noise). ``label`` (int64): the voted label (-1 noise,
    also -1 for skipped rows and first visits). ``group`` (int8): 1 correct, 0 wrong, -1 unknown.
    ``valid`` (bool): the row was stored (finite feature and known correctness).
    ``stats``: step statistics (``cluster_seconds``, ``memories_touched``, ``rows_stored``, ``rows_added``,
    ``skipped_rows``, ``skipped_nonfinite``, ``skipped_unknown``, ``backend_calls``, ``step``,
    ``evicted_prompts``, ``evicted_rows``).
    """

    cluster_size: np.ndarray
    label: np.ndarray
    group: np.ndarray
    valid: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


_INCREMENTAL_FROM = 0  # memories above this many rows (after the step) cluster incrementally; see _cluster_incremental
def _empty_state(min_samples: int) -> tuple[np.ndarray, ...]:
    """The incremental clustering state of no rows: an empty MST (min_samples 1) or empty neighbour lists."""
    if min_samples == 1:
        return np.empty((3, 0))
    return np.empty((min_samples, 0)), np.empty((min_samples, 0), np.int32)


def _capacity(keep: int, m: int) -> int:
    """Buffer rows for a memory of ``keep`` rows that grows by ``m`` per step: amortised growth, and a full
    memory slides in place for about ``keep / 2m`` steps before it moves to fresh buffers."""
    return keep + max(keep // 2, 2 * m)


class _Slot:
    """One (key, group) memory: rows [n, F] float32 in arrival order and their int32 labels.

    Rows live in the window ``[start, start + n)`` of a capacity buffer, so that a step appends in place and
    eviction only moves ``start``; :meth:`staged` writes after the window or into a fresh buffer, never into
    rows this slot shows, and the memory moves the window once the step has succeeded.
    """

    __slots__ = ("row_buf", "start", "n", "labels", "state", "state_wait")

    def __init__(self, row_buf: np.ndarray, start: int, n: int, labels: np.ndarray | None):
        self.row_buf, self.start, self.n, self.labels = row_buf, start, n, labels
        self.state = None  # the incremental engine's state of these rows (hdbscan_incremental), or None
        self.state_wait = 0  # touches left before rebuilding a lost MST is tried again (ties made it fail)

    @classmethod
    def holding(cls, rows: np.ndarray, labels: np.ndarray | None, room: int) -> "_Slot":
        """A slot storing rows [n, F] float32 and labels [n] int32 in a buffer of ``room`` rows."""
        n = len(rows)
        row_buf = np.empty((room, rows.shape[1]), np.float32)
        row_buf[:n] = rows
        return cls(row_buf, 0, n, labels)

    @property
    def rows(self) -> np.ndarray:
        return self.row_buf[self.start:self.start + self.n]

    def staged(self, rows: np.ndarray, cap: int) -> tuple[_Slot, int, int]:
        """Append rows [m, F] float32 and keep the newest ``cap`` rows, without changing what this slot shows.
        -> (slot holding the buffer, start, n) of the new window: this slot when the rows fit after its window
        (written there), else a new slot on a fresh buffer."""
        m, end = rows.shape[0], self.start + self.n
        keep = self.n + m if self.n + m < cap else cap
        if end + m <= self.row_buf.shape[0]:
            self.row_buf[end:end + m] = rows
            return self, end + m - keep, keep
        old = max(keep - m, 0)
        moved = _Slot.holding(np.concatenate([self.row_buf[end - old:end], rows[m - (keep - old):]]), None,
                              _capacity(keep, m))
        return moved, 0, keep


class _Batch(NamedTuple):
    """The valid rows of one batch grouped by memory: M memories, V rows."""

    keys: list[tuple[Key, int]]  # (prompt key, group) of each memory, in order of first appearance
    counts: np.ndarray  # [M] int64 rows per memory
    rows: np.ndarray  # [V] int64 batch index, grouped by memory, batch order within a memory
    feats: np.ndarray  # [V, F] float32


class _StepRows(NamedTuple):
    """Every touched memory's stored rows, then its batch rows, as float64, packed: memory i at rows
    offsets[i]:offsets[i + 1], of which the first stored[i] were stored before this step."""

    unit: np.ndarray  # [N, F] float64 L2-normalised: the vote's rows (and the clustering's under l2_normalize)
    rows: np.ndarray  # [N, F] float64 the clustering's rows: ``unit`` under l2_normalize, else the rows as stored
    offsets: np.ndarray  # [M + 1] int64
    stored: np.ndarray  # [M] int64


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float64; zero rows stay zero. [n, F] float32 -> [n, F] float64, bit for bit as
    the same rows come out of :meth:`ErrorMemory._step_rows` (one kernel: :func:`meds_core.clustering.rows_packed`)."""
    return rows_packed([np.asarray(x, dtype=np.float32)], x.shape[1])[0]


def _normalize_key(key: Any) -> Key:
    if isinstance(key, (bool, np.bool_)):
        raise TypeError(f"prompt key {key!r} is a bool; use a str or int id (e.g. the dataset index).")
    if isinstance(key, (str, int)):
        return key
    if isinstance(key, np.integer):
        return int(key)
    if isinstance(key, np.str_):
        return str(key)
    raise TypeError(f"prompt key {key!r} has type {type(key).__name__}; keys must be str or int (a dataset "
                    "uid, or meds_core.stable_prompt_key(prompt_text)).")


class ErrorMemory:
    """Per-(prompt key, correctness group) memory of rollout features with cluster sizes.

    Parameters
    ----------
    config : MEDSConfig, optional
        Uses ``cluster_method``, ``min_cluster_size``, ``min_samples``, ``knn_k``, ``l2_normalize``,
        ``noise_policy``, ``max_rows_per_memory``, ``max_total_rows`` and ``backend``; the feature settings are
        saved with the memory and checked on load.

    Notes
    -----
    Bounded: after a step appends its rows to a memory, rows beyond ``max_rows_per_memory`` are dropped
    oldest first, then the memory is re-clustered, so stored labels always describe exactly the stored rows; then
    least recently visited prompts are evicted whole while more than ``max_total_rows`` rows are stored.

    Re-clustering is incremental where the backend offers it (numba), with labels bit-identical to full
    recomputation (the attribute ``_incremental = False`` switches it off, for comparisons). With ``min_samples = 1``
    each memory keeps its MST and a step costs O(n * m * d) for m new rows instead of O(n^2 * d); with
    ``min_samples > 1`` each memory keeps its rows' nearest neighbours, so only the core distances are incremental
    and Prim's O(n^2 * d) tree remains. Full recomputation otherwise: other backends (GPU, library loops), a
    memory's first touch after :meth:`load`, and (``min_samples = 1``) memories whose MST is not unique (exact ties)
    and memories at a cap too small for reconnecting the MST after the FIFO drop to pay (fewer than 192 + 16 * drop
    rows: there the drop is recomputed in full every step and no MST is kept).
    """

    def __init__(self, config: MEDSConfig | None = None):
        self.config = config if config is not None else MEDSConfig()
        # a missing library fails here, not at the first step (the 'single' method never clusters)
        self._engine = backend_for(self.config.backend, load=self.config.cluster_method != "single")
        self._backend = self._engine.name
        self._params = HDBSCANParams(self.config.min_cluster_size, self.config.min_samples)
        # numba backend: update each memory's clustering state from its new rows (exact; see _cluster_incremental).
        # A switch for benchmarks and tests: False recomputes every touched memory in full.
        self._incremental = True
        self._slots: dict[tuple[Key, int], _Slot] = {}
        self._dim: int | None = None
        self._step = 0
        self._total = 0  # rows stored over all memories
        self._scratch: np.ndarray | None = None  # float64 rows of the largest step so far, rewritten every step

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key_group: tuple[Key, int]) -> bool:
        key, group = key_group
        return (_normalize_key(key), int(group)) in self._slots

    def keys(self) -> list[tuple[Key, int]]:
        """(prompt key, group) of every memory, least recently visited prompt first (the eviction order)."""
        return list(self._slots)

    def rows(self, key: Key, group: int) -> np.ndarray:
        """Stored feature rows of one memory, oldest first: ndarray [n, F] float32 (a copy)."""
        slot = self._slots.get((_normalize_key(key), int(group)))
        if slot is None:
            return np.empty((0, self._dim or 0), np.float32)
        return slot.rows.copy()

    def labels(self, key: Key, group: int) -> np.ndarray:
        """Cluster labels of the stored rows of one memory: ndarray [n] int64 (noise -1)."""
        slot = self._slots.get((_normalize_key(key), int(group)))
        return np.empty(0, np.int64) if slot is None else slot.labels.astype(np.int64)

    @property
    def num_rows(self) -> int:
        """Rows stored over all memories (bounded by ``max_total_rows`` after every update)."""
        return self._total

    @property
    def step(self) -> int:
        """Number of updates applied so far."""
        return self._step

    # ------------------------------------------------------------------ one RL step
    def update(self, keys: Sequence[Any], features: Any, correct: Any) -> StepResult:
        """Assign, size, append and re-cluster one batch of rollouts.

        Parameters
        ----------
        keys : sequence of str or int, length B
            Stable prompt key of each rollout (an int array or tensor of dataset ids works too).
        features : array-like of shape (B, F), float
            Numpy array or torch tensor (any device). Rows with NaN/inf are skipped and counted.
        correct : array-like of shape (B,)
            1 / True (correct), 0 / False (wrong), -1 (unknown: skipped and counted).

        Returns
        -------
        StepResult
        """
        if self.config.backend == "auto":  # 'cuda' for features on a GPU
            self._engine = backend_for("auto", features, load=self.config.cluster_method != "single")
            self._backend = self._engine.name
        keys, feats, groups = self._check_inputs(keys, features, correct)
        B = len(keys)
        finite = np.isfinite(feats).all(axis=1)
        known = groups >= 0
        valid = finite & known
        batch = self._split_by_memory(keys, feats, groups, valid)
        step_rows = self._step_rows(batch)
        label, size = self._assign(batch, B, step_rows)
        seconds, calls = self._recluster(batch, step_rows)
        evicted, evicted_rows = self._evict({k for k, _ in batch.keys})
        if B:
            self._dim = feats.shape[1]  # fixed by the first non-empty update that succeeds
        self._step += 1
        stats = {
            "step": self._step,
            "cluster_seconds": seconds,
            "backend_calls": calls,
            "memories_touched": len(batch.keys),
            "rows_added": int(valid.sum()),
            "rows_stored": self.num_rows,
            "memories": len(self._slots),
            "skipped_rows": int(B - valid.sum()),
            "skipped_nonfinite": int((~finite & known).sum()),
            "skipped_unknown": int((~known).sum()),
            "evicted_prompts": evicted,
            "evicted_rows": evicted_rows,
        }
        return StepResult(cluster_size=size, label=label, group=groups, valid=valid, stats=stats)

    def _check_inputs(self, keys: Any, features: Any, correct: Any) -> tuple[list[Key], np.ndarray, np.ndarray]:
        """Validated keys (len B), features [B, F] float32 and groups [B] int8 (F as stored, if any)."""
        if isinstance(keys, (str, bytes)):
            raise TypeError(f"keys is one {type(keys).__name__} ({keys[:40]!r}); pass a sequence with one prompt key "
                            "per rollout, e.g. [key] * B.")
        keys = keys.tolist() if hasattr(keys, "tolist") else list(keys)  # numpy array or tensor of ids
        B = len(keys)
        feats = to_numpy(features, "features")
        if B == 0 and feats.size == 0:
            feats = feats.reshape(0, self._dim or 0)
        if feats.ndim != 2 or feats.shape[0] != B:
            raise ValueError(f"features has shape {feats.shape}; expected ({B}, F): one row per key.")
        if B and not np.issubdtype(feats.dtype, np.floating):
            raise ValueError(f"features has dtype {feats.dtype}; pass floating-point features.")
        if B and feats.shape[1] == 0:
            raise ValueError(f"features has shape {feats.shape}: 0 features per rollout; pass at least one column "
                             "(use_last_n_layers values).")
        groups = correctness_groups(correct, B)
        if not set(map(type, keys)) <= {str, int}:
            keys = [_normalize_key(k) for k in keys]
        if B and self._dim is not None and feats.shape[1] != self._dim:
            raise ValueError(f"features have {feats.shape[1]} columns but this memory stores {self._dim}; "
                             "keep use_last_n_layers fixed for the life of a memory.")
        return keys, feats.astype(np.float32, copy=False), groups

    def _split_by_memory(self, keys: list[Key], feats: np.ndarray, groups: np.ndarray, valid: np.ndarray) -> _Batch:
        """The valid rows grouped by (key, group) memory: memories in order of first appearance, rows in batch order."""
        ids = dict.fromkeys(keys)  # key -> id, in order of first appearance
        for i, key in enumerate(ids):
            ids[key] = i
        vidx = np.flatnonzero(valid)
        code = np.fromiter(map(ids.__getitem__, keys), dtype=np.int64, count=len(keys))[vidx] * 2 + groups[vidx]
        uniq, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        appear = np.argsort(first)
        rank = np.empty_like(appear)
        rank[appear] = np.arange(len(appear))
        mem = rank[inverse]
        key_of = list(ids)
        rows = vidx[np.argsort(mem, kind="stable")]
        return _Batch([(key_of[c >> 1], c & 1) for c in uniq[appear].tolist()], np.bincount(mem, minlength=len(uniq)),
                      rows, feats[rows])

    def _step_rows(self, batch: _Batch) -> _StepRows | None:
        """The float64 rows of the step (see :class:`_StepRows`), from one parallel pass over every touched memory's
        stored float32 rows and the batch's (None under the 'single' method, which needs none). The kernels are
        row-wise with a fixed order of operations, so every row comes out bit for bit as when it arrived (tests
        check this): the kept MSTs rely on it. Used by the vote (stored rows, queries) and the clustering (the kept
        stored rows and the new ones: the last rows of each memory's block)."""
        if self.config.cluster_method == "single":
            return None
        F, empty = batch.feats.shape[1], np.empty((0, batch.feats.shape[1]), np.float32)
        get = self._slots.get
        parts = [slot.rows if slot is not None and slot.n else empty for slot in map(get, batch.keys)]
        stored = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
        need = int(stored.sum()) + len(batch.feats)
        if self._scratch is None or self._scratch.shape[0] < need or self._scratch.shape[1] != F:
            self._scratch = np.empty((need + need // 4, F))  # reused by later steps: no page faults on fresh memory
        unit, offsets = rows_packed(parts, F, True, batch.feats, batch.counts, out=self._scratch)
        rows = unit if self.config.l2_normalize else rows_packed(parts, F, False, batch.feats, batch.counts)[0]
        return _StepRows(unit, rows, offsets, stored)

    def _assign(self, batch: _Batch, B: int, step_rows: _StepRows | None) -> tuple[np.ndarray, np.ndarray]:
        """Steps 1-2: k-NN vote over STORED rows and the size of the voted cluster. -> label, size [B] int64.
        Rows of first-visited memories and skipped rows keep label -1 and size 0. ``step_rows``: from
        :meth:`_step_rows`."""
        label = np.full(B, -1, dtype=np.int64)
        size = np.zeros(B, dtype=np.int64)
        slots = [self._slots.get(mk) for mk in batch.keys]
        old = [s for s in slots if s is not None and s.n]
        if not old:
            return label, size
        has = np.fromiter((s is not None and s.n > 0 for s in slots), dtype=bool, count=len(slots))
        counts = batch.counts[has]
        queries = np.repeat(has, batch.counts) if len(old) < len(slots) else slice(None)
        rows = batch.rows[queries]
        if self.config.cluster_method == "single":
            label[rows], size[rows] = 0, np.repeat([s.n for s in old], counts)
            return label, size
        unit, starts, stored = step_rows.unit, step_rows.offsets[:-1], step_rows.stored
        first_new = np.repeat(starts + stored - (np.cumsum(batch.counts) - batch.counts),
                              batch.counts) + np.arange(len(batch.rows))  # each batch row's place in ``unit``
        label[rows], size[rows] = self._engine.vote_rows(  # same rule, same results on every backend
            unit, starts[has], stored[has], np.concatenate([s.labels for s in old]).astype(np.int64),
            unit[first_new[queries]], counts, self.config.knn_k)
        if self.config.noise_policy == "ignore":
            size[label == -1] = 0
        return label, size

    def _staged(self, batch: _Batch) -> list[tuple[_Slot, int, int]]:
        """Step 3a: every touched memory after appending its batch rows and dropping the oldest beyond the cap, as
        (slot holding its buffers, window start, rows); no stored slot changes what it shows."""
        cap, get, feats = self.config.max_rows_per_memory, self._slots.get, batch.feats
        out, a = [], 0
        for mk, b in zip(batch.keys, np.cumsum(batch.counts).tolist()):
            slot = get(mk)
            if slot is None:
                keep = min(b - a, cap)
                out.append((_Slot.holding(feats[b - keep:b], None, _capacity(keep, b - a)), 0, keep))
            else:
                out.append(slot.staged(feats[a:b], cap))
            a = b
        return out

    def _recluster(self, batch: _Batch, step_rows: _StepRows | None) -> tuple[float, int]:
        """Step 3b: relabel every touched memory with ONE clustering call, then store them. Atomic: if the
        clustering raises, the memory is unchanged."""
        staged = self._staged(batch)
        if self.config.cluster_method == "single":
            labels = [np.zeros(n, dtype=np.int64) for _, _, n in staged]
            seconds, calls = 0.0, 0
        else:
            # memory i after the step: the last n_i rows of its block (stored rows beyond the cap are skipped)
            X, offsets = step_rows.rows, step_rows.offsets
            starts = offsets[1:] - np.fromiter((n for _, _, n in staged), dtype=np.int64, count=len(staged))
            t0 = time.perf_counter()
            if self._incremental and self._engine.supports_incremental(self._params):
                labels = self._cluster_incremental(batch, staged, X, offsets, starts)
            else:
                labels = self._engine.cluster([X[a:b] for a, b in zip(starts.tolist(), offsets[1:].tolist())],
                                              self._params)
                for slot, _, _ in staged:
                    slot.state = None
            seconds = time.perf_counter() - t0
            calls = int(any(self._engine.can_cluster(n, self._params) for _, _, n in staged))
        slots = self._slots
        for mk, (slot, start, n), lab in zip(batch.keys, staged, labels):
            old = slots.get(mk)  # the loop below puts every visited memory at the end
            self._total += n - (old.n if old is not None else 0)
            slot.start, slot.n, slot.labels = start, n, lab.astype(np.int32)
            slots[mk] = slot
        for key in dict.fromkeys(k for k, _ in batch.keys):  # a visited prompt moves to the end, both its groups
            for g in (0, 1):
                if (key, g) in slots:
                    slots[(key, g)] = slots.pop((key, g))
        return seconds, calls

    def _cluster_incremental(self, batch: _Batch, staged: list[tuple[_Slot, int, int]], X: np.ndarray,
                             offsets: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
        """Labels of the staged memories through the numba engine's incremental entry (one call), equal to full
        recomputation; each memory's state (``hdbscan_incremental``: its MST for ``min_samples = 1``, its rows'
        nearest neighbours otherwise) is kept on its slot and follows appends and FIFO drops at
        ``max_rows_per_memory``. What follows is about the MST; neighbour lists never fail and need no check (a
        loaded memory's are rebuilt on its first touch, at about twice the core-distance cost of a full clustering).

        The state is not in the memory file (format unchanged): a loaded memory is recomputed in full on its first
        touch and its MST rebuilt then, with an O(n^2 d) uniqueness check on top (1.31 ms against 1.13 ms for the full
        clustering of one 1024-row memory of the stream benchmark, d = 14, one thread, side by side on the shared
        2-core machine: about as long as the clustering itself, since Prim's for min_samples 1 skips the
        core-distance pass). A memory whose MST is not unique (bit-equal distances, e.g. three copies of a row) is
        recomputed in full; the rebuild is then retried only every 8th touch, so ties do not add the check every
        step. Memories of at most
        ``_INCREMENTAL_FROM`` rows are recomputed in full and keep no MST (the constant is 0: every memory keeps
        one); a memory seen for the first time above it starts from the empty MST, so its MST is built incrementally
        from its first rows and never needs the uniqueness check. Measured (kernel time per memory, one thread,
        256 memories gaining 16 rows, contended 2-core machine): incremental / full 27 / 16 us at n = 16, 51 / 42 at
        n = 32, 53 / 47 at n = 48, 63 / 69 at n = 64, 71 / 89 at n = 80; starting the MST at n = 80 instead (full
        clustering plus the uniqueness check) made that step 1.9x slower than full recomputation in the stream
        benchmark, more than the small-memory steps lose. (These kernel times were measured with the earlier
        Chin-Houck candidate filter; the leaf-order filter that replaced it is cheaper still.)"""
        M = len(staged)
        prevs = list(map(self._slots.get, batch.keys))
        new = np.fromiter((p is None for p in prevs), dtype=bool, count=M)
        had = np.fromiter((0 if p is None else p.n for p in prevs), dtype=np.int64, count=M)
        waited = np.fromiter((0 if p is None else p.state_wait for p in prevs), dtype=np.int64, count=M)
        wait = np.maximum(waited - 1, 0)
        kept = [None if p is None else p.state for p in prevs]
        n = offsets[1:] - starts  # rows after the step
        gone = had + batch.counts - n  # oldest rows dropped at the cap
        fits = ~new & (gone >= 0) & (gone <= had)
        drop = np.where(fits, gone, 0)
        has = fits & np.fromiter((s is not None for s in kept), dtype=bool, count=M)
        fresh = new & (n > _INCREMENTAL_FROM)  # a new memory: its state grows from the empty one
        n_old = np.where(has, had, np.where(fresh, 0, -1))
        empty = _empty_state(self._params.min_samples)
        old = [s if h else (empty if f else None) for s, h, f in zip(kept, has.tolist(), fresh.tolist())]
        want = ((wait == 0) & (n > _INCREMENTAL_FROM)).tolist()
        wait = wait.tolist()
        if not any(want) and not (has | fresh).any():  # nothing to update or build: the plain full engine
            for (slot, _, _), w in zip(staged, wait):
                slot.state, slot.state_wait = None, w
            return self._engine.cluster([X[a:b] for a, b in zip(starts.tolist(), offsets[1:].tolist())], self._params)
        labels, states = self._engine.cluster_incremental(X, n_old, old, self._params, drop, want, offsets=offsets,
                                                          starts=starts)
        for (slot, _, _), state, w, asked in zip(staged, states, wait, want):
            slot.state = state
            slot.state_wait = 8 if (asked and state is None) else w
        return labels

    def _evict(self, visited: set[Key]) -> tuple[int, int]:
        """Step 4: drop least recently visited prompts (both groups) while more than ``max_total_rows`` rows are
        stored; prompts in ``visited`` (this batch) stay. -> (prompts evicted, rows evicted)."""
        budget, slots = self.config.max_total_rows, self._slots
        prompts = rows = 0
        while self._total > budget and slots:
            key = next(iter(slots))[0]
            if key in visited:  # everything after it was visited this step too
                break
            for g in (0, 1):
                slot = slots.pop((key, g), None)
                if slot is not None:
                    self._total -= slot.n
                    rows += slot.n
            prompts += 1
        return prompts, rows

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the stream bit-identically, as numpy arrays and plain values: memories in
        recency order (least recently visited prompt first), ``rows`` float32 [N, dim], ``labels`` int32 [N]."""
        slots = list(self._slots.items())
        dim = self._dim or 0
        return {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "dim": dim,
            "step": self._step,
            "keys": [k for (k, _), _ in slots],
            "groups": np.asarray([g for (_, g), _ in slots], dtype=np.int8),
            "lengths": np.asarray([s.n for _, s in slots], dtype=np.int64),
            "rows": np.concatenate([s.rows for _, s in slots]) if slots else np.empty((0, dim), np.float32),
            "labels": np.concatenate([s.labels for _, s in slots]) if slots else np.empty(0, np.int64),
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Replace this memory's content by ``state`` (from :meth:`state_dict`), after checking it for meaning.

        Parameters
        ----------
        state : dict
            From :meth:`state_dict` (or a file read by :meth:`load`).
        strict : bool
            The saved config must agree with this memory's on the settings that define a stored row
            (``use_last_n_layers``, ``use_layer_diff``, ``final_norm``, ``answer_marker``, ``l2_normalize``) and
            how rows are labelled (clustering fields, ``max_rows_per_memory``). ``strict=False`` accepts a
            different config knowingly.

        Raises
        ------
        MemoryFileError
            The state is inconsistent (the message names the field), or its settings differ under ``strict``.
        """
        self._load_checked(check_state(state), strict)

    def _load_checked(self, state: dict[str, Any], strict: bool, source: str = "memory state") -> None:
        current = self.config.to_dict()
        diff = settings_mismatch(state["config"], current)
        if strict and diff:
            raise MemoryFileError(f"{source} was built with different settings {diff} (saved, current); a memory "
                                  "only means something under the feature and clustering settings that built it. "
                                  "Use the saved settings (ErrorMemory.load(path) without config), start a new "
                                  "memory, or pass strict=False to load it anyway.")
        rows, labels, lengths = state["rows"], state["labels"], state["lengths"]
        slots: dict[tuple[Key, int], _Slot] = {}
        ends = np.cumsum(lengths).tolist()
        for key, group, end, n in zip(state["keys"], state["groups"].tolist(), ends, lengths.tolist()):
            # A view of the loaded rows with no room after it: the first append moves it to its own buffer.
            slots[(_normalize_key(key), group)] = _Slot(rows[end - n:end], 0, n, labels[end - n:end])
        self._slots = slots
        self._total = int(lengths.sum())
        self._dim = state["dim"] or None
        self._step = state["step"]

    def save(self, path: str) -> None:
        """Write the memory atomically (temp file + rename) in the compact checksummed binary format.

        A symlink at ``path`` is followed; the file gets the umask's permissions; ``.meds_memory.*.tmp`` files
        left in the folder by killed saves are removed. Size: about ``rows * (4 * dim + 4)`` bytes plus the keys.
        """
        write_state(path, self.state_dict())

    @classmethod
    def load(cls, path: str, config: MEDSConfig | None = None, strict: bool = True) -> "ErrorMemory":
        """Read a file written by :meth:`save`, checked for bytes (SHA-256) and meaning (every field).

        The saved config is used unless ``config`` is given; then ``strict`` applies as in :meth:`load_state_dict`.
        Every failure (missing file, directory, corrupt, inconsistent, other settings) is a
        :class:`MemoryFileError`.
        """
        state = read_state(path)
        if config is None:
            config = MEDSConfig.from_dict(state["config"])
        memory = cls(config)
        memory._load_checked(state, strict, repr(str(path)))
        return memory

    def __repr__(self) -> str:
        fields = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)
                  if f.name in ("cluster_method", "backend", "max_rows_per_memory")}
        return f"ErrorMemory(memories={len(self)}, rows={self.num_rows}, step={self._step}, {fields})"
