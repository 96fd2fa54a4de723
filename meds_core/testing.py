"""Test support shared by the tests and the benchmarks: tiny models, in-process tokenizers, the reference step.

Like ``numpy.testing``, this module is part of the package but not of the MEDS step: nothing in the step imports
it. torch, transformers, tokenizers, scikit-learn, hdbscan and hypothesis are imported inside the functions that
need them (hypothesis is a dev dependency only).

- :func:`tiny_qwen2`: a random ``Qwen2ForCausalLM`` built from a config (no download).
- :func:`word_tokenizer`, :func:`char_tokenizer`: word-level and character-level tokenizers built in-process.
- :class:`ReferenceMemory`: a deliberately slow re-implementation of the reference MEDS memory step (per-row
  scikit-learn ``NearestNeighbors`` refit, ``Counter`` vote with ties to the smallest label, the hdbscan library
  refit per memory), the oracle of :class:`meds_core.ErrorMemory`; :func:`reference_vote` and
  :func:`reference_labels` are its two halves, which the benchmarks time.
- :func:`brute_vote`: the k-NN vote one query at a time, the oracle of the batched votes.
- :func:`blob_stream`: batches of rollouts with per-prompt cluster structure.
- :func:`registered_backend`: a clustering backend registered for the duration of a ``with`` block.
- :func:`knn_memories`, :func:`vote_problem`: the hypothesis strategy of k-NN vote problems and its arrays.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["ReferenceMemory", "blob_stream", "brute_vote", "char_tokenizer", "knn_memories", "reference_labels",
           "reference_vote", "registered_backend", "tiny_qwen2", "vote_problem", "word_tokenizer"]


# ---------------------------------------------------------------------------------------------------- tiny models
def tiny_qwen2(vocab_size: int, *, hidden_size: int = 64, intermediate_size: int | None = None,
               num_hidden_layers: int = 4, num_attention_heads: int = 4, num_key_value_heads: int = 2,
               tie_word_embeddings: bool = False, seed: int | None = 0, fork_rng: bool = False,
               weight_std: float | None = None, norm_weight_range: tuple[float, float] | None = None,
               tokenizer: Any = None, dtype: Any = None, device: Any = None, eval_mode: bool = False,
               **config: Any) -> Any:
    """Random ``Qwen2ForCausalLM`` from a ``Qwen2Config`` (untied head unless told), float32 unless ``dtype``.

    Parameters
    ----------
    vocab_size : int
    hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads : int
    intermediate_size : int, optional
        Default ``2 * hidden_size``.
    seed : int or None
        ``torch.manual_seed(seed)`` before the weights are drawn (None: the current global generator).
    fork_rng : bool
        Draw the weights inside ``torch.random.fork_rng()``, leaving the caller's global generator untouched.
    weight_std : float, optional
        Redraw every weight matrix (dim >= 2) from N(0, weight_std): larger than Hugging Face's 0.02 init, so the
        hidden states and logits are O(1).
    norm_weight_range : (float, float), optional
        Redraw every 1-D parameter (the RMSNorm weights) uniformly from this range.
    tokenizer : optional
        Sets ``pad_token_id`` / ``eos_token_id`` (``bos_token_id`` None) in the config and the generation config.
    dtype, device : optional
        ``model.to(device=device, dtype=dtype)``.
    eval_mode : bool
        Return the model in eval mode.
    **config
        Further ``Qwen2Config`` fields (``max_position_embeddings``, token ids, ...).
    """
    import contextlib

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if tokenizer is not None:
        config = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                  "bos_token_id": None, **config}
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden_size,
                      intermediate_size=2 * hidden_size if intermediate_size is None else intermediate_size,
                      num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                      num_key_value_heads=num_key_value_heads, tie_word_embeddings=tie_word_embeddings, **config)
    with torch.random.fork_rng() if fork_rng else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2 and weight_std is not None:
                    p.normal_(0.0, weight_std)
                elif p.dim() < 2 and norm_weight_range is not None:
                    p.uniform_(*norm_weight_range)
    if tokenizer is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = None
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval() if eval_mode else model


# ----------------------------------------------------------------------------------------------------- tokenizers
def _wrap(raw: Any, hf: dict[str, Any]) -> Any:
    """``raw`` as it is without ``hf`` keyword arguments, else a ``PreTrainedTokenizerFast`` built with them."""
    if not hf:
        return raw
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=raw, **hf)


def word_tokenizer(words: Sequence[str], *, unk: str = "<pad>", **hf: Any) -> Any:
    """Word-level tokenizer: token id = position in ``words``, whitespace pre-tokenisation.

    Returns a ``tokenizers.Tokenizer``, or a ``transformers.PreTrainedTokenizerFast`` when ``hf`` keyword
    arguments (``pad_token``, ``eos_token``, ...) are given.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=unk))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return _wrap(raw, hf)


def char_tokenizer(chars: Sequence[str], specials: Sequence[str] = ("<pad>", "<eos>"), *,
                   whole: Sequence[str] = (), unk: str | None = None, added_specials: Sequence[str] = (),
                   **hf: Any) -> Any:
    """Character-level tokenizer: ids are ``specials`` then ``chars`` in order; decoding concatenates.

    Parameters
    ----------
    chars : sequence of str
        One-character tokens.
    specials : sequence of str
        Tokens placed first in the vocabulary.
    whole : sequence of str
        Multi-character strings kept as one token when they occur in text (e.g. ``"\\\\boxed{"``); each must be in
        ``specials``. Everything else splits into single characters.
    unk : str, optional
        The unknown token (default ``specials[0]``).
    added_specials : sequence of str
        Registered as special tokens of the raw tokenizer (skipped when decoding with ``skip_special_tokens``).
    **hf
        When given, the result is a ``PreTrainedTokenizerFast`` built with them; else a ``tokenizers.Tokenizer``.
    """
    import re

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(list(specials) + list(chars))}
    raw = Tokenizer(models.WordLevel(vocab, unk_token=specials[0] if unk is None else unk))
    pattern = "|".join([re.escape(w) for w in whole] + [r"[\s\S]"])
    raw.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    raw.decoder = decoders.Fuse()
    if added_specials:
        raw.add_special_tokens(list(added_specials))
    return _wrap(raw, hf)


# -------------------------------------------------------------------------------------------- the reference step
def reference_vote(stored: np.ndarray, stored_labels: np.ndarray, row: np.ndarray, k: int) -> tuple[int, int]:
    """The reference's assignment of one rollout: a ``NearestNeighbors`` refit on the stored rows (cosine), a
    ``Counter`` vote over the ``min(k, n)`` nearest labels with ties to the smallest label.

    Parameters
    ----------
    stored : ndarray of shape (n, d), n >= 1
    stored_labels : ndarray of shape (n,), int (noise -1)
    row : ndarray of shape (d,)
    k : int

    Returns
    -------
    (label, size): the voted label and how many stored rows carry it.
    """
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import normalize

    X = normalize(np.asarray(stored, dtype=np.float64))
    nn = NearestNeighbors(n_neighbors=min(k, len(X)), metric="cosine").fit(X)
    _, ind = nn.kneighbors(normalize(np.asarray(row, dtype=np.float64)[None, :]))
    votes = Counter(stored_labels[ind[0]].tolist())
    best = max(votes.values())
    label = min(lab for lab, count in votes.items() if count == best)
    return label, int((stored_labels == label).sum())


def reference_labels(rows: np.ndarray, min_cluster_size: int, min_samples: int) -> np.ndarray:
    """The reference's clustering of one memory: int64 labels [n] from ``hdbscan.HDBSCAN`` on the
    scikit-learn-normalised rows [n, d]; a memory of fewer than ``max(2, min_samples + 1, min_cluster_size)`` rows
    is all noise."""
    if len(rows) < max(2, min_samples + 1, min_cluster_size):
        return np.full(len(rows), -1, dtype=np.int64)
    import hdbscan
    from sklearn.preprocessing import normalize

    X = normalize(np.asarray(rows, dtype=np.float64))
    model = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples)
    return model.fit(X).labels_.astype(np.int64)


class ReferenceMemory:
    """The reference MEDS memory step, literally: the test oracle for :class:`meds_core.ErrorMemory`.

    Deliberately slow and independent of the step's code (see :func:`reference_vote`, :func:`reference_labels`).
    """

    def __init__(self, min_cluster_size=2, min_samples=1, k=3, noise_policy="pool", cap=None, method="hdbscan"):
        self.mcs, self.ms, self.k = min_cluster_size, min_samples, k
        self.noise_policy, self.cap, self.method = noise_policy, cap, method
        self.feats: dict = {}
        self.labels: dict = {}

    def step(self, keys, feats, correct):
        """Cluster sizes int64 [B] and labels int64 [B] of a batch, then store its valid rows."""
        B = len(keys)
        sizes = np.zeros(B, dtype=np.int64)
        labels = np.full(B, -1, dtype=np.int64)
        appended: dict = {}
        for b in range(B):
            if correct[b] == -1 or not np.all(np.isfinite(feats[b])):
                continue
            mk = (keys[b], int(correct[b]))
            appended.setdefault(mk, []).append(feats[b].astype(np.float32))
            stored = self.feats.get(mk, [])
            if not stored:
                continue
            if self.method == "single":
                labels[b], sizes[b] = 0, len(stored)
                continue
            labels[b], sizes[b] = reference_vote(np.asarray(stored), self.labels[mk], feats[b], self.k)
            if labels[b] == -1 and self.noise_policy == "ignore":
                sizes[b] = 0
        for mk, rows in appended.items():
            allrows = self.feats.get(mk, []) + rows
            if self.cap is not None:
                allrows = allrows[-self.cap:]
            self.feats[mk] = allrows
            if self.method == "single":
                self.labels[mk] = np.zeros(len(allrows), dtype=np.int64)
            else:
                self.labels[mk] = reference_labels(np.asarray(allrows), self.mcs, self.ms)
        return sizes, labels


def brute_vote(S: np.ndarray, labels: np.ndarray, Q: np.ndarray, k: int) -> np.ndarray:
    """int64 [m]: one query of ``Q`` [m, d] at a time against the unit rows ``S`` [n, d]: sort by (cosine distance
    rounded to 1e-9, row index), count the labels of the ``min(k, n)`` nearest, ties to the smallest label."""
    out = []
    for q in Q:
        dist = [round(1.0 - sum(float(a) * float(b) for a, b in zip(s, q)), 9) for s in S]
        order = sorted(range(len(S)), key=lambda i: (dist[i], i))[:min(k, len(S))]
        votes: dict = {}
        for i in order:
            votes[labels[i]] = votes.get(labels[i], 0) + 1
        best = max(votes.values())
        out.append(min(lab for lab, c in votes.items() if c == best))
    return np.array(out, dtype=np.int64)


def blob_stream(seed, steps=6, prompts=6, per_prompt=16, dim=6, nan_rate=0.05,
                unknown_rate=0.05) -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
    """Yield (keys, feats float32 [B, dim], correct int [B]) steps with per-prompt cluster structure."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(prompts, 2, 4, dim)) * 3.0  # prompt x group x mode x dim
    for _ in range(steps):
        keys, feats, correct = [], [], []
        for p in range(prompts):
            for _ in range(per_prompt):
                c = int(rng.random() < 0.4)
                mode = rng.integers(0, 4)
                x = centers[p, c, mode] + rng.normal(scale=0.3, size=dim)
                keys.append(f"prompt-{p}" if p % 2 else p)
                feats.append(x)
                correct.append(c)
        feats = np.asarray(feats, dtype=np.float32)
        correct = np.asarray(correct)
        feats[rng.random(len(feats)) < nan_rate, 0] = np.nan
        correct[rng.random(len(correct)) < unknown_rate] = -1
        yield keys, feats, correct


@contextmanager
def registered_backend(name: str, factory: Callable[[], Any]) -> Iterator[str]:
    """Register the clustering backend ``factory`` under ``name`` inside the block (yields ``name``), unregister it
    after, so a test's backend does not outlive the test."""
    from meds_core.clustering import register_backend, unregister_backend

    register_backend(name, factory)
    try:
        yield name
    finally:
        unregister_backend(name)


# ------------------------------------------------------------------------------------------ hypothesis strategies
def knn_memories(min_queries: int = 1) -> Any:
    """Strategy: 1-12 memories, each ``(stored rows 1-40, queries min_queries-9, seed)``; see :func:`vote_problem`."""
    from hypothesis import strategies as st

    return st.lists(st.tuples(st.integers(1, 40), st.integers(min_queries, 9), st.integers(0, 2**31 - 1)),
                    min_size=1, max_size=12)


def vote_problem(specs, discrete: bool) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(stored unit rows [n, 3], labels int [n] in -1..2, unit queries [m, 3]) per memory of ``specs``.

    ``discrete`` draws integer coordinates (exact distance ties), else gaussian ones (no ties).
    """
    stored, labels, queries = [], [], []
    for n, m, seed in specs:
        r = np.random.default_rng(seed)

        def draw(*shape, r=r):
            x = r.integers(-2, 3, size=shape) + 1e-3 if discrete else r.normal(size=shape)
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        stored.append(draw(n, 3))
        labels.append(r.integers(-1, 3, size=n))
        queries.append(draw(m, 3))
    return stored, labels, queries
