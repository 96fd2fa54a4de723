"""MEDSConfig: every knob of MEDS, validated at construction.

Field names are the reference recipe's (``cluster_method``, ``use_layer_diff``, ``use_last_n_layers``,
``cluster_penalty_target``, ``penalty_coef``), so a veRL ``meds:`` block or a TRL config maps onto it 1:1
through :meth:`MEDSConfig.from_dict`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Largest accepted values: beyond them a setting is a typo, not a choice (a memory of 10**6 rows is already far
# beyond what per-step clustering can afford; a penalty of 10**6 reward units swamps any reward).
LIMITS: dict[str, float] = {
    "use_last_n_layers": 4096,
    "min_cluster_size": 1_000_000,
    "min_samples": 1_000_000,
    "knn_k": 1_000_000,
    "max_rows_per_memory": 1_000_000,
    "max_total_rows": 2**31 - 1,
    "penalty_coef": 1e6,
    "penalty_cap": 1e6,
}
# Allowed values of the string-valued fields, written down as data (the error messages list them).
CHOICES: dict[str, tuple[str, ...]] = {
    "cluster_method": ("hdbscan", "single"),
    "cluster_penalty_target": ("wrong", "right", "both", "none"),
    "knn_metric": ("cosine",),
    "noise_policy": ("pool", "ignore"),
    "final_norm": ("last", "all", "none"),
}


@dataclass
class MEDSConfig:
    """Configuration of MEDS feature extraction, error memory, clustering and penalty.

    Every field is validated in ``__post_init__``; a bad value raises ``ValueError`` naming the value
    received and what to use instead.
    """

    # --- features ---
    use_last_n_layers: int = field(
        default=14,
        metadata={"help": "Number of per-layer logit-lens values kept per rollout (the last n decoder layers, "
                          "or the last n layer differences with use_layer_diff)."},
    )
    use_layer_diff: bool = field(
        default=False,
        metadata={"help": "Replace the per-layer values by their consecutive differences before keeping the last n."},
    )
    final_norm: str = field(
        default="last",
        metadata={"help": "Where the model's final norm is applied before projecting: 'last' (reference parity: "
                          "raw layers, post-norm last layer), 'all' (standard logit lens) or 'none'."},
    )
    answer_marker: str = field(
        default="\\boxed{",
        metadata={"help": "Text that precedes the final answer; the feature is read at the first token after "
                          "its LAST occurrence."},
    )
    # --- memory and clustering ---
    cluster_method: str = field(
        default="hdbscan",
        metadata={"help": "'hdbscan' (cluster each memory) or 'single' (count-only ablation: size = stored rows)."},
    )
    min_cluster_size: int = field(
        default=2, metadata={"help": "HDBSCAN min_cluster_size (>= 2)."},
    )
    min_samples: int = field(
        default=1,
        metadata={"help": "HDBSCAN min_samples with the hdbscan library's meaning (the point itself not counted; "
                          "scikit-learn's value is this + 1)."},
    )
    knn_k: int = field(
        default=3, metadata={"help": "Neighbours in the vote that assigns a new rollout to a stored cluster "
                                     "(k = min(knn_k, stored rows))."},
    )
    knn_metric: str = field(
        default="cosine", metadata={"help": "Distance of the k-NN vote; only 'cosine' (the reference's)."},
    )
    l2_normalize: bool = field(
        default=True, metadata={"help": "L2-normalise rows before clustering (reference: always)."},
    )
    noise_policy: str = field(
        default="pool",
        metadata={"help": "Size of a rollout voted into noise (-1): 'pool' (reference: number of stored noise "
                          "rows) or 'ignore' (size 0)."},
    )
    max_rows_per_memory: int = field(
        default=1024,
        metadata={"help": "Cap on rows kept per (prompt, correctness) memory. After a step appends its rows, the "
                          "oldest rows beyond the cap are dropped, then the memory is re-clustered, so labels always "
                          "describe exactly the rows kept."},
    )
    max_total_rows: int = field(
        default=8_000_000,
        metadata={"help": "Budget of rows over all memories. After a step, while more rows are stored, the least "
                          "recently visited prompt is evicted whole (both correctness memories); prompts of the "
                          "current step are never evicted. RAM is about max_total_rows * (4 * F + 4) * 1.5 bytes "
                          "(float32 rows, int32 labels, growth room)."},
    )
    backend: str = field(
        default="auto",
        metadata={"help": "Clustering backend: 'auto' or a registered name (see "
                          "meds_core.clustering.available_backends())."},
    )
    # --- penalty ---
    cluster_penalty_target: str = field(
        default="wrong",
        metadata={"help": "Which rollouts are penalised: 'wrong' (r - p), 'right' (r / (1 + p)), 'both' or 'none'."},
    )
    penalty_coef: float = field(
        default=0.1, metadata={"help": "alpha in penalty = alpha * min(ln(|C| + 1), cap)."},
    )
    penalty_cap: float = field(
        default=2.0, metadata={"help": "cap in penalty = alpha * min(ln(|C| + 1), cap) (paper's beta = alpha * cap)."},
    )
    mixed_groups_only: bool = field(
        default=True,
        metadata={"help": "Shape only GRPO groups that hold both a correct and a wrong rollout (the reference's "
                          "dynamic sampling drops the others); the memory still records every rollout."},
    )

    def __post_init__(self) -> None:
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"MEDSConfig.{name}={value!r} is not valid; use one of {list(choices)}.")
        self._check_int("use_last_n_layers", 1)
        from meds_core.clustering.params import MIN_CLUSTER_SIZE, MIN_SAMPLES

        self._check_int("min_cluster_size", MIN_CLUSTER_SIZE)
        self._check_int("min_samples", MIN_SAMPLES)
        self._check_int("knn_k", 1)
        self._check_int("max_rows_per_memory", 1)
        self._check_int("max_total_rows", 1)
        for name in ("use_layer_diff", "l2_normalize", "mixed_groups_only"):
            if isinstance(getattr(self, name), np.bool_):
                setattr(self, name, bool(getattr(self, name)))
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"MEDSConfig.{name}={getattr(self, name)!r} must be True or False.")
        for name in ("penalty_coef", "penalty_cap"):
            value = getattr(self, name)
            if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating))
                    or not math.isfinite(value) or not 0 <= value <= LIMITS[name]):
                raise ValueError(f"MEDSConfig.{name}={value!r} must be a finite number >= 0 "
                                 f"(at most {LIMITS[name]:g}).")
            setattr(self, name, float(value))
        if not isinstance(self.answer_marker, str) or not self.answer_marker:
            raise ValueError(f"MEDSConfig.answer_marker={self.answer_marker!r} must be a non-empty string, "
                             "e.g. '\\\\boxed{'.")
        if not isinstance(self.backend, str) or not self.backend:
            raise ValueError(f"MEDSConfig.backend={self.backend!r} must be 'auto' or a backend name.")
        if self.backend != "auto":
            from meds_core.clustering import available_backends

            if self.backend not in available_backends():
                raise ValueError(f"MEDSConfig.backend={self.backend!r} is not a known clustering backend; "
                                 f"use 'auto' or one of {available_backends()}.")

    def _check_int(self, name: str, minimum: int) -> None:
        """Accept a Python or numpy integer in [minimum, LIMITS[name]]; store it as a Python int."""
        value = getattr(self, name)
        top = int(LIMITS[name])
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
                or not minimum <= value <= top:
            raise ValueError(f"MEDSConfig.{name}={value!r} must be an integer >= {minimum} (at most {top}).")
        setattr(self, name, int(value))

    @property
    def layers_needed(self) -> int:
        """Number of decoder layers whose output is captured (one more than kept when differencing)."""
        return self.use_last_n_layers + (1 if self.use_layer_diff else 0)

    def shaping_params(self) -> Any:
        """:class:`meds_core.step.shaping.ShapingParams` of this config."""
        from meds_core.step.shaping import ShapingParams

        return ShapingParams(**self.shaping_kwargs())

    def shaping_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`meds_core.shape_rewards` / :func:`meds_core.penalties` from this config."""
        return {"penalty_coef": self.penalty_coef, "cap": self.penalty_cap, "target": self.cluster_penalty_target,
                "mixed_groups_only": self.mixed_groups_only}

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON/YAML friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "MEDSConfig":
        """Build from a mapping (a hydra/omegaconf node works); unknown keys are an error, not ignored."""
        if d is None:
            return cls()
        if not hasattr(d, "items"):
            raise TypeError(f"MEDSConfig.from_dict expects a mapping of field names to values, got "
                            f"{type(d).__name__} {d!r}; pass e.g. {{'penalty_coef': 0.1}}.")
        if not isinstance(d, dict):
            d = {k: v for k, v in d.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown MEDS config key(s) {unknown}; valid keys are {sorted(known)}.")
        return cls(**d)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help string."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}
