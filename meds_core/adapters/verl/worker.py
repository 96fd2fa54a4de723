"""``MEDSActorRolloutRefWorker``: veRL 0.9's engine-based ``ActorRolloutRefWorker`` with MEDS feature capture on the
actor engine. No method is copied: ``init_model`` runs veRL's, then installs the capture (see
:mod:`.engine_capture`); ``compute_log_prob`` is veRL's own and returns ``meds_features`` when the trainer flags it.
"""

from __future__ import annotations

from ._compat import require_verl

require_verl()

from verl.single_controller.base.decorator import Dispatch, register  # noqa: E402
from verl.workers.engine_workers import ActorRolloutRefWorker  # noqa: E402

from .engine_capture import install_capture  # noqa: E402
from .settings import meds_config, refuse_fused_kernels  # noqa: E402

__all__ = ["MEDSActorRolloutRefWorker"]


class MEDSActorRolloutRefWorker(ActorRolloutRefWorker):
    """Worker whose actor engine returns MEDS features from the flagged old-log-prob forward.

    Reads ``config.meds`` (the worker receives ``actor_rollout_ref`` only; ``config/meds_trainer.yaml`` mirrors the
    top-level ``meds:`` block there). An override of a worker-group method must carry ``@register`` again, or the
    worker group would not expose it.
    """

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        config = meds_config(self.config.get("meds", None))
        refuse_fused_kernels(self.config.model.get("use_fused_kernels", False))
        super().init_model()
        if self.actor is not None:
            self.meds_capture = install_capture(self.actor.engine, config)
