"""Compact, checksummed, atomically written binary file of an ErrorMemory state.

Layout (little-endian)::

    b"MEDSMEM\\0"                      8 bytes magic
    uint32 file format version        (FILE_VERSION)
    uint64 header length H
    H bytes UTF-8 JSON header          config, dim, step, keys, groups, lengths, array table
    array bytes                        rows float32 [N, F], labels int32 [N]
    32 bytes SHA-256                   of every byte before it

Keys keep their type (JSON ints stay ints, strings stay strings).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import struct
from typing import Any

import numpy as np

from meds_core.step.memory_file import MemoryFileError, check_state

__all__ = ["FILE_VERSION", "MAGIC", "MemoryFileError", "read_state", "write_state"]

MAGIC = b"MEDSMEM\0"
FILE_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
_DIGEST = 32
_TMP_PREFIX = ".meds_memory."
_TMP_SUFFIX = ".tmp"


def _remove_stale_tmp(folder: str) -> None:
    """Delete ``.meds_memory.*.tmp`` files left in ``folder`` by saves that were killed (one writer per folder)."""
    for stale in glob.glob(os.path.join(glob.escape(folder), _TMP_PREFIX + "*" + _TMP_SUFFIX)):
        try:
            os.unlink(stale)
        except FileNotFoundError:  # removed meanwhile
            pass


def write_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Serialise ``state`` (ErrorMemory.state_dict()) to ``path`` atomically: temp file, fsync, rename.

    A symlink at ``path`` is followed (its target is replaced, the link stays); the file gets the permissions
    the process umask gives a new file; temp files of earlier killed saves in the same folder are removed first.
    """
    rows = np.ascontiguousarray(state["rows"], dtype="<f4")
    labels = np.ascontiguousarray(state["labels"], dtype="<i4")
    header = {
        "format_version": state["format_version"],
        "config": state["config"],
        "dim": int(state["dim"]),
        "step": int(state["step"]),
        "keys": list(state["keys"]),
        "groups": np.asarray(state["groups"]).astype(int).tolist(),
        "lengths": np.asarray(state["lengths"]).astype(int).tolist(),
        "arrays": {"rows": [list(rows.shape), rows.nbytes], "labels": [list(labels.shape), labels.nbytes]},
    }
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-(_PREFIX.size + len(head)) % 16)  # JSON ignores trailing spaces; the arrays start aligned
    prefix = _PREFIX.pack(MAGIC, FILE_VERSION, len(head))
    digest = hashlib.sha256(prefix)
    for part in (head, rows.data, labels.data):
        digest.update(part)
    path = os.path.realpath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    _remove_stale_tmp(folder)
    tmp = os.path.join(folder, f"{_TMP_PREFIX}{secrets.token_hex(6)}{_TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any new file
    try:
        with os.fdopen(fd, "wb") as f:
            for part in (prefix, head, rows.data, labels.data, digest.digest()):
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _array_entry(arrays: Any, name: str, path: str) -> tuple[list[int], int]:
    entry = arrays.get(name) if isinstance(arrays, dict) else None
    ok = (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list)
          and all(type(d) is int and d >= 0 for d in entry[0]) and type(entry[1]) is int and entry[1] >= 0)
    if not ok:
        raise MemoryFileError(f"{path!r}: header field 'arrays.{name}' is {entry!r}; expected [shape, nbytes]. "
                              "Restore the file from another checkpoint.")
    return entry[0], entry[1]


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a file written by :func:`write_state`; raise MemoryFileError if it is not one.

    Returns the state checked by :func:`meds_core.step.memory_file.check_state` (rows float32, labels int32).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)  # read into a writable buffer: the arrays view it
            size = f.readinto(data)
        del data[size:]
    except FileNotFoundError as exc:
        raise MemoryFileError(f"{path!r} does not exist; pass the path of a file written by ErrorMemory.save().") \
            from exc
    except IsADirectoryError as exc:
        raise MemoryFileError(f"{path!r} is a directory; pass the memory file inside it (e.g. "
                              f"{os.path.join(path, 'meds_memory.bin')!r}).") from exc
    except OSError as exc:
        raise MemoryFileError(f"{path!r} cannot be read ({exc.strerror or exc}); check the path and its "
                              "permissions.") from exc
    if len(data) < _PREFIX.size + _DIGEST or not data.startswith(MAGIC):
        raise MemoryFileError(f"{path!r} is not a MEDS memory file (no {MAGIC!r} magic); pass a file written by "
                              "ErrorMemory.save().")
    _, version, head_len = _PREFIX.unpack_from(data)
    if version > FILE_VERSION:
        raise MemoryFileError(f"{path!r} has file version {version}, newer than this meds_core reads "
                              f"({FILE_VERSION}); upgrade meds_core.")
    if version < 1:
        raise MemoryFileError(f"{path!r} has file version {version}; this meds_core reads versions 1..{FILE_VERSION}.")
    body, digest = memoryview(data)[:-_DIGEST], bytes(data[-_DIGEST:])
    if hashlib.sha256(body).digest() != digest:
        raise MemoryFileError(f"{path!r} is corrupt or truncated (SHA-256 checksum mismatch); restore it from "
                              "another checkpoint.")
    start = _PREFIX.size + head_len
    if start > len(body):
        raise MemoryFileError(f"{path!r}: header length {head_len} runs past the end of the file.")
    try:
        header = json.loads(bytes(body[_PREFIX.size:start]).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 / JSON, or nesting deeper than Python's stack
        raise MemoryFileError(f"{path!r}: the header is not valid JSON ({type(exc).__name__}); restore the file "
                              "from another checkpoint.") from exc
    if not isinstance(header, dict):
        raise MemoryFileError(f"{path!r}: the header is a {type(header).__name__}; expected a JSON object.")
    arrays = header.get("arrays")
    rows_shape, rows_nbytes = _array_entry(arrays, "rows", path)
    lab_shape, lab_nbytes = _array_entry(arrays, "labels", path)
    if len(rows_shape) != 2 or rows_nbytes != 4 * rows_shape[0] * rows_shape[1]:
        raise MemoryFileError(f"{path!r}: header field 'arrays.rows' is {[rows_shape, rows_nbytes]}; expected "
                              "[[rows, dim], 4 * rows * dim].")
    if len(lab_shape) != 1 or lab_nbytes != 4 * lab_shape[0]:
        raise MemoryFileError(f"{path!r}: header field 'arrays.labels' is {[lab_shape, lab_nbytes]}; expected "
                              "[[rows], 4 * rows].")
    if start + rows_nbytes + lab_nbytes != len(body):
        raise MemoryFileError(f"{path!r}: the arrays take {rows_nbytes + lab_nbytes} bytes but the file holds "
                              f"{len(body) - start} after the header.")
    rows = np.frombuffer(data, dtype="<f4", count=rows_nbytes // 4, offset=start).reshape(rows_shape)
    labels = np.frombuffer(data, dtype="<i4", count=lab_nbytes // 4, offset=start + rows_nbytes)
    if start % 4:  # a file without the alignment padding: copy into aligned arrays
        rows, labels = rows.copy(), labels.copy()
    state = {name: header.get(name) for name in ("format_version", "config", "dim", "step", "keys", "groups",
                                                 "lengths")}
    missing = [name for name, value in state.items() if value is None]
    if missing:
        raise MemoryFileError(f"{path!r}: header field {missing[0]!r} is missing; restore the file from another "
                              "checkpoint.")
    state.update(rows=rows.astype(np.float32, copy=False), labels=labels.astype(np.int32, copy=False))
    return check_state(state, repr(path))
