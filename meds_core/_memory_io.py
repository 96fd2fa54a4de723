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

import hashlib
import json
import os
import struct
import tempfile
from typing import Any

import numpy as np

MAGIC = b"MEDSMEM\0"
FILE_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
_DIGEST = 32


class MemoryFileError(ValueError):
    """A file that is not a readable MEDS memory (foreign, truncated, corrupt or from a newer version)."""


def write_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Serialise ``state`` (ErrorMemory.state_dict()) to ``path`` atomically: temp file, fsync, rename."""
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
    body = _PREFIX.pack(MAGIC, FILE_VERSION, len(head)) + head + rows.tobytes() + labels.tobytes()
    data = body + hashlib.sha256(body).digest()
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".meds_memory.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a file written by :func:`write_state`; raise MemoryFileError if it is not one."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _PREFIX.size + _DIGEST or not data.startswith(MAGIC):
        raise MemoryFileError(f"{path!r} is not a MEDS memory file (no {MAGIC!r} magic); pass a file written by "
                              "ErrorMemory.save().")
    _, version, head_len = _PREFIX.unpack_from(data)
    if version > FILE_VERSION:
        raise MemoryFileError(f"{path!r} has file version {version}, newer than this meds_core reads "
                              f"({FILE_VERSION}); upgrade meds_core.")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise MemoryFileError(f"{path!r} is corrupt or truncated (SHA-256 checksum mismatch); restore it from "
                              "another checkpoint.")
    start = _PREFIX.size + head_len
    try:
        header = json.loads(body[_PREFIX.size:start].decode("utf-8"))
        (rows_shape, rows_nbytes), (lab_shape, lab_nbytes) = header["arrays"]["rows"], header["arrays"]["labels"]
        rows = np.frombuffer(body, dtype="<f4", count=rows_nbytes // 4, offset=start).reshape(rows_shape)
        labels = np.frombuffer(body, dtype="<i4", count=lab_nbytes // 4, offset=start + rows_nbytes)
        labels = labels.reshape(lab_shape)
    except (ValueError, KeyError, TypeError) as exc:
        raise MemoryFileError(f"{path!r} has a malformed header or arrays: {exc}") from exc
    return {
        "format_version": header["format_version"],
        "config": header["config"],
        "dim": header["dim"],
        "step": header["step"],
        "keys": header["keys"],
        "groups": np.asarray(header["groups"], dtype=np.int8),
        "lengths": np.asarray(header["lengths"], dtype=np.int64),
        "rows": rows.astype(np.float32),
        "labels": labels.astype(np.int64),
    }
