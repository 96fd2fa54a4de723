"""The MEDS penalty: numpy or torch in (any device), the same type out.

``penalty = penalty_coef * min(ln(|C| + 1), cap)``; wrong rollouts get ``r - penalty``, correct ones (when
targeted) ``r / (1 + penalty)``; unknown correctness is never penalised. Apply to the scalar outcome reward
BEFORE group-normalised advantages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from meds_core.step._arrays import correctness_groups, to_numpy
from meds_core.step.config import CHOICES


def _to_numpy(x: Any, name: str) -> np.ndarray:
    x = to_numpy(x, name)
    if x.ndim != 1:
        raise ValueError(f"{name} has shape {x.shape}; pass a 1-D array with one value per rollout.")
    return x


def _mixed(groups: np.ndarray, group_ids: Any) -> np.ndarray:
    """[B] bool: the rollout's GRPO group holds at least one correct and one wrong rollout."""
    gid = _to_numpy(group_ids, "group_ids")
    if gid.shape != groups.shape:
        raise ValueError(f"group_ids has shape {gid.shape}; expected {groups.shape}, one GRPO group id per rollout.")
    _, inv = np.unique(gid, return_inverse=True)
    inv = inv.reshape(-1)
    has_right = np.bincount(inv, weights=groups == 1) > 0
    has_wrong = np.bincount(inv, weights=groups == 0) > 0
    return (has_right & has_wrong)[inv]


@dataclass(frozen=True)
class ShapingParams:
    """The penalty's parameters (see :func:`penalties`), validated when built: ``ValueError`` names the bad one.

    ``MEDSConfig.shaping_params()`` builds them from a config; :func:`shape` takes them.
    """

    penalty_coef: float = 0.1
    cap: float = 2.0
    target: str = "wrong"
    mixed_groups_only: bool = True

    def __post_init__(self) -> None:
        if self.target not in CHOICES["cluster_penalty_target"]:
            raise ValueError(f"target={self.target!r} is not valid; use one of "
                             f"{list(CHOICES['cluster_penalty_target'])}.")
        for name in ("penalty_coef", "cap"):
            v = getattr(self, name)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not np.isfinite(v) or v < 0:
                raise ValueError(f"{name}={v!r} must be a finite number >= 0 (a float, not a string).")


def _penalty_and_masks(cluster_size, correct, params: ShapingParams, group_ids):
    """float64 penalties [B] and the boolean masks of penalised wrong / penalised correct rollouts."""
    target = params.target
    size = _to_numpy(cluster_size, "cluster_size")
    if size.size:
        if size.dtype == bool or not np.issubdtype(size.dtype, np.number):
            raise ValueError(f"cluster_size has dtype {size.dtype}; pass integer counts (StepResult.cluster_size).")
        bad = ~np.isfinite(size) | (size < 0) | (size != np.floor(size)) if size.dtype.kind == "f" else size < 0
        if bad.any():
            raise ValueError(f"cluster_size must hold counts >= 0 (whole numbers), got {size[bad][:5].tolist()}; pass "
                             "StepResult.cluster_size.")
    groups = correctness_groups(correct, len(size))
    hit_wrong = (groups == 0) & (target in ("wrong", "both"))
    hit_right = (groups == 1) & (target in ("right", "both"))
    if group_ids is not None and params.mixed_groups_only:
        mixed = _mixed(groups, group_ids)
        hit_wrong &= mixed
        hit_right &= mixed
    p = params.penalty_coef * np.minimum(np.log1p(size.astype(np.float64)), params.cap)
    return np.where(hit_wrong | hit_right, p, 0.0), hit_wrong, hit_right


def _like(values: np.ndarray, ref: Any):
    """Return ``values`` as the type of ``ref``: a torch tensor on ref's device (float dtype kept) or ndarray."""
    if hasattr(ref, "detach"):
        import torch

        dtype = ref.dtype if ref.dtype.is_floating_point else torch.float32
        return torch.as_tensor(values, device=ref.device).to(dtype)
    return values


def penalties(cluster_size: Any, correct: Any, *, penalty_coef: float = 0.1, cap: float = 2.0,
              target: str = "wrong", group_ids: Any = None, mixed_groups_only: bool = True):
    """Penalty of each rollout (0 where it is not targeted).

    Parameters
    ----------
    cluster_size : array-like of shape (B,), int
        Stored members of the rollout's cluster (``StepResult.cluster_size``).
    correct : array-like of shape (B,)
        1 / True correct, 0 / False wrong, -1 unknown (never penalised).
    penalty_coef, cap : float
        ``penalty = penalty_coef * min(ln(cluster_size + 1), cap)``.
    target : {'wrong', 'right', 'both', 'none'}
    group_ids : array-like of shape (B,), optional
        GRPO group of each rollout. With ``mixed_groups_only``, rollouts of groups lacking a correct or a
        wrong member get 0. Without ``group_ids`` no gating happens.

    Returns
    -------
    ndarray of shape (B,) float64, or a float tensor on ``cluster_size``'s device when it is a tensor.
    """
    params = ShapingParams(penalty_coef, cap, target, mixed_groups_only)
    p, _, _ = _penalty_and_masks(cluster_size, correct, params, group_ids)
    return _like(p, cluster_size)


def shape_rewards(rewards: Any, cluster_size: Any, correct: Any, *, penalty_coef: float = 0.1, cap: float = 2.0,
                  target: str = "wrong", group_ids: Any = None, mixed_groups_only: bool = True):
    """Shaped rewards: ``r - p`` for penalised wrong rollouts, ``r / (1 + p)`` for penalised correct ones.

    Parameters are those of :func:`penalties`, plus ``rewards`` (array-like of shape (B,), float): the scalar
    outcome reward. Returns the type of ``rewards`` (numpy float64, or a tensor of its dtype and device).
    """
    params = ShapingParams(penalty_coef, cap, target, mixed_groups_only)
    return shape(rewards, cluster_size, correct, params, group_ids=group_ids)[0]


def shape(rewards: Any, cluster_size: Any, correct: Any, params: ShapingParams, *, group_ids: Any = None):
    """Shaped rewards and penalties from one penalty computation (the step's path; ``params`` are already valid).

    Parameters
    ----------
    rewards : array-like of shape (B,), float
    cluster_size, correct, group_ids
        As in :func:`penalties`.
    params : ShapingParams

    Returns
    -------
    shaped : the type of ``rewards`` (see :func:`shape_rewards`)
    penalty : ndarray of shape (B,), float64
    """
    p, hit_wrong, hit_right = _penalty_and_masks(cluster_size, correct, params, group_ids)
    r = _to_numpy(rewards, "rewards")
    if r.shape != p.shape:
        raise ValueError(f"rewards has shape {r.shape}; expected {p.shape} like cluster_size.")
    if hasattr(rewards, "detach"):
        import torch

        pt = torch.as_tensor(p, device=rewards.device, dtype=torch.float64)
        wrong = torch.as_tensor(hit_wrong, device=rewards.device)
        right = torch.as_tensor(hit_right, device=rewards.device)
        r64 = rewards.detach().to(torch.float64)
        out = torch.where(wrong, r64 - pt, torch.where(right, r64 / (1.0 + pt), r64))
        return out.to(rewards.dtype if rewards.dtype.is_floating_point else torch.float32), p
    r = r.astype(np.float64)
    return np.where(hit_wrong, r - p, np.where(hit_right, r / (1.0 + p), r)), p
