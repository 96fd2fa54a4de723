"""locate_answers(): the token that starts the final answer (first character after the LAST answer marker).

MEDS reads its feature at the first token of the final answer. Matching the marker's token ids does not work
(``{`` fuses with the next character, a leading space merges into the token, byte-level BPE merges across the
brace), so the search works on decoded CHARACTER offsets, and decodes only a short tail window of each response
plus O(log W) prefixes of it, never every prefix of a response.

Why prefixes of a window are enough (the invariants the search relies on):

* Every decode of a window or of a prefix of it starts at the SAME token, so whatever the decoder does at the start
  of a sequence (a dropped Metaspace space, a U+FFFD for continuation bytes cut off by the window start) happens
  identically in all of them: the window's text is ``junk + S`` where ``S`` is an exact suffix of the full text, and
  ``decode(window[:j])`` is ``junk + (a prefix of S)`` once ``j`` passes the junk. A marker without U+FFFD can only
  occur inside ``S``, so the last occurrence in the window text is the last occurrence in the full text.
* The marker (default ``\\boxed{``) is ASCII, so it ends on a character boundary. A prefix whose bytes stop before the
  end of the marker decodes to fewer than ``off`` characters (``off`` = index of the first character after the
  marker): its complete characters are a prefix of the text before the marker's end, and a multi-byte character cut
  by the prefix end turns into at most one U+FFFD per cut byte (<= 3; one in all for byte-level BPE), never more
  than the >= 1 + len(marker) characters still missing up to ``off``. A prefix that includes the first byte after
  the marker decodes to the exact ``off`` characters up to the marker's end plus at least one more. So
  ``len(decode(window[:j])) > off`` is False then True in ``j``, and the smallest such ``j`` gives token ``j - 1``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

_TAIL_TOKENS = 64  # first window: the last 64 tokens of every response (answers sit near the end)

Decode = Callable[[list[int]], str]
BatchDecode = Callable[[list[list[int]]], list[str]]


def _decoders(tokenizer: Any) -> tuple[Decode, BatchDecode]:
    """(decode, batch_decode) for a HF tokenizer or a raw ``tokenizers.Tokenizer``: special tokens skipped, no
    clean-up of tokenization spaces. Raises TypeError for anything else."""
    tk = sys.modules.get("tokenizers")  # only look up modules already imported: an instance implies its module
    if tk is not None and isinstance(tokenizer, tk.Tokenizer):
        return _raw_decoders(tokenizer)
    tf = sys.modules.get("transformers")
    if tf is not None and isinstance(tokenizer, tf.PreTrainedTokenizerBase):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        fast_cls = getattr(tf, "PreTrainedTokenizerFast", None)
        # A fast tokenizer whose _decode is the stock one is exactly backend.decode (plus a clean-up we turn off),
        # so skip HF's per-sequence Python loop and decode the batch in Rust.
        if (fast_cls is not None and isinstance(tokenizer, fast_cls) and tk is not None
                and isinstance(backend, tk.Tokenizer) and type(tokenizer)._decode is fast_cls._decode):
            return _raw_decoders(backend)
        opts = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
        # batch_decode([]) of HF returns [""] (decode of an empty sequence), hence the guard.
        return (lambda ids: tokenizer.decode(ids, **opts)), \
            (lambda batch: tokenizer.batch_decode(batch, **opts) if batch else [])
    raise TypeError(f"tokenizer must be a transformers PreTrainedTokenizerBase (fast or slow) or a "
                    f"tokenizers.Tokenizer; got {type(tokenizer).__module__}.{type(tokenizer).__qualname__}")


def _raw_decoders(tok: Any) -> tuple[Decode, BatchDecode]:
    """(decode, batch_decode) of a ``tokenizers.Tokenizer`` with special tokens skipped."""
    return (lambda ids: tok.decode(ids, skip_special_tokens=True)), \
        (lambda batch: tok.decode_batch(batch, skip_special_tokens=True) if batch else [])


def _as_id_lists(responses: Any) -> list[list[int]]:
    """Each response as a list of ints (lists are used as they are; arrays and tensors via ``.tolist()``)."""
    if isinstance(responses, (str, bytes)) or not (
            isinstance(responses, Sequence) or getattr(responses, "ndim", None) in (1, 2)):
        raise TypeError(f"responses must be a sequence of token-id lists (or 1-D int arrays/tensors); "
                        f"got {type(responses).__name__}")
    if getattr(responses, "ndim", 2) == 1 and str(responses.dtype) != "object":  # one response, not a batch
        raise ValueError(f"responses must hold one 1-D token-id sequence per response; got an array of shape "
                         f"{tuple(responses.shape)}: wrap a single response in a list")
    return [_as_id_list(r, i) for i, r in enumerate(responses)]


def _as_id_list(response: Any, i: int) -> list[int]:
    """One response as a list of ints; ValueError/TypeError name the response index."""
    if isinstance(response, list):
        return response
    if isinstance(response, tuple):
        return list(response)
    if hasattr(response, "tolist"):
        ids = response.tolist()
        if isinstance(ids, list) and (not ids or not isinstance(ids[0], list)):
            return ids
        raise ValueError(f"responses[{i}] must be 1-D; got shape {tuple(getattr(response, 'shape', ()))}")
    raise TypeError(f"responses[{i}] must be a list of token ids or a 1-D int array/tensor; "
                    f"got {type(response).__name__}")


def _first_char_offset(text: str, marker: str) -> int:
    """Index in ``text`` of the first character after the last ``marker``; -1 if no marker or nothing after."""
    pos = text.rfind(marker)
    off = pos + len(marker)
    return off if pos >= 0 and off < len(text) else -1


def _first_tokens_past(batch_decode: BatchDecode, windows: list[list[int]], offsets: list[int]) -> list[int]:
    """For each window, the token holding character ``offsets[k]`` of the window's own decode.

    Binary search on the smallest ``j`` with ``len(decode(window[:j])) > offset`` (monotone, see the module
    docstring), all windows in lock-step so each of the O(log W) rounds is one batch decode.
    """
    lo = [1] * len(windows)
    hi = [len(w) for w in windows]  # the whole window holds the character: hi is always a valid answer
    active = [k for k in range(len(windows)) if lo[k] < hi[k]]
    while active:
        mids = [(lo[k] + hi[k]) // 2 for k in active]
        texts = batch_decode([windows[k][:m] for k, m in zip(active, mids)])
        for k, m, t in zip(active, mids, texts):
            if len(t) > offsets[k]:
                hi[k] = m
            else:
                lo[k] = m + 1
        active = [k for k in active if lo[k] < hi[k]]
    return [j - 1 for j in lo]


def _grown_width(width: int, n_tokens: int, full_len: int, chars_from_end: int) -> int:
    """Next window size for a response whose marker lies before its window: at least double it, and at least
    the tokens that ``chars_from_end`` characters take at the response's average characters per token."""
    guess = (chars_from_end * n_tokens) // max(full_len, 1) * 5 // 4 + 8
    return min(max(2 * width, guess), n_tokens)


def locate_answers(tokenizer: Any, responses: Sequence[Any], marker: str = "\\boxed{") -> tuple[np.ndarray, np.ndarray]:
    """Position and id of the first token of the final answer of each response.

    The answer starts at the first character after the LAST ``marker`` of the decoded response (special tokens
    skipped, no clean-up of tokenization spaces); its token is the one holding that character's first byte.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase or tokenizers.Tokenizer
    responses : sequence of length n of list[int] or 1-D int array/tensor
        Token ids of each response only: no prompt, no padding.
    marker : str
        Non-empty text that precedes the final answer.

    Returns
    -------
    starts : ndarray of shape (n,), int64
        Index into ``responses[i]`` of the answer's first token; -1 without a marker or with nothing after it.
    targets : ndarray of shape (n,), int64
        ``responses[i][starts[i]]``; -1 where ``starts[i]`` is -1.
    """
    if not isinstance(marker, str) or not marker:
        raise ValueError(f"marker must be a non-empty str such as '\\\\boxed{{'; got {marker!r}")
    _, batch_decode = _decoders(tokenizer)
    ids = _as_id_lists(responses)
    starts = np.full(len(ids), -1, np.int64)
    targets = np.full(len(ids), -1, np.int64)
    width = {i: _TAIL_TOKENS for i in range(len(ids))}
    full_checked = False
    while width:
        begins = {i: max(len(ids[i]) - w, 0) for i, w in width.items()}
        order = list(width)
        texts = batch_decode([ids[i][begins[i]:] for i in order])
        hits, misses = [], []
        for i, text in zip(order, texts):
            pos = text.rfind(marker)
            if pos >= 0:
                off = pos + len(marker)
                if off < len(text):
                    hits.append((i, off))
            elif begins[i] > 0:  # not the whole response yet: the marker may lie further back
                misses.append(i)
        found = _first_tokens_past(batch_decode, [ids[i][begins[i]:] for i, _ in hits], [o for _, o in hits])
        for (i, _), j in zip(hits, found):
            starts[i] = begins[i] + j
            targets[i] = ids[i][starts[i]]
        if misses and not full_checked:
            # One full decode of each miss tells whether a marker exists at all and how far back it sits.
            full = batch_decode([ids[i] for i in misses])
            offs = [_first_char_offset(t, marker) for t in full]
            width = {i: _grown_width(width[i], len(ids[i]), len(t), len(t) - o + len(marker))
                     for i, t, o in zip(misses, full, offs) if o >= 0}
            full_checked = True
        else:
            width = {i: min(2 * width[i], len(ids[i])) for i in misses}
    return starts, targets
