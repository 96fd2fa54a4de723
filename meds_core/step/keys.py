"""Stable prompt keys: identical across epochs, ranks, processes and restarts."""

from __future__ import annotations

import hashlib
import unicodedata


def stable_prompt_key(text: str) -> str:
    """Hex BLAKE2b-128 digest of the normalised prompt text (NFC, whitespace runs collapsed, stripped).

    Use when the dataset has no id column; never Python's ``hash()``, which is salted per process.
    """
    if not isinstance(text, str):
        raise TypeError(f"stable_prompt_key needs the prompt text as str, got {type(text).__name__}; for chat "
                        "prompts pass the rendered text or a dataset id instead.")
    norm = " ".join(unicodedata.normalize("NFC", text).split())
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).hexdigest()
