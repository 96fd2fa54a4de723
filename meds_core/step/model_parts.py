"""The parts of a (wrapped) Hugging Face causal LM that MEDS reads: the model under its wrappers, its decoder
layers, final norm and LM head, the head's rows for given tokens, and the forward arguments that keep logits small.

Used by :mod:`meds_core.step.capture`, :mod:`meds_core.step.features` and both adapters. Wrappers handled: PEFT
(``get_base_model()``), DDP / DeepSpeed (``.module``), FSDP1 (``_fsdp_wrapped_module``), torch.compile
(``_orig_mod``); FSDP2 / tensor-parallel weights are DTensors, made whole by :func:`full_tensor`. torch is never
imported here: every function works on the objects it is given.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["NORM_NAMES", "ModelParts", "full_tensor", "head_rows", "locate_parts", "logits_kwargs", "plain_head",
           "unwrap_model", "unwrap_module"]

_LAYER_NAMES = ("layers", "h", "blocks")
NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_layer_norm")  # attribute names of a final norm
_DECODER_NAMES = ("model", "transformer")


@dataclass
class ModelParts:
    """The parts of a causal LM that feature capture hooks (see :func:`locate_parts`)."""

    model: nn.Module  # the unwrapped causal LM
    head: nn.Module  # lm_head (may be a PEFT wrapper)
    layers: list  # decoder layers, in order
    norm: nn.Module | None  # final norm


def unwrap_module(m: Any) -> Any:
    """Strip FSDP1 / torch.compile wrappers of one module (hooks must sit on the module that owns the weights)."""
    for _ in range(8):
        inner = getattr(m, "_fsdp_wrapped_module", None) or getattr(m, "_orig_mod", None)
        if inner is None:
            return m
        m = inner
    return m


def unwrap_model(model: Any) -> Any:
    """PEFT (``get_base_model()``), DDP / DeepSpeed (``.module``), FSDP1 (``_fsdp_wrapped_module``),
    torch.compile (``_orig_mod``) -> the HF causal LM. FSDP2 shards in place: nothing to unwrap."""
    m = model
    for _ in range(16):
        nxt = None
        if callable(getattr(m, "get_base_model", None)) and (
                type(m).__name__.startswith("Peft") or hasattr(m, "peft_config")):
            nxt = m.get_base_model()
        elif getattr(m, "_fsdp_wrapped_module", None) is not None:
            nxt = m._fsdp_wrapped_module
        elif getattr(m, "_orig_mod", None) is not None:
            nxt = m._orig_mod
        elif (getattr(m, "module", None) is not None and not callable(getattr(m, "get_output_embeddings", None))
              and getattr(m, "lm_head", None) is None):
            nxt = m.module
        if nxt is None or nxt is m:
            return m
        m = nxt
    return m


def locate_parts(model: Any) -> ModelParts:
    """Find lm_head, decoder layers and final norm of a (possibly wrapped) HF causal LM; ValueError if not found."""
    m = unwrap_model(model)
    name = type(m).__name__
    head = None
    if callable(getattr(m, "get_output_embeddings", None)):
        try:
            head = m.get_output_embeddings()
        except (NotImplementedError, AttributeError):
            head = None
    if head is None:
        head = getattr(m, "lm_head", None)
    if head is None:
        raise ValueError(f"cannot find the LM head of {name}: neither get_output_embeddings() nor .lm_head is set.")

    candidates = []
    if callable(getattr(m, "get_decoder", None)):
        try:
            candidates.append(m.get_decoder())
        except (NotImplementedError, AttributeError):
            pass
    candidates += [getattr(m, a, None) for a in _DECODER_NAMES]
    for cand in list(candidates):  # OPT-style nesting: model.decoder.layers
        if cand is not None and getattr(cand, "decoder", None) is not None:
            candidates.append(cand.decoder)
    for cand in candidates:
        if cand is None:
            continue
        dec = unwrap_module(cand)
        for attr in _LAYER_NAMES:
            layers = getattr(dec, attr, None)
            if layers is not None and hasattr(layers, "__len__") and len(layers) > 0:
                norm = next((getattr(dec, a) for a in NORM_NAMES if getattr(dec, a, None) is not None), None)
                return ModelParts(
                    model=m,
                    head=unwrap_module(head),
                    layers=[unwrap_module(layer) for layer in layers],
                    norm=unwrap_module(norm) if norm is not None else None,
                )
    raise ValueError(f"cannot find the decoder layers of {name}: looked for get_decoder() / .model / .transformer "
                     f"with a {' / '.join('.' + a for a in _LAYER_NAMES)} list.")


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a possibly sharded DTensor (collective under FSDP2/TP: every rank must call)."""
    return t.full_tensor() if callable(getattr(t, "full_tensor", None)) else t


def head_rows(head: nn.Module, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unembedding rows ``[k, H]`` and bias ``[k]`` (or None) of the answer tokens ``targets [k]``.

    Handles a plain ``nn.Linear`` head (weight ``[V, H]``), PEFT ``ModulesToSaveWrapper`` (attribute access goes to
    the active copy) and a PEFT LoRA-wrapped head (base rows + ``scaling * B[t] @ A`` per active adapter; DoRA and
    other LoRA variants are not supported).
    """
    base = head
    delta = None
    if getattr(head, "lora_A", None) is not None and callable(getattr(head, "get_base_layer", None)):
        base = head.get_base_layer()
        if not getattr(head, "disable_adapters", False) and not getattr(head, "merged", False):
            for name in head.active_adapters:
                if name not in head.lora_A:
                    continue
                if name in getattr(head, "lora_variant", {}) or getattr(head, "use_dora", {}).get(name, False):
                    raise NotImplementedError(f"MEDS features: LoRA variant (e.g. DoRA) on the LM head (adapter "
                                              f"{name!r}) is not supported; merge it or leave lm_head out of "
                                              "target_modules.")
                if getattr(head, "fan_in_fan_out", False):
                    raise NotImplementedError("MEDS features: fan_in_fan_out LoRA on the LM head is not supported.")
                a = full_tensor(head.lora_A[name].weight).float()  # [r, H]
                b = full_tensor(head.lora_B[name].weight)  # [V, r]
                d = (b.index_select(0, targets.to(b.device)).float() @ a.to(b.device)) * head.scaling[name]
                delta = d if delta is None else delta + d
    weight = full_tensor(base.weight)
    if weight.dim() != 2:
        raise ValueError(f"LM head weight has shape {tuple(weight.shape)}; expected [vocab, hidden].")
    idx = targets.to(weight.device)
    w = weight.index_select(0, idx)
    if delta is not None:
        w = w.float() + delta.to(w.device)
    bias = getattr(base, "bias", None)
    b_rows = full_tensor(bias).index_select(0, idx.to(bias.device)) if bias is not None else None
    return w, b_rows


def plain_head(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Full unembedding ``[V, H]`` and bias ``[V]`` of a head the kernel can gather from directly, or None (LoRA on
    the head: :func:`head_rows` adds the adapter's delta to the gathered rows)."""
    if getattr(head, "lora_A", None) is not None and callable(getattr(head, "get_base_layer", None)):
        return None
    weight = full_tensor(head.weight)
    bias = getattr(head, "bias", None)
    return weight, (full_tensor(bias) if bias is not None else None)


def _accepts(fn: Any, name: str) -> tuple[bool, bool]:
    """(``name`` is an explicit parameter of ``fn``, ``fn`` takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False, False
    return name in params, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def logits_kwargs(model: nn.Module) -> dict[str, int]:
    """``{"logits_to_keep": 1}`` (or the older ``num_logits_to_keep``) when the LM accepts it, else ``{}``."""
    inner = unwrap_model(model)
    for name in ("logits_to_keep", "num_logits_to_keep"):
        explicit, _ = _accepts(inner.forward, name)
        if not explicit:
            continue
        if model is not inner:  # wrappers (PEFT, DDP, FSDP) must pass it through
            outer_explicit, outer_var = _accepts(model.forward, name)
            if not (outer_explicit or outer_var):
                return {}
        return {name: 1}
    return {}
