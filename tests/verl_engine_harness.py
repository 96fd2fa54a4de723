"""A veRL 0.9 ``FSDPEngineWithLMHead`` that runs its real forward code on CPU, for the MEDS capture tests.

veRL's FSDP engines are registered for cuda/npu only and 0.9.1 falls back to the ``cuda`` device name on a CPU box,
so the tests (1) build the engine object without ``__init__`` (no device mesh, no FSDP wrap: the tiny model is used
as it is, which is what FSDP2 exposes to hooks anyway), (2) point veRL's device helpers at the CPU, and (3) use a
single-process gloo group for the all-reduce ``forward_backward_batch`` does. Everything else -- micro-batching with
dynamic-batch reordering, ``prepare_model_inputs`` (packed or padded), the model forward, ``prepare_model_outputs``,
``postprocess_batch_func`` -- is veRL's own code.
"""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import torch

VOCAB = 101


def init_gloo(backend: str = "gloo") -> None:
    """Single-process default group, gloo unless told (GPU: "cpu:gloo,cuda:nccl"); no-op if one exists."""
    if torch.distributed.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.distributed.init_process_group(backend, rank=0, world_size=1)


def patch_cpu_devices(monkeypatch) -> None:
    """veRL 0.9.1 resolves the device to 'cuda' on a CPU box; point the helpers the engine path uses at the CPU."""
    import verl.utils.seqlen_balancing as seqlen_balancing
    import verl.workers.engine.fsdp.transformer_impl as impl

    monkeypatch.setattr(impl, "get_device_name", lambda: "cpu")
    monkeypatch.setattr(impl, "get_device_id", lambda: "cpu")
    monkeypatch.setattr(seqlen_balancing, "get_device_name", lambda: "cpu")


def tiny_qwen2(seed: int = 0, n_layers: int = 4):
    """Random Qwen2ForCausalLM (hidden 64, untied head), weights scaled so features are O(1); eval mode, fp32."""
    from meds_core import testing

    return testing.tiny_qwen2(VOCAB, num_hidden_layers=n_layers, seed=seed, weight_std=0.15,
                              max_position_embeddings=256, eval_mode=True)


def make_engine(model, *, use_remove_padding: bool = True):
    """veRL's FSDPEngineWithLMHead around ``model`` without __init__ (see the module docstring)."""
    from verl.utils import torch_functional as verl_F
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    engine = object.__new__(FSDPEngineWithLMHead)
    engine.module = model
    engine.engine_config = SimpleNamespace(use_fused_kernels=False, entropy_checkpointing=False,
                                           entropy_from_logits_with_chunking=False,
                                           use_remove_padding=use_remove_padding)
    engine.model_config = SimpleNamespace(use_remove_padding=use_remove_padding)
    engine.use_remove_padding = use_remove_padding
    engine.ulysses_sequence_parallel_size = 1
    engine.use_ulysses_sp = False
    engine.ulysses_device_mesh = None
    engine.ulysses_parallel_group = None
    engine.pad_to_length = False
    engine.pad_to_length_bucket = 0
    engine._autocast_dtype = torch.float32
    engine.scaler = None
    engine.compute_entropy_from_logits = verl_F.entropy_from_logits
    return engine


def make_batch(seqs, prompt_lens, from_end, *, use_remove_padding=True, use_dynamic_bsz=False, micro_batch_size=2,
               max_token_len=64, capture=True):
    """A TensorDict shaped like veRL 0.9's compute_log_prob input (nested NO_PADDING ``[prompt | response]``)."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    nested = lambda ts: torch.nested.as_nested_tensor(ts, layout=torch.jagged)  # noqa: E731
    n = len(seqs)
    loss_mask = [torch.cat([torch.zeros(p, dtype=torch.long), torch.ones(len(s) - p, dtype=torch.long)])
                 for s, p in zip(seqs, prompt_lens)]
    fields = {
        "input_ids": nested(list(seqs)),
        "position_ids": nested([torch.arange(len(s)) for s in seqs]),
        "loss_mask": nested(loss_mask),
        "meds_from_end": torch.as_tensor(from_end, dtype=torch.long),
    }
    data = TensorDict(fields, batch_size=[n])
    tu.assign_non_tensor(data, use_remove_padding=use_remove_padding, use_dynamic_bsz=use_dynamic_bsz,
                         max_token_len_per_gpu=max_token_len, micro_batch_size_per_gpu=micro_batch_size,
                         temperature=1.0, calculate_entropy=True, use_fused_kernels=False, pad_token_id=0)
    if capture:
        tu.assign_non_tensor(data, meds_capture=True)
    return data


@torch.no_grad()
def oracle_features(model, seqs, from_end, config) -> torch.Tensor:
    """Independent reference [B, F] float64: one unpadded forward per sample with ``output_hidden_states``; raw
    layer outputs (the last one post-norm, as HF reports it) at the state before the answer, dotted with
    ``lm_head.weight[answer token]``; layer diff and last-n selection as in the paper. NaN rows: no answer."""
    rows = []
    for seq, fe in zip(seqs, from_end):
        if fe == 0:
            rows.append(torch.full((config.use_last_n_layers,), float("nan"), dtype=torch.float64))
            continue
        pos = len(seq) - int(fe) - 1
        target = int(seq[pos + 1])
        out = model(input_ids=seq.unsqueeze(0), output_hidden_states=True, use_cache=False)
        hs = out.hidden_states[1:]  # decoder layers 1..L (embedding output excluded)
        w = model.lm_head.weight[target].double()
        vals = torch.stack([h[0, pos].double() @ w for h in hs])
        if config.use_layer_diff:
            vals = vals[1:] - vals[:-1]
        rows.append(vals[-config.use_last_n_layers:].cpu())
    return torch.stack(rows)


def char_tokenizer():
    """Character-level ``tokenizers.Tokenizer`` (ids < VOCAB) built in-process: one token per character."""
    from meds_core import testing

    alphabet = sorted(set("0123456789+-=*/^()[]{}\\$.,:;!? abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n"))
    assert len(alphabet) + 2 <= VOCAB
    return testing.char_tokenizer(alphabet, ("<eos>", "<unk>"), unk="<unk>", added_specials=("<eos>",))
