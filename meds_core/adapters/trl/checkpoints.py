"""Crash-safe MEDS checkpoints for TRL: the memory file is written LAST, so it marks a checkpoint as complete.

Save order of :class:`MEDSGRPOTrainer` in ``checkpoint-N/``: TRL's and Transformers' own files (weights,
optimizer, scheduler, RNG state, ``trainer_state.json``, TRL's extras), then ``meds_memory.bin`` (temp file,
fsync, atomic rename), then the rotation of old checkpoints. A process killed at any moment therefore leaves
either a complete ``checkpoint-N`` or one without ``meds_memory.bin``, and the older complete checkpoints are
still there (rotation has not run). :func:`last_complete_checkpoint` picks the newest folder holding both
``trainer_state.json`` and ``meds_memory.bin``; ``train(resume_from_checkpoint=True)`` uses it instead of
Transformers' ``get_last_checkpoint`` (which takes the highest-numbered folder, complete or not).
"""

from __future__ import annotations

import os
import re
import shutil

__all__ = ["MEMORY_FILE", "TRAINER_STATE", "checkpoint_folders", "is_complete", "last_complete_checkpoint",
           "rotate_complete_checkpoints"]

MEMORY_FILE = "meds_memory.bin"
TRAINER_STATE = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_folders(output_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-<step>`` folder in ``output_dir``, oldest step first."""
    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _CHECKPOINT.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isdir(path):
            found.append((int(m.group(1)), path))
    return sorted(found)


def is_complete(folder: str | os.PathLike) -> bool:
    """The folder holds Transformers' trainer state and the MEDS memory (written last, so all the rest too)."""
    return all(os.path.isfile(os.path.join(folder, f)) for f in (TRAINER_STATE, MEMORY_FILE))


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """Path of the newest complete checkpoint in ``output_dir`` (see :func:`is_complete`), or None."""
    for _, path in reversed(checkpoint_folders(output_dir)):
        if is_complete(path):
            return path
    return None


def rotate_complete_checkpoints(output_dir: str | os.PathLike, save_total_limit: int | None,
                                best_model_checkpoint: str | None = None) -> list[str]:
    """Keep the newest ``save_total_limit`` complete checkpoints (and the best one); delete older complete ones
    and every incomplete folder older than the newest complete one (it can never be resumed). Folders newer than
    the newest complete checkpoint are left alone. No deletion when the limit is None or <= 0.

    Returns the deleted paths.
    """
    if not save_total_limit or save_total_limit <= 0:
        return []
    folders = checkpoint_folders(output_dir)
    complete = [(s, p) for s, p in folders if is_complete(p)]
    if not complete:
        return []
    newest = complete[-1][0]
    keep = {p for _, p in complete[-save_total_limit:]}
    if best_model_checkpoint:
        keep.add(os.path.abspath(best_model_checkpoint))
    deleted = []
    for step, path in folders:
        if step <= newest and path not in keep and os.path.abspath(path) not in keep:
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
    return deleted
