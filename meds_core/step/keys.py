"""Stable prompt keys: identical across epochs, ranks, processes and restarts."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Container
from typing import Any

__all__ = ["prompt_key", "stable_prompt_key"]


def stable_prompt_key(text: str) -> str:
    """Hex BLAKE2b-128 digest of the normalised prompt text (NFC, whitespace runs collapsed, stripped).

    Use when the dataset has no id column; never Python's ``hash()``, which is salted per process.
    """
    if not isinstance(text, str):
        raise TypeError(f"stable_prompt_key needs the prompt text as str, got {type(text).__name__}; for chat "
                        "prompts pass the rendered text or a dataset id instead.")
    norm = " ".join(unicodedata.normalize("NFC", text).split())
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).hexdigest()


def prompt_key(prompt: Any, known: Container[tuple[str, int]] | None = None) -> str:
    """The memory key of a prompt without an id column, the same in every adapter.

    Parameters
    ----------
    prompt : str or JSON-serialisable object
        The prompt text, or a chat prompt (list of messages), which is keyed by its JSON with sorted keys and
        non-ASCII characters kept as they are (so they are NFC-normalised like plain text).
    known : container of (key, group), optional
        An :class:`~meds_core.ErrorMemory` (or its keys). The veRL adapter once hashed chat prompts with non-ASCII
        characters escaped (``\\u00e9``); when the key above is not in ``known`` but that older key is, the older key
        is returned, so memory files written then keep their prompts.

    Returns
    -------
    str
        32 hex characters (:func:`stable_prompt_key`).
    """
    if isinstance(prompt, str):
        return stable_prompt_key(prompt)
    key = stable_prompt_key(json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str))
    if known is not None and (key, 0) not in known and (key, 1) not in known:
        old = stable_prompt_key(json.dumps(prompt, sort_keys=True, default=str))
        if (old, 0) in known or (old, 1) in known:
            return old
    return key
