"""FeatureCapture / extract_features against an output_hidden_states oracle on tiny random HF models."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from meds_core.step.capture import FeatureCapture, _dot_rows, _select_layers  # noqa: E402
from meds_core.step.config import MEDSConfig  # noqa: E402
from meds_core.step.features import extract_features  # noqa: E402
from meds_core.testing import tiny_qwen2  # noqa: E402

VOCAB = 97
N_LAYERS = 6


# the torch projection with the final norm applied as the model applies it: the oracle of the capture
def _project(
    rows_by_layer: torch.Tensor | Sequence[torch.Tensor],
    w_rows: torch.Tensor,
    bias: torch.Tensor | None = None,
    final_norm: str = "none",
    norm_module: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Project captured hidden rows onto their answer tokens' unembedding rows.

    Args:
        rows_by_layer: ``[L, k, H]`` raw decoder-layer outputs (model dtype), layer order, or a list of ``[k, H]``.
        w_rows: ``[k, H]`` unembedding rows ``W_U[t_b]`` (any float dtype).
        bias: ``[k]`` head bias at ``t_b``, or None.
        final_norm: ``"last"`` (norm on layer L only), ``"all"`` (every layer) or ``"none"``.
        norm_module: the model's final norm, applied in the model dtype; required unless ``final_norm == "none"``.

    Returns:
        ``[k, L]`` float32, ``out[b, l] = <norm?(rows[l, b]).float(), w_rows[b].float()> + bias[b]``.
    """
    import torch

    rows = list(rows_by_layer)
    if final_norm not in ("last", "all", "none"):
        raise ValueError(f"final_norm={final_norm!r}; use 'last', 'all' or 'none'.")
    if final_norm != "none":
        if norm_module is None:
            raise ValueError(f"final_norm={final_norm!r} needs the model's final norm module (norm_module=None).")
        if final_norm == "all" and len(rows) > 1:
            normed = norm_module(torch.stack(rows[:-1]))
            rows = list(normed.unbind(0)) + [norm_module(rows[-1])]
        else:
            rows[-1] = norm_module(rows[-1])
    return _dot_rows(rows, w_rows, bias)


# ----------------------------------------------------------------------------------------------------------------------
# tiny models
# ----------------------------------------------------------------------------------------------------------------------

def _make(family: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """Tiny random causal LM in eval mode, dropout off. Larger init than HF's (std 0.02) so features are O(1)."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, num_hidden_layers=N_LAYERS, num_attention_heads=4, hidden_size=64)
    if family == "qwen2":
        model = tiny_qwen2(VOCAB, num_hidden_layers=N_LAYERS, seed=None)
    elif family == "llama_tied":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=True, **common))
        assert model.lm_head.weight is model.model.embed_tokens.weight
    elif family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=64, n_layer=N_LAYERS, n_head=4, vocab_size=VOCAB, n_positions=64,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))
    elif family == "phi":  # lm_head with a bias, final norm named final_layernorm
        model = transformers.PhiForCausalLM(transformers.PhiConfig(
            intermediate_size=128, partial_rotary_factor=0.5, resid_pdrop=0.0, embd_pdrop=0.0,
            attention_dropout=0.0, **common))
    else:
        raise AssertionError(family)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.15)
        if getattr(model.lm_head, "bias", None) is not None:
            model.lm_head.bias.normal_(0.0, 1.0)
    return model.to(dtype).eval()


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(last decoder layer, final norm, lm_head), found independently of meds_core."""
    if hasattr(model, "transformer"):
        return model.transformer.h[-1], model.transformer.ln_f, model.lm_head
    norm = getattr(model.model, "norm", None) or model.model.final_layernorm
    return model.model.layers[-1], norm, model.lm_head


def _left_padded_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids [4, 12] left-padded, attention_mask, answer_positions (one sample without an answer)."""
    g = torch.Generator().manual_seed(seed)
    bsz, seq = 4, 12
    ids = torch.randint(0, VOCAB, (bsz, seq), generator=g)
    mask = torch.ones(bsz, seq, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :5] = 0
    ids[mask == 0] = 0
    answer_positions = torch.tensor([7, 11, 9, -1])
    return ids, mask, answer_positions


def _position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


# ----------------------------------------------------------------------------------------------------------------------
# oracle: full output_hidden_states forward
# ----------------------------------------------------------------------------------------------------------------------

def _oracle(model, input_ids, attention_mask, position_ids, rows, targets, config, return_all=False):
    """Features from output_hidden_states (+ a separate hook for the raw last layer). rows/targets: int [B], -1 none.

    Returns float32 [B, F] (NaN rows for no answer); with return_all also the [B, L] per-layer values.
    """
    last_layer, norm, head = _parts(model)
    raw_last = {}

    def grab(module, args, output):
        raw_last["h"] = (output[0] if isinstance(output, tuple) else output).detach()

    handle = last_layer.register_forward_hook(grab)
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    hs = list(out.hidden_states[1:])  # layers 1..L; HF's last entry is post final norm
    n_layers = len(hs)
    with torch.no_grad():
        if config.final_norm == "none":
            hs[-1] = raw_last["h"]
        elif config.final_norm == "all":
            hs = [norm(h) for h in hs[:-1]] + [hs[-1]]
        flat = torch.stack([h.reshape(-1, h.shape[-1]) for h in hs])  # [L, N, H]
    rows = torch.as_tensor(rows)
    targets = torch.as_tensor(targets)
    bsz = rows.shape[0]
    weight = head.weight.detach().float()
    bias = head.bias.detach().float() if head.bias is not None else None
    vals = torch.full((bsz, n_layers), float("nan"))
    for b in range(bsz):
        r, t = int(rows[b]), int(targets[b])
        if r < 0 or t < 0:
            continue
        for layer in range(n_layers):
            z = flat[layer, r].float() @ weight[t]
            vals[b, layer] = z + (bias[t] if bias is not None else 0.0)
    kept = vals[:, n_layers - config.layers_needed:]
    if config.use_layer_diff:
        kept = kept[:, 1:] - kept[:, :-1]
    feats = kept[:, -config.use_last_n_layers:]
    return (feats, vals) if return_all else feats


def _rows_targets(ids, mask, answer_positions):
    """Padded-layout rows b*T + pos - 1 and targets ids[b, pos] (-1 where no answer / no preceding state)."""
    bsz, seq = ids.shape
    rows, targets = [], []
    for b in range(bsz):
        p = int(answer_positions[b])
        if p >= 1 and int(mask[b, p - 1]) == 1:
            rows.append(b * seq + p - 1)
            targets.append(int(ids[b, p]))
        else:
            rows.append(-1)
            targets.append(-1)
    return torch.tensor(rows), torch.tensor(targets)


def _tol(dtype, final_norm="last"):
    # Both sides project the very same hidden-state numbers (bf16 states included: the oracle reads the same bf16
    # tensors), so only the order of the float32 sums differs: ~1e-6 on features of size O(1-10).
    # Exception, bf16 with final_norm="all": our norm runs on a row subset, which a backend may round 1 bf16 ulp
    # (2^-8 relative) differently per element; sum_i ulp(h_i) |w_i| stays well below 3e-2 for these O(1) features.
    if dtype == torch.bfloat16 and final_norm == "all":
        return dict(rtol=2e-2, atol=3e-2)
    return dict(rtol=1e-5, atol=1e-5)


FAMILIES = ["qwen2", "llama_tied", "gpt2", "phi"]


# ----------------------------------------------------------------------------------------------------------------------
# parity with the oracle
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("use_layer_diff", [False, True], ids=["raw", "diff"])
@pytest.mark.parametrize("final_norm", ["last", "all", "none"])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_oracle(family, final_norm, use_layer_diff, dtype):
    model = _make(family, dtype)
    config = MEDSConfig(use_last_n_layers=4, use_layer_diff=use_layer_diff, final_norm=final_norm)
    ids, mask, answer_positions = _left_padded_batch()
    rows, targets = _rows_targets(ids, mask, answer_positions)
    expected = _oracle(model, ids, mask, _position_ids(mask), rows, targets, config)
    assert torch.isnan(expected[3]).all() and torch.isfinite(expected[:3]).all()

    got = extract_features(model, ids, mask, answer_positions, config)
    assert got.dtype == torch.float32 and got.shape == (4, 4)
    torch.testing.assert_close(got, expected, equal_nan=True, **_tol(dtype, final_norm))

    # FeatureCapture used directly on a plain forward (full logits, no logits_to_keep)
    with FeatureCapture(model, config) as cap, torch.no_grad():
        cap.arm(rows, targets)
        model(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask))
        direct = cap.collect()
    torch.testing.assert_close(direct, expected, equal_nan=True, **_tol(dtype, final_norm))


def test_all_layers_and_bias_values():
    """use_last_n_layers = L: every layer's value equals the oracle's, with the head bias included (phi)."""
    model = _make("phi")
    config = MEDSConfig(use_last_n_layers=N_LAYERS, final_norm="last")
    ids, mask, answer_positions = _left_padded_batch()
    rows, targets = _rows_targets(ids, mask, answer_positions)
    expected, per_layer = _oracle(model, ids, mask, _position_ids(mask), rows, targets, config, return_all=True)
    got = extract_features(model, ids, mask, answer_positions, config)
    torch.testing.assert_close(got, per_layer, equal_nan=True, rtol=1e-5, atol=1e-5)
    # the bias matters: without it the values differ
    bias = model.lm_head.bias.detach()[targets[:3]]
    assert (bias.abs() > 1e-3).all()


def test_diff_needs_one_more_layer():
    config = MEDSConfig(use_last_n_layers=N_LAYERS - 1, use_layer_diff=True)
    model = _make("qwen2")
    ids, mask, answer_positions = _left_padded_batch()
    rows, targets = _rows_targets(ids, mask, answer_positions)
    expected = _oracle(model, ids, mask, _position_ids(mask), rows, targets, config)
    got = extract_features(model, ids, mask, answer_positions, config)
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# layouts
# ----------------------------------------------------------------------------------------------------------------------

def test_packed_layout_matches_per_sample():
    """Samples packed in one [1, T] sequence (position_ids restart, no attention_mask: HF isolates the segments)."""
    model = _make("qwen2")
    config = MEDSConfig(use_last_n_layers=4, use_layer_diff=True, final_norm="all")
    g = torch.Generator().manual_seed(3)
    lengths = [7, 5, 9]
    answers = [4, 3, 8]  # answer position inside each segment
    seqs = [torch.randint(0, VOCAB, (n,), generator=g) for n in lengths]
    packed = torch.cat(seqs).unsqueeze(0)
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    starts = np.cumsum([0] + lengths[:-1])
    rows = [int(s) + a - 1 for s, a in zip(starts, answers)] + [-1]  # a 4th sample without an answer
    targets = [int(seq[a]) for seq, a in zip(seqs, answers)] + [5]

    with FeatureCapture(model, config) as cap, torch.no_grad():
        cap.arm(np.array(rows), targets)  # numpy rows, list targets
        model(input_ids=packed, position_ids=position_ids, use_cache=False)  # a cache disables packed masking
        got = cap.collect()
    assert got.shape == (4, 4) and torch.isnan(got[3]).all()

    expected = _oracle(model, packed, None, position_ids, rows, targets, config)
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=1e-5, atol=1e-5)
    for i, (seq, a) in enumerate(zip(seqs, answers)):
        single = extract_features(model, seq.unsqueeze(0), None, torch.tensor([a]), config)
        torch.testing.assert_close(got[i:i + 1], single, rtol=1e-4, atol=1e-4)


def test_flat_rows_in_padded_batch_equal_per_sample():
    model = _make("llama_tied")
    config = MEDSConfig(use_last_n_layers=3, final_norm="last")
    ids, mask, answer_positions = _left_padded_batch()
    batch = extract_features(model, ids, mask, answer_positions, config)
    for b in range(3):
        single = extract_features(model, ids[b:b + 1], mask[b:b + 1], answer_positions[b:b + 1], config)
        torch.testing.assert_close(batch[b:b + 1], single, rtol=1e-4, atol=1e-4)


def test_nan_rows_for_no_answer():
    model = _make("qwen2")
    config = MEDSConfig(use_last_n_layers=3)
    ids, mask, _ = _left_padded_batch()
    # -1: none; 0: nothing precedes; 5 in row 2: position 4 before it is padding (first real token is the answer)
    got = extract_features(model, ids, mask, [-1, 0, 5, 6], config)
    assert torch.isnan(got[:3]).all()
    assert torch.isfinite(got[3]).all()
    got = extract_features(model, ids, mask, [-1, -1, -1, -1], config)
    assert got.shape == (4, 3) and torch.isnan(got).all()


# ----------------------------------------------------------------------------------------------------------------------
# hooks are inert and cheap
# ----------------------------------------------------------------------------------------------------------------------

def test_hooks_inert_when_not_armed():
    model = _make("qwen2")
    ids, mask, _ = _left_padded_batch()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
    config = MEDSConfig(use_last_n_layers=4, use_layer_diff=True, final_norm="all")
    with FeatureCapture(model, config) as cap, torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(out, ref)
        assert not cap.armed and not cap._seen and all(r is None for r in cap._raw) and cap._values is None
        cap.arm([3, 20], [1, 2])
        armed_out = model(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(armed_out, ref)  # armed hooks do not change the output either
        cap.collect()
        model(input_ids=ids, attention_mask=mask)  # disarmed after collect: nothing stored
        assert not cap._seen and all(r is None for r in cap._raw)


def test_never_requests_hidden_states():
    model = _make("qwen2")
    calls = []
    forward = model.forward

    @functools.wraps(forward)
    def spy(*args, **kwargs):
        calls.append(kwargs)
        return forward(*args, **kwargs)

    model.forward = spy
    ids, mask, answer_positions = _left_padded_batch()
    extract_features(model, ids, mask, answer_positions, MEDSConfig(use_last_n_layers=4))
    assert len(calls) == 1
    kw = calls[0]
    assert not kw.get("output_hidden_states") and not model.config.output_hidden_states
    assert kw["logits_to_keep"] == 1 and kw["use_cache"] is False
    assert torch.equal(kw["position_ids"], _position_ids(mask))
    # HF installs its hidden-state recording hooks lazily on the first output_hidden_states request: never happened
    assert not getattr(model.model, "_output_capturing_hooks_installed", False)


def test_context_manager_removes_hooks():
    model = _make("qwen2")
    layer, norm, head = model.model.layers[-1], model.model.norm, model.lm_head
    config = MEDSConfig(use_last_n_layers=2, final_norm="all")
    with FeatureCapture(model, config) as cap:
        assert len(layer._forward_hooks) == 1 and len(head._forward_pre_hooks) == 1
        assert len(norm._forward_hooks) == 1 and len(norm._forward_pre_hooks) == 1
        assert len(model.model.layers[-3]._forward_hooks) == 0
    assert isinstance(cap, FeatureCapture)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    cap.remove()  # idempotent
    extract_features(model, *_left_padded_batch()[:2], [3, 4, 6, 8], config)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_restores_training_flags():
    model = _make("gpt2")
    model.train()
    model.transformer.h[0].eval()  # mixed flags must come back exactly
    before = [m.training for m in model.modules()]
    extract_features(model, *_left_padded_batch()[:2], [3, 4, 6, 8], MEDSConfig(use_last_n_layers=2))
    assert [m.training for m in model.modules()] == before


# ----------------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------------

def test_collect_without_forward_or_arm():
    model = _make("qwen2")
    with FeatureCapture(model, MEDSConfig(use_last_n_layers=2)) as cap:
        with pytest.raises(RuntimeError, match="without arm"):
            cap.collect()
        cap.arm([1], [2])
        with pytest.raises(RuntimeError, match="no forward ran"):
            cap.collect()
        assert not cap.armed


def test_too_many_layers():
    model = _make("qwen2")
    with pytest.raises(ValueError, match=r"has 6 decoder layers .*use_last_n_layers <= 6"):
        FeatureCapture(model, MEDSConfig(use_last_n_layers=7))
    with pytest.raises(ValueError, match=r"has 6 decoder layers .*use_last_n_layers <= 5"):
        FeatureCapture(model, MEDSConfig(use_last_n_layers=6, use_layer_diff=True))
    for m in model.modules():  # nothing left registered after the failure
        assert not m._forward_hooks


def test_rows_out_of_range():
    model = _make("qwen2")
    ids, mask, _ = _left_padded_batch()
    with FeatureCapture(model, MEDSConfig(use_last_n_layers=2)) as cap:
        cap.arm([3, ids.numel()], [1, 2])
        with pytest.raises(ValueError, match="rows"), torch.no_grad():
            model(input_ids=ids, attention_mask=mask)


def test_bad_arguments():
    model = _make("qwen2")
    ids, mask, answer_positions = _left_padded_batch()
    config = MEDSConfig(use_last_n_layers=2)
    with pytest.raises(ValueError, match="input_ids"):
        extract_features(model, ids[0], mask, answer_positions, config)
    with pytest.raises(ValueError, match="attention_mask"):
        extract_features(model, ids, mask[:, 1:], answer_positions, config)
    with pytest.raises(ValueError, match="answer_positions"):
        extract_features(model, ids, mask, answer_positions[:3], config)
    with pytest.raises(ValueError, match="answer_positions"):
        extract_features(model, ids, mask, [1, 2, 3, 12], config)
    with pytest.raises(ValueError, match="padding"):
        extract_features(model, ids, mask, [1, 2, 3, 4], config)  # row 1 position 2 is padding
    with FeatureCapture(model, config) as cap:
        with pytest.raises(ValueError, match="targets"):
            cap.arm([1, 2], [1, VOCAB])
        with pytest.raises(ValueError, match="same length"):
            cap.arm([1, 2], [1])
        with pytest.raises(ValueError, match="rows"):
            cap.arm([[1, 2]], [[1, 2]])
        with pytest.raises(ValueError, match="integers"):
            cap.arm(torch.tensor([1.0]), [1])


def test_model_without_layers_named_error():
    class NotAnLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = nn.Linear(4, 4)

    with pytest.raises(ValueError, match="NotAnLM"):
        FeatureCapture(NotAnLM(), MEDSConfig(use_last_n_layers=1))


# ----------------------------------------------------------------------------------------------------------------------
# grad forwards, checkpointing, repeated forwards
# ----------------------------------------------------------------------------------------------------------------------

def test_gradient_checkpointing_grad_forward():
    model = _make("qwen2")
    config = MEDSConfig(use_last_n_layers=4, use_layer_diff=True, final_norm="all")
    ids, mask, answer_positions = _left_padded_batch()
    rows, targets = _rows_targets(ids, mask, answer_positions)
    expected = _oracle(model, ids, mask, _position_ids(mask), rows, targets, config)

    model.train()
    # transformers 5 renamed gradient_checkpointing_enable -> activation_checkpointing_enable (old name deprecated)
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.model.layers[0].gradient_checkpointing
    with FeatureCapture(model, config) as cap:
        cap.arm(rows, targets)
        out = model(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask), use_cache=False)
        out.logits.float().pow(2).mean().backward()  # recompute happens here
        got = cap.collect()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None
    assert not got.requires_grad
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=1e-5, atol=1e-5)


class _ToyLM(nn.Module):
    """Minimal LM whose layers return tuples and run under torch.utils.checkpoint *with* their hooks inside (the
    pre-5.x HF pattern), so a backward recompute fires the layer hooks again."""

    def __init__(self, hidden=16, vocab=11, n_layers=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.transformer = nn.Module()
        self.transformer.blocks = nn.ModuleList(_ToyBlock(hidden) for _ in range(n_layers))
        self.transformer.ln_f = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=True)
        self.checkpoint = True

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for block in self.transformer.blocks:
            if self.checkpoint:
                h = torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False)[0]
            else:
                h = block(h)[0]
        return self.lm_head(self.transformer.ln_f(h))


class _ToyBlock(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.lin = nn.Linear(hidden, hidden)

    def forward(self, h):
        return (h + torch.tanh(self.lin(h)), None)


def _toy_oracle(model, ids, rows, targets, config):
    hs = []
    h = model.embed(ids)
    with torch.no_grad():
        for block in model.transformer.blocks:
            h = block(h)[0]
            hs.append(h.reshape(-1, h.shape[-1]))
        stacked = torch.stack(hs)[:, torch.as_tensor(rows)]  # [L, k, H]
        w = model.lm_head.weight[torch.as_tensor(targets)]
        b = model.lm_head.bias[torch.as_tensor(targets)]
        vals = _project(stacked, w, b, config.final_norm, model.transformer.ln_f)
    return _select_layers(vals[:, vals.shape[1] - config.layers_needed:], config)


def test_recompute_and_second_forward_do_not_overwrite():
    torch.manual_seed(0)
    model = _ToyLM()
    config = MEDSConfig(use_last_n_layers=2, use_layer_diff=True, final_norm="all")
    ids1 = torch.randint(0, 11, (2, 5))
    ids2 = torch.randint(0, 11, (2, 5))
    rows, targets = [3, 7], [4, 9]
    with FeatureCapture(model, config) as cap:
        cap.arm(rows, targets)
        loss1 = model(ids1).pow(2).mean()
        with torch.no_grad():
            model(ids2)  # a second forward in the same arming: ignored
        got1 = cap.collect()
        cap.arm(rows, targets)  # armed for the next batch while batch 1's backward recomputes its layers
        loss1.backward()
        assert not cap._seen and all(r is None for r in cap._raw)
        model(ids2)
        got2 = cap.collect()
    torch.testing.assert_close(got1, _toy_oracle(model, ids1, rows, targets, config), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got2, _toy_oracle(model, ids2, rows, targets, config), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got1, got2)


def test_fallback_projection_when_lm_head_not_called():
    """Logits computed from lm_head.weight without calling the module (fused-loss style): collect() projects."""
    torch.manual_seed(0)
    model = _ToyLM()
    model.checkpoint = False
    config = MEDSConfig(use_last_n_layers=3, final_norm="last")
    ids = torch.randint(0, 11, (2, 5))
    with FeatureCapture(model, config) as cap, torch.no_grad():
        cap.arm([0, 9], [1, 2])
        h = model.embed(ids)
        for block in model.transformer.blocks:
            h = block(h)[0]
        model.transformer.ln_f(h)
        assert cap._values is None
        got = cap.collect()
    torch.testing.assert_close(got, _toy_oracle(model, ids, [0, 9], [1, 2], config), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# PEFT
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target_modules", [["q_proj", "v_proj"], ["lm_head"]], ids=["attn", "head"])
def test_peft_lora_matches_merged(target_modules):
    peft = pytest.importorskip("peft")
    base = _make("qwen2")
    config = MEDSConfig(use_last_n_layers=4, use_layer_diff=True, final_norm="all")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, init_lora_weights=False, lora_dropout=0.0)
    peft_model = peft.get_peft_model(copy.deepcopy(base), lora).eval()
    merged = copy.deepcopy(peft_model).merge_and_unload().eval()
    ids, mask, answer_positions = _left_padded_batch()
    rows, targets = _rows_targets(ids, mask, answer_positions)
    expected = _oracle(merged, ids, mask, _position_ids(mask), rows, targets, config)
    unadapted = _oracle(base, ids, mask, _position_ids(mask), rows, targets, config)
    assert not torch.allclose(expected[:3], unadapted[:3], atol=1e-3)  # the adapter matters

    got = extract_features(peft_model, ids, mask, answer_positions, config)
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=1e-4, atol=1e-4)
    for m in peft_model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


# ----------------------------------------------------------------------------------------------------------------------
# pure math
# ----------------------------------------------------------------------------------------------------------------------

def test_project_and_select_pure():
    torch.manual_seed(0)
    n_layers, k, hidden = 5, 3, 8
    rows = torch.randn(n_layers, k, hidden, dtype=torch.bfloat16)
    w = torch.randn(k, hidden, dtype=torch.bfloat16)
    bias = torch.randn(k)
    norm = nn.LayerNorm(hidden).to(torch.bfloat16)
    with torch.no_grad():
        for mode in ("last", "all", "none"):
            got = _project(rows, w, bias, mode, norm)
            assert got.dtype == torch.float32 and got.shape == (k, n_layers)
            ref = torch.empty(k, n_layers)
            for layer in range(n_layers):
                h = rows[layer]
                if mode == "all" or (mode == "last" and layer == n_layers - 1):
                    h = norm(h)
                ref[:, layer] = (h.float() * w.float()).sum(-1) + bias
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_dot_rows(list(rows), w), _project(rows, w), rtol=0, atol=0)
    vals = torch.arange(12.0).reshape(2, 6) ** 2
    torch.testing.assert_close(_select_layers(vals, MEDSConfig(use_last_n_layers=2)), vals[:, 4:])
    diff = _select_layers(vals, MEDSConfig(use_last_n_layers=3, use_layer_diff=True))
    torch.testing.assert_close(diff, (vals[:, 1:] - vals[:, :-1])[:, -3:])
    with pytest.raises(ValueError, match="norm_module"):
        _project(rows, w, None, "all", None)


def test_modules_do_not_import_torch():
    code = ("import sys, meds_core.step.capture, meds_core.step.features; "
            "print(int(any(m == 'torch' or m.startswith('torch.') for m in sys.modules)))")
    base = subprocess.run([sys.executable, "-c", "import sys, meds_core; print(int('torch' in sys.modules))"],
                          capture_output=True, text=True, check=True)
    if base.stdout.strip() != "0":
        pytest.skip("import meds_core itself imports torch (not these modules' doing)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


# ----------------------------------------------------------------------------------------------------------------------
# distributed wrappers: DDP, FSDP1, FSDP2 on CPU (gloo), 2 ranks so FSDP really shards
# ----------------------------------------------------------------------------------------------------------------------

def _dist_worker(rank, world_size, init_file, result_file):
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        config = MEDSConfig(use_last_n_layers=4, use_layer_diff=True, final_norm="all")
        ids, mask, answer_positions = _left_padded_batch(seed=10 + rank)  # different data per rank
        rows, targets = _rows_targets(ids, mask, answer_positions)
        expected = _oracle(_make("qwen2"), ids, mask, _position_ids(mask), rows, targets, config)
        errors = {}

        ddp = DistributedDataParallel(_make("qwen2"))
        errors["ddp"] = extract_features(ddp, ids, mask, answer_positions, config)

        layer_cls = type(_make("qwen2").model.layers[0])
        fsdp1 = FullyShardedDataParallel(_make("qwen2"), auto_wrap_policy=ModuleWrapPolicy({layer_cls}),
                                         device_id=torch.device("cpu"))
        errors["fsdp1"] = extract_features(fsdp1, ids, mask, answer_positions, config)

        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world_size,))
        model = _make("qwen2")
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model.lm_head, mesh=mesh)  # lm_head its own unit: sharded outside its forward
        fully_shard(model, mesh=mesh)
        assert type(model.lm_head.weight).__name__ == "DTensor"
        assert model.lm_head.weight.to_local().shape[0] < VOCAB  # really sharded
        errors["fsdp2"] = extract_features(model, ids, mask, answer_positions, config)
        with FeatureCapture(model, config) as cap, torch.no_grad():
            cap.arm(rows, targets)
            model(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask), use_cache=False)
            assert cap._values is not None  # projected in the lm_head pre-hook, on the unsharded weight
            errors["fsdp2_direct"] = cap.collect()

        # fallback path: lm_head never called -> collect() gathers the sharded weight with full_tensor()
        with FeatureCapture(model, config) as cap, torch.no_grad():
            cap.arm(rows, targets)
            model.model(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask), use_cache=False)
            errors["fsdp2_fallback"] = cap.collect()

        out = {k: float((v - expected).nan_to_num(0.0).abs().max()) for k, v in errors.items()}
        out.update({k + "_nan_ok": bool(torch.equal(v.isnan(), expected.isnan())) for k, v in errors.items()})
        torch.save(out, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_fsdp1_fsdp2_two_ranks(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo not available")
    world_size = 2
    result_file = str(tmp_path / "result")
    mp.spawn(_dist_worker, args=(world_size, str(tmp_path / "init"), result_file), nprocs=world_size, join=True)
    for rank in range(world_size):
        out = torch.load(f"{result_file}.{rank}")
        for key in ("ddp", "fsdp1", "fsdp2", "fsdp2_direct", "fsdp2_fallback"):
            assert out[key + "_nan_ok"], (rank, key)
            assert out[key] < 1e-5, (rank, key, out[key])
