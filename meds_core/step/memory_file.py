"""Meaning checks of a saved ErrorMemory state: every field against the data and the saved config.

The file layer (:mod:`meds_core.step._memory_io`) proves the bytes are the ones written; this module proves they
describe a memory this meds_core could have produced. Every failure is a :class:`MemoryFileError` that names the
field, the value found and what was expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FEATURE_FIELDS", "FORMAT_VERSION", "MemoryFileError", "check_state", "settings_mismatch"]

FORMAT_VERSION = 1
_CHUNK = 1 << 20  # rows per finiteness check: bounded scratch memory
# Settings that decide what a stored row means (the feature) or how rows are labelled: a saved state loads only
# under equal values unless the caller passes strict=False.
FEATURE_FIELDS = ("use_last_n_layers", "use_layer_diff", "final_norm", "answer_marker", "l2_normalize")
STATE_FIELDS = FEATURE_FIELDS + ("cluster_method", "min_cluster_size", "min_samples", "knn_k", "knn_metric",
                                 "max_rows_per_memory")


class MemoryFileError(ValueError):
    """A file or state that is not a loadable MEDS memory: missing, foreign, truncated, corrupt, from a newer
    version, or internally inconsistent (the message names the field)."""


def _fail(source: str, field: str, found: Any, expected: str) -> MemoryFileError:
    text = repr(found)
    if len(text) > 120:
        text = text[:117] + "..."
    return MemoryFileError(f"{source}: field {field!r} is {text}; expected {expected}. The memory was not loaded: "
                           "restore the file from another checkpoint.")


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _int_array(state: dict, name: str, source: str, n: int | None = None) -> np.ndarray:
    raw = state[name]
    try:
        arr = np.asarray(raw)
    except (ValueError, TypeError) as exc:
        raise _fail(source, name, raw, "a flat list of integers") from exc
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)) or arr.dtype == bool:
        raise _fail(source, name, raw, "a flat list of integers")
    if n is not None and len(arr) != n:
        raise _fail(source, name, f"<{len(arr)} values>", f"{n} values, one per (key, group) memory")
    return arr.astype(np.int64)


def check_state(state: Any, source: str = "memory state") -> dict[str, Any]:
    """Validate a state (``ErrorMemory.state_dict()`` or a file's content) and return it normalised.

    Parameters
    ----------
    state : dict
        ``format_version`` int, ``config`` dict, ``dim`` int, ``step`` int, ``keys`` list of M str/int,
        ``groups`` [M] 0/1, ``lengths`` [M] >= 0, ``rows`` [N, dim] float, ``labels`` [N] int >= -1.
    source : str
        What the state came from, for the messages (e.g. the file path).

    Returns
    -------
    dict
        The same fields with ``config`` a MEDSConfig dict (defaults filled in), ``groups`` int8 [M],
        ``lengths`` int64 [M], ``rows`` float32 [N, dim], ``labels`` int32 [N], ``dim``/``step`` int.

    Raises
    ------
    MemoryFileError
        Naming the first inconsistent field.
    """
    from meds_core.step.config import MEDSConfig

    if not isinstance(state, dict):
        raise _fail(source, "state", type(state).__name__, "a dict from ErrorMemory.state_dict()")
    missing = [f for f in ("format_version", "config", "dim", "step", "keys", "groups", "lengths", "rows", "labels")
               if f not in state]
    if missing:
        raise _fail(source, missing[0], "<missing>", "present (every field of ErrorMemory.state_dict())")
    version = state["format_version"]
    if not _is_int(version) or version != FORMAT_VERSION:
        raise _fail(source, "format_version", version, f"{FORMAT_VERSION} (the only version this meds_core reads)")
    if not isinstance(state["config"], dict):
        raise _fail(source, "config", state["config"], "a dict of MEDSConfig fields")
    try:
        config = MEDSConfig.from_dict(state["config"])
    except (ValueError, TypeError) as exc:
        raise MemoryFileError(f"{source}: field 'config' is not a valid MEDSConfig ({exc}). The memory was not "
                              "loaded: restore the file from another checkpoint.") from exc
    for name in ("dim", "step"):
        if not _is_int(state[name]) or state[name] < 0:
            raise _fail(source, name, state[name], "an integer >= 0")
    dim, step = int(state["dim"]), int(state["step"])
    keys = state["keys"]
    if not isinstance(keys, (list, tuple)):
        raise _fail(source, "keys", type(keys).__name__, "a list of prompt keys (str or int)")
    for k in keys:
        if not (isinstance(k, str) or _is_int(k)):
            raise _fail(source, "keys", k, "str or int prompt keys only")
    keys = [k if isinstance(k, str) else int(k) for k in keys]
    M = len(keys)
    groups = _int_array(state, "groups", source, M)
    if M and not np.isin(groups, (0, 1)).all():
        raise _fail(source, "groups", groups[~np.isin(groups, (0, 1))][:5].tolist(), "0 (wrong) or 1 (correct)")
    lengths = _int_array(state, "lengths", source, M)
    if M and lengths.min() < 0:
        raise _fail(source, "lengths", lengths[lengths < 0][:5].tolist(), "row counts >= 0")
    cap = config.max_rows_per_memory
    if M and lengths.max() > cap:
        raise _fail(source, "lengths", int(lengths.max()), f"at most max_rows_per_memory={cap} rows per memory")
    pairs = set(zip(keys, groups.tolist()))
    if len(pairs) != M:
        seen: set = set()
        dup = next(p for p in zip(keys, groups.tolist()) if p in seen or seen.add(p))
        raise _fail(source, "keys", dup, "each (key, group) memory at most once")
    try:
        rows = np.asarray(state["rows"])
        labels = np.asarray(state["labels"])
    except (ValueError, TypeError) as exc:
        raise _fail(source, "rows", "<not an array>", "a [rows, dim] float array") from exc
    if rows.ndim != 2 or (rows.size and not np.issubdtype(rows.dtype, np.floating)):
        raise _fail(source, "rows", f"<array {rows.shape} {rows.dtype}>", "a 2-D float array [rows, dim]")
    total = int(lengths.sum())
    if rows.shape[0] != total:
        raise _fail(source, "lengths", f"<sum {total}>", f"to sum to the {rows.shape[0]} stored rows")
    if rows.shape[1] != dim and (rows.shape[0] or rows.shape[1]):
        raise _fail(source, "dim", dim, f"the rows' width {rows.shape[1]}")
    if total and dim == 0:
        raise _fail(source, "dim", dim, "> 0 when rows are stored")
    if labels.ndim != 1 or (labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool)):
        raise _fail(source, "labels", f"<array {labels.shape} {labels.dtype}>", "a 1-D integer array")
    if len(labels) != total:
        raise _fail(source, "labels", f"<{len(labels)} labels>", f"{total}, one per stored row")
    if total and (labels.min() < -1 or labels.max() >= np.iinfo(np.int32).max):
        raise _fail(source, "labels", int(labels.min() if labels.min() < -1 else labels.max()),
                    "cluster labels >= -1 (noise) that fit int32")
    rows = rows.astype(np.float32, copy=False)
    finite = np.concatenate([np.isfinite(rows[a:a + _CHUNK].sum(axis=1, dtype=np.float64))
                             for a in range(0, total, _CHUNK)]) if total else np.ones(0, bool)
    if not finite.all():  # a float64 row sum is non-finite exactly when a float32 value is NaN or inf
        bad = int(np.flatnonzero(~finite)[0])
        raise _fail(source, "rows", f"<non-finite value in row {bad}>", "finite features (non-finite rows are "
                    "never stored)")
    return {"format_version": FORMAT_VERSION, "config": config.to_dict(), "dim": dim, "step": step, "keys": keys,
            "groups": groups.astype(np.int8), "lengths": lengths, "rows": rows, "labels": labels.astype(np.int32)}


def settings_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields of :data:`STATE_FIELDS` whose saved value differs from the current one: name -> (saved, current)."""
    return {f: (saved.get(f), current.get(f)) for f in STATE_FIELDS if saved.get(f) != current.get(f)}
