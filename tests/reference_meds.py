"""A literal re-implementation of the reference MEDS memory step: the test oracle for ErrorMemory.

Deliberately slow and independent of meds_core: per-row scikit-learn NearestNeighbors refit over the
stored rows, collections.Counter vote, the hdbscan library refit per memory on sklearn-normalised rows.
"""

from __future__ import annotations

from collections import Counter

import hdbscan
import numpy as np
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize


class ReferenceMemory:
    def __init__(self, min_cluster_size=2, min_samples=1, k=3, noise_policy="pool", cap=None, method="hdbscan"):
        self.mcs, self.ms, self.k = min_cluster_size, min_samples, k
        self.noise_policy, self.cap, self.method = noise_policy, cap, method
        self.feats: dict = {}
        self.labels: dict = {}

    def step(self, keys, feats, correct):
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
            X = normalize(np.asarray(stored, dtype=np.float64))
            nn = NearestNeighbors(n_neighbors=min(self.k, len(stored)), metric="cosine").fit(X)
            _, ind = nn.kneighbors(normalize(feats[b].astype(np.float64)[None, :]))
            votes = Counter(self.labels[mk][ind[0]].tolist())
            best = max(votes.values())
            lab = min(label for label, count in votes.items() if count == best)
            labels[b] = lab
            sizes[b] = int((self.labels[mk] == lab).sum())
            if lab == -1 and self.noise_policy == "ignore":
                sizes[b] = 0
        for mk, rows in appended.items():
            allrows = self.feats.get(mk, []) + rows
            if self.cap is not None:
                allrows = allrows[-self.cap:]
            self.feats[mk] = allrows
            if self.method == "single":
                self.labels[mk] = np.zeros(len(allrows), dtype=np.int64)
            elif len(allrows) < max(2, self.ms + 1, self.mcs):
                self.labels[mk] = np.full(len(allrows), -1, dtype=np.int64)
            else:
                X = normalize(np.asarray(allrows, dtype=np.float64))
                model = hdbscan.HDBSCAN(min_cluster_size=self.mcs, min_samples=self.ms)
                self.labels[mk] = model.fit(X).labels_.astype(np.int64)
        return sizes, labels


def blob_stream(seed, steps=6, prompts=6, per_prompt=16, dim=6, nan_rate=0.05, unknown_rate=0.05):
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
