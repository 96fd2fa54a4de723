"""FeatureCapture: per-layer logit-lens values of the answer token, read from hooks on a causal LM.

For each armed sample b with state row ``r_b`` (the token just before the answer) and answer token ``t_b``, the
feature of decoder layer l is ``z_l = <h_l[r_b], W_U[t_b]> (+ bias[t_b])``, computed in float32. Only the armed rows
(``L x B x H`` numbers) are ever copied out of a forward: no ``output_hidden_states``, no full-vocabulary projection.

The projection runs in the fused gather kernel (``meds_core._native`` on CPU, ``meds_core._native_cuda`` on CUDA;
see ``meds_core.step._native_ops``) when it is built and applies; otherwise in torch
(``_dot_rows``, which stays the oracle). torch and the kernels are imported lazily (inside functions) so that
``import meds_core`` stays cheap.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from meds_core.step import _native_ops
from meds_core.step.model_parts import NORM_NAMES, head_rows, locate_parts, plain_head

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch
    from torch import nn

    from meds_core.step.config import MEDSConfig

__all__ = ["FeatureCapture"]



# ----------------------------------------------------------------------------------------------------------------------
# Pure math (the oracle of the fused gather kernel)
# ----------------------------------------------------------------------------------------------------------------------

def _dot_rows(
    rows_by_layer: torch.Tensor | Sequence[torch.Tensor], w_rows: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``[L, k, H]`` (already normed as wanted) x ``[k, H]`` -> ``[k, L]`` float32 dot products (+ ``bias[k]``)."""
    import torch

    w32 = w_rows.float()
    rows32 = torch.stack([r.to(device=w32.device, dtype=torch.float32) for r in rows_by_layer])
    out = torch.einsum("lkh,kh->kl", rows32, w32)
    if bias is not None:
        out = out + bias.to(device=out.device, dtype=torch.float32).unsqueeze(1)
    return out


def _select_layers(values: torch.Tensor, config: MEDSConfig) -> torch.Tensor:
    """``[k, L_captured]`` float32 -> ``[k, use_last_n_layers]``: consecutive differences if ``use_layer_diff``
    (``v[:, 1:] - v[:, :-1]``), then the last ``use_last_n_layers`` columns."""
    n = config.use_last_n_layers
    if config.use_layer_diff:
        values = values[:, 1:] - values[:, :-1]
    if values.shape[1] < n:
        raise ValueError(f"need at least {n} per-layer values after differencing, got {values.shape[1]}.")
    return values[:, values.shape[1] - n:].contiguous()


def _in_backward() -> bool:
    """True while autograd runs a backward pass (e.g. an activation-checkpoint recompute)."""
    import torch

    fn = getattr(torch._C, "_current_graph_task_id", None)
    try:
        return fn is not None and fn() != -1
    except Exception:  # pragma: no cover - private API changed
        return False


def _as_index(x: Any, what: str) -> torch.Tensor:
    """Tensor / numpy array / list -> 1-D int64 CPU tensor; ValueError naming ``what`` otherwise."""
    import torch

    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    if t.dim() != 1:
        raise ValueError(f"{what} must be 1-D [B], got shape {tuple(t.shape)}.")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{what} must hold integers, got dtype {t.dtype}.")
    return t.to(device="cpu", dtype=torch.int64)


# ----------------------------------------------------------------------------------------------------------------------
# FeatureCapture
# ----------------------------------------------------------------------------------------------------------------------

class FeatureCapture:
    """Hooks on a causal LM that read the MEDS feature of each armed sample during the next forward.

    Usage::

        cap = FeatureCapture(model, config)      # registers hooks once; inert until armed
        cap.arm(rows, targets)                   # rows, targets: int64 [B]
        model(input_ids, ...)                    # any forward: padded [B, T] or packed [1, T]
        feats = cap.collect()                    # float32 [B, use_last_n_layers], NaN rows for no answer
        cap.remove()                             # or use ``with FeatureCapture(...) as cap:``

    Hooks: forward hooks on the last ``config.layers_needed`` decoder layers copy the armed rows (``[k, H]``, model
    dtype, detached); a forward pre-hook on the final norm applies the norm to the earlier layers' rows
    (``final_norm="all"``) and a forward hook on it copies its output rows (layer L post-norm, exactly what HF's
    ``output_hidden_states`` reports); a forward pre-hook on lm_head gathers ``W_U[t_b]`` (unsharded at that moment
    under FSDP) and computes the ``[k, layers_needed]`` float32 dot products. If lm_head never runs, the projection
    is done in ``collect()``. A layer that fires again within one arming (checkpoint recompute, a second forward)
    does not overwrite its rows; hooks running inside a backward pass are ignored.

    The rows of all captured layers go into one ``[n, k, H]`` buffer, which the fused gather kernel reads in a
    single pass (RMSNorm of the earlier layers for ``final_norm="all"`` included, with HF's roundings); models,
    dtypes or devices the kernel does not cover use the torch path (one warning if the kernel was not built).
    """

    def __init__(self, model: nn.Module, config: MEDSConfig) -> None:
        parts = locate_parts(model)
        n_layers = len(parts.layers)
        need = config.layers_needed
        name = type(parts.model).__name__
        if need > n_layers:
            hint = n_layers - 1 if config.use_layer_diff else n_layers
            raise ValueError(f"{name} has {n_layers} decoder layers but MEDSConfig needs {need} "
                             f"(use_last_n_layers={config.use_last_n_layers}"
                             f"{' + 1 for use_layer_diff' if config.use_layer_diff else ''}); "
                             f"set use_last_n_layers <= {hint}.")
        if config.final_norm != "none" and parts.norm is None:
            raise ValueError(f"cannot find the final norm of {name} (looked for {', '.join(NORM_NAMES)}); "
                             f"final_norm={config.final_norm!r} needs it: use final_norm='none' for a model "
                             "without one.")
        self.config = config
        self._parts = parts
        self._n = need
        self._layers = parts.layers[n_layers - need:]
        self._handles: list = []
        for i, layer in enumerate(self._layers):
            self._handles.append(layer.register_forward_hook(functools.partial(self._layer_hook, i)))
        if config.final_norm != "none":
            if config.final_norm == "all":
                self._handles.append(parts.norm.register_forward_pre_hook(self._norm_pre_hook))
            self._handles.append(parts.norm.register_forward_hook(self._norm_hook))
        self._handles.append(parts.head.register_forward_pre_hook(self._head_pre_hook))
        self._armed = False
        self._reset()

    # -- state ---------------------------------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._batch = 0
        self._sel = None  # int64 [k] rows into the flattened token axis (CPU)
        self._tgt = None  # int64 [k] answer token ids (CPU)
        self._valid_pos = None  # int64 [k] sample index of each armed row (CPU)
        self._idx_cache: dict = {}
        self._max_row = -1
        self._seen = False  # some armed layer hook ran since arm()
        self._n_tokens = None  # token count of the forward the rows were taken from
        self._raw: list = [None] * self._n  # per captured layer: [k, H] model dtype
        self._buf = None  # [n, k, H] model dtype: the rows of every captured layer (self._raw[i] is self._buf[i])
        self._in_buf = [False] * self._n  # whether self._raw[i] is a view of self._buf
        self._norm_params = None  # (weight, eps) of the final norm for the kernel (final_norm="all")
        self._normed = None  # [n-1, k, H]: final norm applied to all but the last layer (final_norm="all")
        self._post_last = None  # [k, H]: final-norm output rows (layer L as HF reports it)
        self._values = None  # [k, n] float32

    @property
    def armed(self) -> bool:
        """Whether the next forward will be captured."""
        return self._armed

    def _device(self) -> torch.device:
        return self._parts.head.weight.device

    def _index_on(self, device: torch.device) -> torch.Tensor:
        idx = self._idx_cache.get(device)
        if idx is None:
            idx = self._sel.to(device)
            self._idx_cache[device] = idx
        return idx

    # -- public API ----------------------------------------------------------------------------------------------------

    def arm(self, rows: Any, targets: Any) -> None:
        """Capture the next forward.

        Args:
            rows: int64 ``[B]``, one per sample: flat index into the (batch x sequence) token axis of the next
                forward in its own layout (padded ``[B, T]``: ``b * T + q``; packed ``[1, T]``: position in the
                packed sequence), ``q`` being the position just before the answer token. ``< 0``: no answer.
            targets: int64 ``[B]`` answer token ids. ``< 0``: no answer.
        Tensors, numpy arrays and lists are accepted. Re-arming discards anything captured before.
        """
        import torch

        r = _as_index(rows, "rows")
        t = _as_index(targets, "targets")
        if r.shape != t.shape:
            raise ValueError(f"rows and targets must have the same length, got {r.shape[0]} and {t.shape[0]}.")
        vocab = self._parts.head.weight.shape[0]
        if bool((t >= vocab).any()):
            raise ValueError(f"targets holds token id {int(t.max())} >= vocabulary size {vocab}.")
        self._reset()
        valid = (r >= 0) & (t >= 0)
        self._batch = int(r.shape[0])
        self._valid_pos = torch.nonzero(valid).flatten()
        self._sel = r[valid].contiguous()
        self._tgt = t[valid].contiguous()
        self._max_row = int(self._sel.max()) if self._sel.numel() else -1
        self._armed = True

    def collect(self) -> torch.Tensor:
        """Features of the forward run since :meth:`arm`, then disarm.

        Returns:
            float32 ``[B, use_last_n_layers]`` on the LM head's device; NaN rows for samples with no answer.
        Raises:
            RuntimeError: not armed, or no (complete) forward ran since ``arm()``.
        """
        import torch

        if not self._armed:
            raise RuntimeError("FeatureCapture.collect() called without arm(rows, targets) before the forward.")
        try:
            if not self._seen:
                raise RuntimeError("FeatureCapture.collect(): no forward ran since arm(); run the model forward "
                                   "between arm() and collect().")
            if any(r is None for r in self._raw):
                raise RuntimeError("FeatureCapture.collect(): the forward since arm() did not reach all of the last "
                                   f"{self._n} decoder layers.")
            if self._values is None:
                self._compute()
            feats = _select_layers(self._values, self.config)
            out = torch.full((self._batch, self.config.use_last_n_layers), float("nan"), dtype=torch.float32,
                             device=self._device())
            if feats.shape[0]:
                out[self._valid_pos.to(out.device)] = feats.to(out.device)
            return out
        finally:
            self._armed = False
            self._reset()

    def disarm(self) -> None:
        """Drop anything armed or captured; hooks become inert."""
        self._armed = False
        self._reset()

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.disarm()

    def __enter__(self) -> FeatureCapture:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # -- hooks ---------------------------------------------------------------------------------------------------------

    def _active(self) -> bool:
        return self._armed and not _in_backward()

    def _layer_hook(self, i: int, module: nn.Module, args: Any, output: Any) -> None:
        if not self._active():
            return None
        self._seen = True
        if self._raw[i] is not None:  # already captured in this arming (recompute / second forward)
            return None
        hs = output[0] if isinstance(output, (tuple, list)) else output
        if not hasattr(hs, "shape"):
            raise TypeError(f"MEDS FeatureCapture: decoder layer {type(module).__name__} returned "
                            f"{type(output).__name__}; expected a tensor or a tuple whose first item is one.")
        import torch

        flat = hs.reshape(-1, hs.shape[-1])
        if self._max_row >= flat.shape[0]:
            raise ValueError(f"rows: index {self._max_row} is out of range for this forward's {flat.shape[0]} tokens "
                             f"(hidden states {tuple(hs.shape)}); rows index the flattened (batch x sequence) axis.")
        self._n_tokens = flat.shape[0]
        with torch.no_grad():
            src, idx = flat.detach(), self._index_on(flat.device)
            if self._buf is None:
                self._buf = src.new_empty((self._n, idx.shape[0], src.shape[1]))
            buf = self._buf
            if buf.device == src.device and buf.dtype == src.dtype and buf.shape[2] == src.shape[1]:
                self._raw[i] = torch.index_select(src, 0, idx, out=buf[i])
                self._in_buf[i] = True
            else:  # layers on several devices / dtypes: keep separate rows
                self._raw[i] = src.index_select(0, idx)
        return None

    def _norm_pre_hook(self, module: nn.Module, args: Any) -> None:
        if (not self._active() or self._normed is not None or self._norm_params is not None or self._n < 2
                or any(r is None for r in self._raw)):
            return None
        import torch

        with torch.no_grad():
            params = self._kernel_norm_params()
            if params is not None:  # the kernel normalises layers 1..n-1 itself: keep the weight as it is now
                self._norm_params = (params[0].clone(), params[1])
                return None
            dev = self._raw[-1].device
            self._normed = self._parts.norm.forward(torch.stack([r.to(dev) for r in self._raw[:-1]]))
        return None

    def _norm_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._active() or self._post_last is not None or any(r is None for r in self._raw):
            return None
        hs = output[0] if isinstance(output, (tuple, list)) else output
        if not hasattr(hs, "shape"):
            return None
        flat = hs.reshape(-1, hs.shape[-1])
        if flat.shape[0] != self._n_tokens:  # not the final norm of this forward's token axis: fall back to lazy
            return None
        import torch

        with torch.no_grad():
            self._post_last = flat.detach().index_select(0, self._index_on(flat.device))
        return None

    def _head_pre_hook(self, module: nn.Module, args: Any) -> None:
        if not self._active() or self._values is not None or any(r is None for r in self._raw):
            return None
        self._compute()
        return None

    # -- projection ----------------------------------------------------------------------------------------------------

    def _kernel_applies(self) -> bool:
        """The fused kernel is built for the head's device and reads the captured dtype and the head's dtype."""
        head_w = self._parts.head.weight
        rows = next(r for r in self._raw if r is not None)
        return (_native_ops.supported_dtype(rows.dtype) and _native_ops.supported_dtype(head_w.dtype)
                and _native_ops.available(head_w.device.type))

    def _kernel_norm_params(self) -> tuple[torch.Tensor, float] | None:
        """(weight, eps) of the final norm if the kernel can apply it (HF RMSNorm semantics), else None."""
        if not self._kernel_applies():
            return None
        return _native_ops.hf_rms_norm(self._parts.norm, self._raw[-1].dtype)

    def _compute_kernel(self, dev: torch.device) -> bool:
        """``self._values`` from the fused kernel; False (nothing changed) where it does not apply."""
        import torch

        if not self._kernel_applies():
            return False
        n, fn = self._n, self.config.final_norm
        dtype = self._raw[-1].dtype
        last = self._post_last if fn != "none" else None  # layer n as HF reports it (the final norm's output)
        if any(r.dtype != dtype for r in self._raw) or (last is not None and last.dtype != dtype):
            return False
        begin = 0 if fn == "all" else n - 1 if fn == "last" else n
        end = n - 1 if last is not None else n
        norm_w = eps = None
        if end > begin:
            params = self._norm_params or _native_ops.hf_rms_norm(self._parts.norm, dtype)
            if params is None:
                return False
            norm_w, eps = params[0].to(dev), params[1]
        tgt = self._tgt.to(dev)
        head = plain_head(self._parts.head)
        if head is not None and head[0].dim() == 2:
            weight, bias = head
        else:  # LoRA head: gather the adapted rows in torch, then index them in order
            weight, bias = head_rows(self._parts.head, tgt)
            tgt = torch.arange(tgt.shape[0], device=dev)
        if any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in (weight, bias) if t is not None):
            return False  # a tensor subclass (quantised weight, ...): no raw pointer to read
        if all(self._in_buf):
            hidden = self._buf.to(dev)
        else:
            hidden = torch.stack([r.to(dev) for r in self._raw])
        if last is not None:  # raw layer n is not needed any more: its slot takes the post-norm rows
            hidden[n - 1].copy_(last)
        try:
            self._values = _native_ops.gather_dot(hidden, weight.to(dev), tgt, None if bias is None else bias.to(dev),
                                                  norm_weight=norm_w, eps=eps or 0.0, norm_layers=(begin, end),
                                                  hf_rounding=True)
        except RuntimeError as exc:  # the launch failed (e.g. no kernel image for this GPU): torch from now on
            _native_ops.disable(dev.type, exc)
            return False
        return True

    def _compute(self) -> None:
        """Norm (whatever the hooks did not do yet) + gather ``W_U[t]`` + float32 dots -> ``self._values [k, n]``."""
        import torch

        with torch.no_grad():
            dev = self._device()
            if self._compute_kernel(dev):
                return
            fn = self.config.final_norm
            raw = [r.to(dev) for r in self._raw]
            if fn == "none":
                rows = raw
            else:
                norm = self._parts.norm.forward
                last = self._post_last.to(dev) if self._post_last is not None else norm(raw[-1])
                if fn == "last" or self._n == 1:
                    rows = raw[:-1] + [last]
                else:
                    normed = self._normed.to(dev) if self._normed is not None else norm(torch.stack(raw[:-1]))
                    rows = list(normed.unbind(0)) + [last]
            w, b = head_rows(self._parts.head, self._tgt.to(dev))
            self._values = _dot_rows(rows, w, b)
