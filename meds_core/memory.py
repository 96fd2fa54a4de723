"""ErrorMemory: per-(prompt, correctness) memory of rollout features, cluster sizes, persistence.

One RL step (SPEC.md section 3), for every memory the batch touches:
  1. each new row is labelled by a k-NN vote (cosine) over the STORED rows' labels;
  2. its cluster size is the number of STORED rows with that label (rows of this step never count);
  3. the new rows are appended, the oldest rows beyond ``max_rows_per_memory`` are dropped, and every
     touched memory is re-clustered through ONE call into the clustering backend.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from meds_core._arrays import correctness_groups, to_numpy
from meds_core._memory_io import read_state, write_state
from meds_core.clustering import HDBSCANParams, cluster_batch, knn_vote, resolve_backend
from meds_core.clustering._batch import needs_backend
from meds_core.config import MEDSConfig

Key = Union[str, int]
FORMAT_VERSION = 1
# Fields that change what the memory stores or how it labels rows: a saved state only loads under equal values.
_STATE_FIELDS = ("cluster_method", "min_cluster_size", "min_samples", "knn_k", "knn_metric", "l2_normalize",
                 "max_rows_per_memory")


@dataclass
class StepResult:
    """What one :meth:`ErrorMemory.update` did to each row of the batch (all arrays of length B).

    ``cluster_size`` (int64): stored members of the row's voted cluster (0 for skipped rows and first visits;
    under ``noise_policy='ignore'`` 0 for rows voted into noise). ``label`` (int64): the voted label (-1 noise,
    also -1 for skipped rows and first visits). ``group`` (int8): 1 correct, 0 wrong, -1 unknown.
    ``valid`` (bool): the row was stored (finite feature and known correctness).
    ``stats``: step statistics (``cluster_seconds``, ``memories_touched``, ``rows_stored``, ``rows_added``,
    ``skipped_rows``, ``skipped_nonfinite``, ``skipped_unknown``, ``backend_calls``, ``step``).
    """

    cluster_size: np.ndarray
    label: np.ndarray
    group: np.ndarray
    valid: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


class _Slot:
    """One (key, group) memory: rows [n, F] float32 in arrival order, their unit rows and labels."""

    __slots__ = ("rows", "unit", "labels", "counts")

    def __init__(self, rows: np.ndarray, unit: np.ndarray, labels: np.ndarray):
        self.rows, self.unit = rows, unit
        self.set_labels(labels)

    def set_labels(self, labels: np.ndarray) -> None:
        self.labels = labels
        self.counts = np.bincount(labels + 1) if len(labels) else np.zeros(1, np.int64)  # counts[label + 1]

    def size_of(self, label: np.ndarray) -> np.ndarray:
        """Stored members carrying each label. label: [m] int64 -> [m] int64."""
        idx = label + 1
        return np.where(idx < len(self.counts), self.counts[np.minimum(idx, len(self.counts) - 1)], 0)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float64; zero rows stay zero. [n, F] -> [n, F] float64."""
    x = x.astype(np.float64)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    return x / np.where(norm > 0, norm, 1.0)[:, None]


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
        ``noise_policy``, ``max_rows_per_memory`` and ``backend``.

    Notes
    -----
    Bounded: after a step appends its rows to a memory, rows beyond ``max_rows_per_memory`` are dropped
    oldest first, then the memory is re-clustered, so stored labels always describe exactly the stored rows.
    """

    def __init__(self, config: MEDSConfig | None = None):
        self.config = config if config is not None else MEDSConfig()
        self._backend = resolve_backend(self.config.backend)
        self._params = HDBSCANParams(self.config.min_cluster_size, self.config.min_samples)
        self._slots: dict[tuple[Key, int], _Slot] = {}
        self._dim: int | None = None
        self._step = 0

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key_group: tuple[Key, int]) -> bool:
        key, group = key_group
        return (_normalize_key(key), int(group)) in self._slots

    def keys(self) -> list[tuple[Key, int]]:
        """(prompt key, group) of every memory, in creation order."""
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
        return np.empty(0, np.int64) if slot is None else slot.labels.copy()

    @property
    def num_rows(self) -> int:
        """Rows stored over all memories."""
        return sum(len(s.labels) for s in self._slots.values())

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
        keys, feats, groups = self._check_inputs(keys, features, correct)
        B = len(keys)
        finite = np.isfinite(feats).all(axis=1)
        known = groups >= 0
        valid = finite & known
        batch = self._split_by_memory(keys, feats, groups, valid)
        label, size = self._assign(batch, B)
        seconds, calls = self._recluster(self._appended(batch))
        self._step += 1
        stats = {
            "step": self._step,
            "cluster_seconds": seconds,
            "backend_calls": calls,
            "memories_touched": len(batch),
            "rows_added": int(valid.sum()),
            "rows_stored": self.num_rows,
            "memories": len(self._slots),
            "skipped_rows": int(B - valid.sum()),
            "skipped_nonfinite": int((~finite & known).sum()),
            "skipped_unknown": int((~known).sum()),
        }
        return StepResult(cluster_size=size, label=label, group=groups, valid=valid, stats=stats)

    def _check_inputs(self, keys: Any, features: Any, correct: Any) -> tuple[list[Key], np.ndarray, np.ndarray]:
        """Validated keys (len B), features [B, F] float32 and groups [B] int8; fixes F on first use."""
        keys = keys.tolist() if hasattr(keys, "tolist") else list(keys)  # numpy array or tensor of ids
        B = len(keys)
        feats = to_numpy(features, "features")
        if B == 0 and feats.size == 0:
            feats = feats.reshape(0, self._dim or 0)
        if feats.ndim != 2 or feats.shape[0] != B:
            raise ValueError(f"features has shape {feats.shape}; expected ({B}, F): one row per key.")
        if B and not np.issubdtype(feats.dtype, np.floating):
            raise ValueError(f"features has dtype {feats.dtype}; pass floating-point features.")
        groups = correctness_groups(correct, B)
        if not all(type(k) is str or type(k) is int for k in keys):
            keys = [_normalize_key(k) for k in keys]
        if B and self._dim is None:
            self._dim = feats.shape[1]
        elif B and feats.shape[1] != self._dim:
            raise ValueError(f"features have {feats.shape[1]} columns but this memory stores {self._dim}; "
                             "keep use_last_n_layers fixed for the life of a memory.")
        return keys, feats.astype(np.float32, copy=False), groups

    def _split_by_memory(self, keys: list[Key], feats: np.ndarray, groups: np.ndarray, valid: np.ndarray) \
            -> list[tuple[tuple[Key, int], np.ndarray, np.ndarray, np.ndarray]]:
        """(memory key, batch rows [m] int64, feature rows [m, F] float32, unit rows [m, F] float64) per touched
        memory, memories in order of first appearance, rows in batch order."""
        vidx = np.flatnonzero(valid)
        index: dict[tuple[Key, int], int] = {}
        mem = np.fromiter((index.setdefault((keys[b], g), len(index))
                           for b, g in zip(vidx.tolist(), groups[vidx].tolist())), dtype=np.int64, count=len(vidx))
        order = np.argsort(mem, kind="stable")
        cuts = np.cumsum(np.bincount(mem, minlength=len(index)))[:-1]
        rows = np.split(vidx[order], cuts)
        units = np.split(_unit_rows(feats[vidx[order]]), cuts)
        return [(mk, r, feats[r], u) for mk, r, u in zip(index, rows, units)]

    def _assign(self, batch, B: int) -> tuple[np.ndarray, np.ndarray]:
        """Steps 1-2: k-NN vote over STORED rows and the size of the voted cluster. -> label, size [B] int64.
        Rows of first-visited memories and skipped rows keep label -1 and size 0."""
        label = np.full(B, -1, dtype=np.int64)
        size = np.zeros(B, dtype=np.int64)
        old = [(self._slots[mk], rows, unit) for mk, rows, _, unit in batch if mk in self._slots]
        if self.config.cluster_method == "single":
            for slot, rows, _ in old:
                label[rows] = 0
                size[rows] = len(slot.labels)
        elif old:
            voted = knn_vote([s.unit for s, _, _ in old], [s.labels for s, _, _ in old], [u for _, _, u in old],
                             self.config.knn_k)
            for (slot, rows, _), v in zip(old, voted):
                label[rows] = v
                size[rows] = slot.size_of(v)
            if self.config.noise_policy == "ignore":
                size[label == -1] = 0
        return label, size

    def _appended(self, batch) -> list[tuple[tuple[Key, int], np.ndarray, np.ndarray]]:
        """Step 3a: (memory key, rows, unit rows) after appending the batch and dropping the oldest beyond the cap."""
        cap = self.config.max_rows_per_memory
        out = []
        for mk, _, new_rows, new_unit in batch:
            slot = self._slots.get(mk)
            if slot is None:
                out.append((mk, new_rows[-cap:], new_unit[-cap:]))
            else:
                out.append((mk, np.concatenate([slot.rows, new_rows])[-cap:],
                            np.concatenate([slot.unit, new_unit])[-cap:]))
        return out

    def _recluster(self, touched: list[tuple[tuple[Key, int], np.ndarray, np.ndarray]]) -> tuple[float, int]:
        """Step 3b: store the rows of every touched memory and relabel them all with ONE clustering call."""
        if self.config.cluster_method == "single":
            labels = [np.zeros(len(r), dtype=np.int64) for _, r, _ in touched]
            seconds, calls = 0.0, 0
        else:
            problems = [u if self.config.l2_normalize else r.astype(np.float64) for _, r, u in touched]
            t0 = time.perf_counter()
            labels = cluster_batch(problems, self._params, self._backend)
            seconds = time.perf_counter() - t0
            calls = int(any(needs_backend(len(p), self._params) for p in problems))
        for (mk, r, u), lab in zip(touched, labels):
            slot = self._slots.get(mk)
            if slot is None:
                self._slots[mk] = _Slot(r, u, lab)
            else:
                slot.rows, slot.unit = r, u
                slot.set_labels(lab)
        return seconds, calls

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the stream bit-identically, as numpy arrays and plain values."""
        slots = list(self._slots.items())
        dim = self._dim or 0
        return {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "dim": dim,
            "step": self._step,
            "keys": [k for (k, _), _ in slots],
            "groups": np.asarray([g for (_, g), _ in slots], dtype=np.int8),
            "lengths": np.asarray([len(s.labels) for _, s in slots], dtype=np.int64),
            "rows": np.concatenate([s.rows for _, s in slots]) if slots else np.empty((0, dim), np.float32),
            "labels": np.concatenate([s.labels for _, s in slots]) if slots else np.empty(0, np.int64),
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Replace this memory's content by ``state`` (from :meth:`state_dict`).

        With ``strict`` the saved config must agree with this memory's on the fields that decide what is
        stored and how rows are labelled; pass ``strict=False`` to accept a different config knowingly.
        """
        version = state.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"memory state has format_version {version!r}; this meds_core reads {FORMAT_VERSION}.")
        saved = state["config"]
        if strict:
            diff = {f: (saved.get(f), getattr(self.config, f)) for f in _STATE_FIELDS
                    if saved.get(f) != getattr(self.config, f)}
            if diff:
                raise ValueError(f"saved memory was built with different settings {diff} (saved, current); use "
                                 "ErrorMemory.load(path) to take the saved config, or load_state_dict(state, "
                                 "strict=False).")
        keys, groups, lengths = list(state["keys"]), np.asarray(state["groups"]), np.asarray(state["lengths"])
        rows, labels = np.asarray(state["rows"], dtype=np.float32), np.asarray(state["labels"], dtype=np.int64)
        if not (len(keys) == len(groups) == len(lengths)) or lengths.sum() != len(rows) or len(rows) != len(labels):
            raise ValueError("memory state is inconsistent: keys/groups/lengths/rows/labels do not line up.")
        slots: dict[tuple[Key, int], _Slot] = {}
        ends = np.cumsum(lengths)
        for key, group, end, n in zip(keys, groups.tolist(), ends.tolist(), lengths.tolist()):
            r = rows[end - n:end].copy()
            slots[(_normalize_key(key), int(group))] = _Slot(r, _unit_rows(r), labels[end - n:end].copy())
        self._slots = slots
        self._dim = int(state["dim"]) or None
        self._step = int(state["step"])

    def save(self, path: str) -> None:
        """Write the memory atomically (temp file + rename) in the compact checksummed binary format."""
        write_state(path, self.state_dict())

    @classmethod
    def load(cls, path: str, config: MEDSConfig | None = None) -> "ErrorMemory":
        """Read a file written by :meth:`save`; the saved config is used unless ``config`` is given."""
        state = read_state(path)
        if config is None:
            config = MEDSConfig.from_dict(state["config"])
        memory = cls(config)
        memory.load_state_dict(state, strict=True)
        return memory

    def __repr__(self) -> str:
        fields = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)
                  if f.name in ("cluster_method", "backend", "max_rows_per_memory")}
        return f"ErrorMemory(memories={len(self)}, rows={self.num_rows}, step={self._step}, {fields})"
