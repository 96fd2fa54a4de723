"""MEDS for TRL's ``GRPOTrainer`` (trl >=1.16,<1.17), installed as ``meds_core.adapters.trl``.

- :class:`MEDSGRPOTrainer`: a ``GRPOTrainer`` that shapes the correctness reward before TRL's group-normalised
  advantages, reusing TRL's own no-grad log-prob forward for the features when TRL runs one.
- :class:`MEDSPenaltyReward`: a reward function for a stock ``GRPOTrainer`` (always one extra forward).

- :func:`last_complete_checkpoint`: the newest checkpoint a killed run can resume from (no TRL import).

TRL is imported only when one of them is first used; the installed version is checked then.
"""

from __future__ import annotations

from typing import Any

from ._version import SUPPORTED_TRL, check_trl_version
from .checkpoints import last_complete_checkpoint

__all__ = ["MEDSGRPOTrainer", "MEDSPenaltyReward", "SUPPORTED_TRL", "check_trl_version", "last_complete_checkpoint"]


def __getattr__(name: str) -> Any:
    if name == "MEDSGRPOTrainer":
        from .trainer import MEDSGRPOTrainer

        return MEDSGRPOTrainer
    if name == "MEDSPenaltyReward":
        from .reward import MEDSPenaltyReward

        return MEDSPenaltyReward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
