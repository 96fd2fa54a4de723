"""MEDS feature capture inside a veRL 0.9 FSDP engine's own no-grad forward (the old-log-prob pass).

:func:`install_capture` puts one :class:`meds_core.FeatureCapture` on ``engine.module`` and wraps two methods of
that engine INSTANCE (no veRL class or file is changed):

* ``prepare_model_inputs(micro_batch)``: when the micro-batch carries the flag ``meds_capture`` and the field
  ``meds_from_end`` (int64 [mb], see :mod:`.positions`), it arms the capture with the flat rows of this forward's
  layout (packed ``[1, N]`` with remove-padding, sliced per Ulysses rank; right-padded ``[mb, T]`` without) and the
  answer tokens read from the micro-batch's own ``input_ids``;
* ``forward_step(...)``: for a flagged forward-only pass it adds ``model_output["meds_features"]`` (float32
  [mb, use_last_n_layers], NaN rows where there is no answer), reduced once over the Ulysses group so every SP rank
  holds the rows another rank owned.

veRL's ``postprocess_batch_func`` concatenates every ``model_output`` key over micro-batches and undoes the
dynamic-batch reordering, and the worker's TransferQueue bridge writes the result to the field ``meds_features``.
"""

from __future__ import annotations

from typing import Any

import torch

from meds_core.step.capture import FeatureCapture
from meds_core.step.config import MEDSConfig

from .positions import packed_rows, padded_rows, ulysses_local_rows
from .settings import refuse_fused_kernels

__all__ = ["FEATURES", "FLAG", "FROM_END", "EngineCapture", "install_capture", "sp_pack", "sp_unpack"]

FLAG = "meds_capture"  # non-tensor flag of the batch (KVBatchMeta.extra_info): capture this forward
FROM_END = "meds_from_end"  # int64 [n]: tokens from the answer token to the sequence end (0: no answer)
FEATURES = "meds_features"  # float32 [n, use_last_n_layers] written into model_output / TransferQueue


def _flag(micro_batch: Any, key: str, default: Any = None) -> Any:
    """A non-tensor value of a TensorDict micro-batch (veRL stores flags as NonTensorData)."""
    from verl.utils import tensordict_utils as tu

    return tu.get_non_tensor_data(data=micro_batch, key=key, default=default)


def sp_pack(feats: torch.Tensor) -> torch.Tensor:
    """[mb, F] features of one SP rank (NaN rows: not owned here) -> [mb, F + 1] (rows owned, zeros elsewhere | owned
    flag), whose SUM over the ranks :func:`sp_unpack` turns back into features."""
    owned = torch.isfinite(feats).all(dim=1, keepdim=True)
    return torch.cat([torch.where(owned, feats, torch.zeros_like(feats)), owned.to(feats.dtype)], dim=1)


def sp_unpack(summed: torch.Tensor) -> torch.Tensor:
    """[mb, F + 1] sum over SP ranks of :func:`sp_pack` -> [mb, F]; NaN rows where no rank owned the sample."""
    count = summed[:, -1:]
    return torch.where(count > 0, summed[:, :-1] / count.clamp(min=1), torch.full_like(summed[:, :-1], float("nan")))


class EngineCapture:
    """The capture state of one engine: the hooks, the Ulysses group and whether this micro-batch was armed."""

    def __init__(self, engine: Any, config: MEDSConfig) -> None:
        engine_config = getattr(engine, "engine_config", None)
        refuse_fused_kernels(getattr(engine_config, "use_fused_kernels", False))
        self.config = config
        self.capture = FeatureCapture(engine.module, config)
        self.sp_group = getattr(engine, "ulysses_parallel_group", None)
        self.sp_size = int(getattr(engine, "ulysses_sequence_parallel_size", 1) or 1)
        self._armed = False
        self._batch = 0

    def _sp_rank(self) -> int:
        return torch.distributed.get_rank(self.sp_group) if self.sp_size > 1 else 0

    def arm(self, micro_batch: Any, model_inputs: dict) -> None:
        """Arm the hooks for this micro-batch (called after veRL prepared the model inputs)."""
        self._armed = False
        refuse_fused_kernels(_flag(micro_batch, "use_fused_kernels", False))
        if FROM_END not in micro_batch.keys():
            raise KeyError(f"the batch is flagged {FLAG!r} but has no {FROM_END!r} field; the MEDS trainer writes "
                           "it before compute_log_prob.")
        input_ids = micro_batch["input_ids"]  # nested jagged [mb, j]: [prompt | response], no padding
        cu = input_ids.offsets().long()
        from_end = micro_batch[FROM_END].reshape(-1).to(cu.device).long()
        rows = packed_rows(cu, from_end)  # into the packed sequence of this micro-batch
        has = rows >= 0
        flat_ids = input_ids.values()
        targets = torch.where(has, flat_ids[(rows + 1).clamp(min=0, max=flat_ids.numel() - 1)].long(),
                              torch.full_like(rows, -1))
        width = model_inputs["input_ids"].shape[-1]
        if _flag(micro_batch, "use_remove_padding", True):
            if self.sp_size > 1:
                rows = ulysses_local_rows(rows, width, self._sp_rank())
        else:
            rows = padded_rows(cu.diff(), width, from_end)
        rows = torch.where(has, rows, torch.full_like(rows, -1))
        self._batch = int(from_end.shape[0])
        if bool((rows >= 0).any()):
            self.capture.arm(rows.cpu(), torch.where(rows >= 0, targets, -1).cpu())
            self._armed = True

    def collect(self, device: torch.device) -> torch.Tensor:
        """float32 [mb, use_last_n_layers] for the micro-batch armed last; NaN rows where no rank had an answer."""
        n = self.config.use_last_n_layers
        if self._armed:
            feats = self.capture.collect().float()
        else:
            feats = torch.full((self._batch, n), float("nan"), dtype=torch.float32, device=device)
        self._armed = False
        if self.sp_size > 1:
            feats = self._sp_reduce(feats)
        return feats

    def _sp_reduce(self, feats: torch.Tensor) -> torch.Tensor:
        """ONE all-reduce (SUM) over the Ulysses group; every SP rank must call it."""
        packed = sp_pack(feats)
        torch.distributed.all_reduce(packed, group=self.sp_group)
        return sp_unpack(packed)

    def remove(self) -> None:
        self.capture.remove()


def install_capture(engine: Any, config: MEDSConfig) -> EngineCapture:
    """Hook ``engine.module`` once and wrap ``engine.prepare_model_inputs`` / ``engine.forward_step`` (instance
    attributes shadow the class's methods). Returns the :class:`EngineCapture`; idempotent per engine."""
    existing = getattr(engine, "_meds_capture", None)
    if existing is not None:
        return existing
    state = EngineCapture(engine, config)
    prepare, forward_step = engine.prepare_model_inputs, engine.forward_step

    def prepare_model_inputs(micro_batch, *args, **kwargs):
        model_inputs, output_args = prepare(micro_batch, *args, **kwargs)
        if _flag(micro_batch, FLAG, False):
            state.arm(micro_batch, model_inputs)
        return model_inputs, output_args

    def forward_step_with_features(micro_batch, loss_function, forward_only):
        flagged = bool(forward_only and _flag(micro_batch, FLAG, False))
        try:
            loss, output = forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)
        except BaseException:
            state.capture.disarm()
            raise
        if flagged:
            device = next(iter(output["model_output"].values())).device if output.get("model_output") else "cpu"
            output["model_output"][FEATURES] = state.collect(device)
        return loss, output

    engine.prepare_model_inputs = prepare_model_inputs
    engine.forward_step = forward_step_with_features
    engine._meds_capture = state
    return state
